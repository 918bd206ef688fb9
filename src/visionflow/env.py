"""Process-wide settings that keep the stack offline, quiet and inside the project.

Set once, at import of the package, before albumentations, Prefect or MLflow are
imported (albumentations does a blocking update check at import otherwise).
Values already in the environment win, so a user can still point Prefect or
MLflow elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding params.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def quiet_offline_defaults(root: Path) -> dict[str, str]:
    cache = root / ".cache"
    return {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PREFECT_HOME": str(cache / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(cache / "prefect" / "ui"),
        "DVC_SITE_CACHE_DIR": str(cache / "dvc-site"),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def apply_quiet_offline_defaults(root: Path | None = None) -> None:
    for key, value in quiet_offline_defaults(root or project_root()).items():
        os.environ.setdefault(key, value)
