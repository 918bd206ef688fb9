"""Training reproduces bit for bit, resumes after an interruption, and stops on a non-finite loss."""

from __future__ import annotations

import json
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from visionflow.paths import TaskPaths
from visionflow.tasks import get_task
from visionflow.tasks.lightning_base import NonFiniteLossError
from visionflow.training import train_task


class Interrupt(RuntimeError):
    pass


class CountBatches(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, *args):
        self.batches += 1


class InterruptAtEpoch(Callback):
    """Simulates a killed run: raises when ``epoch`` starts (earlier epochs are checkpointed)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise Interrupt(f"interrupted at epoch {self.epoch}")


@pytest.fixture
def setup(tiny_params, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    family = get_task("segmentation")
    params = tiny_params.segmentation
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    paths = TaskPaths("segmentation", tmp_path)
    family.synthesize(params, paths.synthetic, progress=False)
    return family, params, tiny_params, paths


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_interrupted_training_resumes_from_last_checkpoint(setup):
    family, params, all_params, paths = setup
    with pytest.raises(Interrupt):
        train_task(family, params, all_params.trainer, all_params.tracking, paths,
                   extra_callbacks=[InterruptAtEpoch(1)])
    assert not paths.best_checkpoint.exists()  # nothing half-written into models/
    counter = CountBatches()
    summary = train_task(family, params, all_params.trainer, all_params.tracking, paths,
                         extra_callbacks=[counter])
    steps_per_epoch = summary["global_steps"] // 2
    assert counter.batches == steps_per_epoch  # only the second epoch ran again
    assert summary["resumed_from"].endswith("last.ckpt") and summary["epochs"] == 2
    rows = paths.train_curves_csv.read_text().strip().splitlines()
    assert len(rows) == 1 + 2  # header + both epochs, the first from before the interruption

    # The MLflow run of the interrupted attempt continues: one train run, two epochs logged.
    import mlflow

    runs = mlflow.search_runs(experiment_names=["visionflow-segmentation"],
                              filter_string="tags.`visionflow.stage` = 'train'")
    assert len(runs) == 1
    history = mlflow.MlflowClient().get_metric_history(runs.iloc[0].run_id, "val/mIoU")
    assert [m.step for m in history] == [1, 2]


def test_same_seed_same_weights_and_fresh_rerun(setup):
    family, params, all_params, paths = setup
    first = train_task(family, params, all_params.trainer, all_params.tracking, paths)
    first_weights = weights(paths.last_checkpoint)
    second = train_task(family, params, all_params.trainer, all_params.tracking, paths)
    assert second["resumed_from"] is None  # a finished run is not resumed: it trains again
    for name, value in weights(paths.last_checkpoint).items():
        assert torch.equal(value, first_weights[name]), name
    assert json.loads(paths.train_summary.read_text())["best_score"] == first["best_score"]


def test_non_finite_loss_stops_with_the_loss_values(setup):
    family, params, all_params, paths = setup
    params = params.model_copy(update={"train": params.train.model_copy(update={"lr": 1e30})})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .*'cross_entropy'"):
        train_task(family, params, all_params.trainer, all_params.tracking, paths)


class InterruptMidEpoch(Callback):
    """Simulates ``kill -9`` in the middle of ``epoch``: raises after its first batch."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            raise Interrupt(f"killed in epoch {self.epoch}")


def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_weights(setup):
    family, params, all_params, paths = setup
    with pytest.raises(Interrupt):
        train_task(family, params, all_params.trainer, all_params.tracking, paths,
                   extra_callbacks=[InterruptMidEpoch(1)])
    resumed = train_task(family, params, all_params.trainer, all_params.tracking, paths)
    assert resumed["resumed_from"] is not None
    resumed_weights = weights(paths.last_checkpoint)
    resumed_bytes = {path: path.read_bytes() for path in (paths.best_checkpoint, paths.last_checkpoint)}
    uninterrupted = train_task(family, params, all_params.trainer, all_params.tracking, paths)
    assert uninterrupted["resumed_from"] is None
    for name, value in weights(paths.last_checkpoint).items():
        assert torch.equal(value, resumed_weights[name]), name
    # Optimizer state, history and Lightning's counters too: the files are the same bytes.
    for path, content in resumed_bytes.items():
        assert path.read_bytes() == content, path.name


