"""Task families: the registry that stages loop over.

Each family is a subpackage of this one whose ``__init__`` registers one
:class:`~visionflow.tasks.base.TaskFamily` with :func:`register_task`; the
subpackages are found by walking this package, so adding a family touches no list.
Stages call :func:`get_task` and never branch on a family's name. Family modules keep
Lightning and other heavy imports inside their methods (their ``params.py`` needs only
pydantic), so looking a family up stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from visionflow.tasks.base import TaskFamily

_REGISTRY: dict[str, TaskFamily] = {}
_LOADED = False


def register_task(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: add a family under its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task family {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def _load_builtin_families() -> None:
    """Import every subpackage once (a family registers itself; helpers such as ``boxes`` do not)."""
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True


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
