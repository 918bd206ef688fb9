"""Pipeline stages: each is ``visionflow <stage> [--task T]`` and one function here.

``STAGE_PARAMS`` lists the params keys each stage reads; ``visionflow dag``
declares exactly these in ``dvc.yaml``, so a changed key reruns only the stages
that read it.
"""

from __future__ import annotations

TASK_STAGES = ("synthesize", "augment", "train", "evaluate", "register")

STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "acquire": ("acquire",),
    "synthesize": ("{task}.synth",),
    "augment": ("{task}.data", "{task}.augment", "{task}.train.seed"),
    "pretrained": ("pretrained",),
    "train": ("{task}.data", "{task}.augment", "{task}.model", "{task}.train", "trainer", "pretrained"),
    "evaluate": ("{task}.data", "{task}.evaluate", "trainer.accelerator"),
    "register": ("{task}.data", "{task}.register", "tracking"),
    "report": ("tasks",),
}


def stage_params(stage: str, task: str | None = None) -> list[str]:
    return [key.format(task=task) for key in STAGE_PARAMS[stage]]