def test_loader_processes_change_no_weight(setup, monkeypatch):
    family, params, all_params, paths = setup
    # Beside loader processes training leaves them cores (fewer torch threads), which changes
    # float sums: hold the thread count so only the loading differs.
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    train_task(family, params, all_params.trainer, all_params.tracking, paths)
    in_process = weights(paths.last_checkpoint)
    two_workers = all_params.trainer.model_copy(update={"num_workers": 2})
    summary = train_task(family, params, two_workers, all_params.tracking, paths)
    assert summary["runtime"]["num_workers"] == 2
    for name, value in weights(paths.last_checkpoint).items():
        assert torch.equal(value, in_process[name]), name


def test_a_run_with_loader_processes_resumes_exactly(setup, monkeypatch):
    # Loader processes fetch the resumed epoch's first batches before Lightning sets the
    # sampler's epoch: the sampler must take it from the trainer.
    family, params, all_params, paths = setup
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    two_workers = all_params.trainer.model_copy(update={"num_workers": 2})
    with pytest.raises(Interrupt):
        train_task(family, params, two_workers, all_params.tracking, paths, extra_callbacks=[InterruptMidEpoch(1)])
    assert train_task(family, params, two_workers, all_params.tracking, paths)["resumed_from"] is not None
    resumed = weights(paths.last_checkpoint)
    resumed_bytes = paths.last_checkpoint.read_bytes()
    train_task(family, params, two_workers, all_params.tracking, paths)
    for name, value in weights(paths.last_checkpoint).items():
        assert torch.equal(value, resumed[name]), name
    assert paths.last_checkpoint.read_bytes() == resumed_bytes


def test_augmentation_drawn_on_the_device_resumes_to_the_uninterrupted_bytes(tiny_params, tmp_path, monkeypatch):
    """Pose augments its crops on the device (``pose.augment_on: device``), drawing from torch's
    generator that ``EpochSeeding`` seeds per epoch: a run killed mid-epoch resumes to the bytes
    of one that was not."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    family, params = get_task("pose"), tiny_params.pose
    assert params.augment_on == "device"
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    paths = TaskPaths("pose", tmp_path)
    family.synthesize(params, paths.synthetic, progress=False)
    with pytest.raises(Interrupt):
        train_task(family, params, tiny_params.trainer, tiny_params.tracking, paths,
                   extra_callbacks=[InterruptMidEpoch(1)])
    assert train_task(family, params, tiny_params.trainer, tiny_params.tracking, paths)["resumed_from"]
    resumed = {path: path.read_bytes() for path in (paths.best_checkpoint, paths.last_checkpoint)}
    assert train_task(family, params, tiny_params.trainer, tiny_params.tracking, paths)["resumed_from"] is None
    for path, content in resumed.items():
        assert path.read_bytes() == content, path.name


def test_a_project_moved_to_another_folder_resumes_to_the_same_bytes(tiny_params, tmp_path, monkeypatch):
    """Checkpoints hold no absolute path: a run interrupted in one folder and resumed after the
    project moved ends with the bytes of an uninterrupted run in a third folder."""
    import shutil

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    family = get_task("segmentation")
    params = tiny_params.segmentation
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})

    def project(name: str) -> TaskPaths:
        paths = TaskPaths("segmentation", tmp_path / name)
        family.synthesize(params, paths.synthetic, progress=False)
        return paths

    moved_from = project("before")
    with pytest.raises(Interrupt):
        train_task(family, params, tiny_params.trainer, tiny_params.tracking, moved_from,
                   extra_callbacks=[InterruptAtEpoch(1)])
    shutil.move(tmp_path / "before", tmp_path / "after")
    moved = TaskPaths("segmentation", tmp_path / "after")
    resumed = train_task(family, params, tiny_params.trainer, tiny_params.tracking, moved)
    assert resumed["resumed_from"] is not None

    elsewhere = project("elsewhere")
    train_task(family, params, tiny_params.trainer, tiny_params.tracking, elsewhere)
    for name in ("best_checkpoint", "last_checkpoint"):
        content = getattr(moved, name).read_bytes()
        assert str(tmp_path).encode() not in content
        assert content == getattr(elsewhere, name).read_bytes(), name
