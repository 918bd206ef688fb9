"""acquire: fetch the real datasets declared under ``acquire.datasets`` into data/raw/."""

from __future__ import annotations

from pathlib import Path

from visionflow.config import Params
from visionflow.data.acquire import acquire_all
from visionflow.paths import RAW_DIR, SCRATCH_DIR


def run(params: Params, root: Path, progress: bool = True) -> dict:
    return acquire_all(params.acquire, root / RAW_DIR, root / SCRATCH_DIR / "downloads", root, progress)
