"""visionflow: one params.yaml to trained, evaluated and registered vision models."""

from visionflow.env import apply_quiet_offline_defaults

apply_quiet_offline_defaults()

__version__ = "0.1.0"
