"""Named sentinels shared across modules (no imports, so anything may use them)."""

IGNORE_INDEX = 255  # label of pixels that count in no loss and no metric (crowds, padding)
