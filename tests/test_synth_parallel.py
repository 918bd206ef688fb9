"""Synthesis in a pool of processes writes the same bytes as one process, for every generator."""

from __future__ import annotations

import pytest

from visionflow.data.synth.parallel import map_scenes
from visionflow.tasks import get_task, task_names

from conftest import tree_hashes


def test_map_scenes_keeps_order_and_runs_closures_in_workers():
    offset = 10  # a closure: forked workers inherit it, nothing is pickled
    assert map_scenes(lambda job: job + offset, list(range(50)), workers=2, progress=False) == \
        [job + 10 for job in range(50)]


def test_an_error_in_a_worker_reaches_the_caller():
    def render(job: int) -> int:
        if job == 7:
            raise RuntimeError("scene 7: cannot place the object")
        return job

    with pytest.raises(RuntimeError, match="scene 7"):
        map_scenes(render, list(range(20)), workers=2, progress=False)


@pytest.mark.parametrize("name", task_names())
def test_every_generator_writes_the_same_bytes_with_one_or_two_processes(name, tiny_params, tmp_path):
    family, params = get_task(name), tiny_params.task(name)
    family.synthesize(params, tmp_path / "one", progress=False, workers=1)
    family.synthesize(params, tmp_path / "two", progress=False, workers=2)
    one, two = tree_hashes(tmp_path / "one"), tree_hashes(tmp_path / "two")
    assert len(one) > 5 and one == two
