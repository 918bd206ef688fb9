"""Metrics as pure functions on tensors and arrays (torch / numpy only)."""
