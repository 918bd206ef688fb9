"""Render scenes in a pool of processes.

Every scene draws from its own generator, seeded by (seed, split, index), so the
files are byte-identical whatever the number of processes; only the wall time
changes. Workers are forked, so the render function may be any callable (a
closure over the scene spec included): it is inherited, never pickled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from multiprocessing import get_all_start_methods, get_context
from typing import Any, TypeVar

from tqdm import tqdm

from visionflow.machine import available_cores

Job = TypeVar("Job")
Result = TypeVar("Result")

_render: Callable[[Any], Any] | None = None  # set in the parent just before the pool forks


def _call(job: Any) -> Any:
    return _render(job)


def map_scenes(render: Callable[[Job], Result], jobs: Sequence[Job], workers: int | None = None,
               desc: str = "synthesize", progress: bool = True) -> list[Result]:
    """``[render(job) for job in jobs]`` in order, over ``workers`` processes (None: every core).

    ``render`` writes its scene's files and returns what the parent needs to index them
    (annotations, statistics): keep it small, it travels back through a pipe.
    """
    global _render
    workers = min(workers or available_cores(), len(jobs))
    with tqdm(total=len(jobs), desc=desc, disable=not progress, unit="img") as bar:
        if workers <= 1 or "fork" not in get_all_start_methods():
            results = []
            for job in jobs:
                results.append(render(job))
                bar.update()
            return results
        _render = render
        try:
            chunk = max(1, min(16, len(jobs) // (8 * workers)))
            # No per-worker set-up: cv2.setNumThreads in a forked child hangs once the parent has
            # used OpenCV's thread pool.
            with get_context("fork").Pool(workers) as pool:
                results = []
                for result in pool.imap(_call, jobs, chunksize=chunk):
                    results.append(result)
                    bar.update()
                return results
        finally:
            _render = None
