"""Task families: the registry that stages loop over.

Each family module registers one :class:`~visionflow.tasks.base.TaskFamily`
with :func:`register_task`; stages call :func:`get_task` and never branch on
a family's name. Family modules keep Lightning and other heavy imports inside
their methods, so looking a family up stays cheap.
"""

from __future__ import annotations

import difflib

from visionflow.tasks.base import TaskFamily

_REGISTRY: dict[str, TaskFamily] = {}


def register_task(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: add a family under its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task family {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_builtin_families() -> None:
    from visionflow.tasks import segmentation  # noqa: F401  (registers itself)
    from visionflow.tasks import detection, instance_segmentation, pose, selfsup, stereo  # noqa: F401


def task_names() -> list[str]:
    _load_builtin_families()
    return sorted(_REGISTRY)


def get_task(name: str) -> TaskFamily:
    _load_builtin_families()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown task family {name!r}{hint}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
