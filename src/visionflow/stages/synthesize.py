"""synthesize: render the family's seeded synthetic dataset into data/synthetic/<task>/."""

from __future__ import annotations

from pathlib import Path

from visionflow.config import Params
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task
from visionflow.tracking import StageRun, log_metrics, stage_run


def run(params: Params, task: str, root: Path, progress: bool = True) -> dict:
    family, section = get_task(task), params.task(task)
    counts = family.synthesize(section, TaskPaths(task, root).synthetic, progress=progress)
    with stage_run(StageRun(task, "synthesize", {f"{task}.synth": section.synth}), params.tracking, root):
        log_metrics(counts)
    return counts
