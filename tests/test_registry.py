"""Every registered task family builds, trains a step on its own tiny data, and exports."""

from __future__ import annotations

import pytest
import torch

from conftest import trainer_in_stage
from visionflow.config import TrainerParams, params_model
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task, task_names


def test_registry_matches_the_params_schema():
    assert set(task_names()) <= set(params_model().model_fields)


def test_unknown_family_lists_the_valid_ones():
    with pytest.raises(KeyError, match="did you mean 'segmentation'"):
        get_task("segmentaton")


@pytest.mark.parametrize("name", task_names())
def test_family_forward_backward_and_export(name, tiny_params, tmp_path):
    family, params = get_task(name), tiny_params.task(name)
    paths = TaskPaths(name, tmp_path)
    counts = family.synthesize(params, paths.synthetic, progress=False)
    assert counts["train"]["images"] > 0

    datamodule = family.datamodule(params, paths.data_root(params.data.source), TrainerParams())
    module = family.module(params, datamodule)
    # As Lightning hands it over: through the hook that runs once the batch is on the device.
    module.trainer = trainer_in_stage("training")
    batch = module.on_after_batch_transfer(next(iter(datamodule.train_dataloader())), 0)
    outputs, losses = module.model_step(batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    exported = family.export(module, paths.synthetic)
    assert exported.example.shape[0] >= 2  # torch.export pins a batch dimension of 1
    with torch.no_grad():
        out = exported.module(torch.from_numpy(exported.example))
    assert all(want in (-1, got) for want, got in zip(exported.output_shape, out.shape))
