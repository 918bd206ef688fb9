"""synthesize: render the family's seeded synthetic dataset into data/synthetic/<task>/, and its
manifest (file count, content digest) into data/synthetic/<task>.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from visionflow.config import Params
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task
from visionflow.tracking import StageRun, log_metrics, stage_run


def run(params: Params, task: str, root: Path, progress: bool = True, workers: int | None = None) -> dict:
    """``workers``: render processes (None: every core); the files do not depend on it."""
    family, section, paths = get_task(task), params.task(task), TaskPaths(task, root)
    with stage_run(StageRun(task, "synthesize", {f"{task}.synth": section.synth}), params.tracking, root):
        counts = family.synthesize(section, paths.synthetic, progress=progress, workers=workers)
        write_manifest(paths.synthetic, paths.synthetic_manifest)
        log_metrics(counts, prefix="data/")  # counts, not model quality: their own chart section
    return counts


def write_manifest(folder: Path, manifest: Path) -> dict:
    """``{"files": N, "sha256": digest}`` over every file's relative path and bytes, written
    atomically: equal datasets give byte-equal manifests."""
    digest, files = hashlib.sha256(), sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    summary = {"files": len(files), "sha256": digest.hexdigest()}
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(manifest)
    return summary
