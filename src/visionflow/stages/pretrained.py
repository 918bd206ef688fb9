"""pretrained: hand a family the backbone its training starts from.

``params.yaml``'s ``pretrained: {<task>: <file>}`` names a backbone file or a
checkpoint holding a U-Net encoder (e.g. another family's ``models/<family>/best.ckpt``,
the out of its ``train-<family>``). This stage reads it, extracts the encoder's weights
and writes them as ``pretrained/<task>/backbone.pt``, which ``train-<task>`` then depends
on. So in ``dvc.yaml`` the producer of the file is upstream of the family's training
exactly when params.yaml says so: ``visionflow dag`` writes this stage
(``pretrained-<task>``) only for the families listed there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from visionflow.config import ConfigError, Params
from visionflow.paths import TaskPaths
from visionflow.tracking import StageRun, log_metrics, stage_run


def run(params: Params, task: str, root: Path) -> dict:
    from visionflow.models.backbones import backbone_from_file, save_state

    if task not in params.pretrained:
        raise ConfigError(f"pretrained.{task}: not set in params.yaml; nothing to hand over")
    source = root / params.pretrained[task]
    payload = backbone_from_file(source)
    target = TaskPaths(task, root).pretrained_backbone
    save_state(payload["state_dict"], target, payload.get("architecture", {}),
               {**payload.get("meta", {}), "source": params.pretrained[task]})
    result = {"task": task, "source": params.pretrained[task], "backbone": str(target.relative_to(root)),
              "tensors": len(payload["state_dict"]),
              "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
    with stage_run(StageRun(task, "pretrained", {"pretrained": {task: params.pretrained[task]}}),
                   params.tracking, root):
        log_metrics({"tensors": result["tensors"]}, prefix="data/")
    return result
