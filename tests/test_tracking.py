"""What tracking.py puts on a stage's MLflow run besides params and metrics."""

from __future__ import annotations

import logging

from visionflow.config import TrackingParams
from visionflow.tracking import TAG_WARNINGS, StageRun, experiment_name, stage_run


def test_a_stage_warning_reaches_its_mlflow_run(tmp_path, monkeypatch, caplog):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with stage_run(StageRun("detection", "evaluate", {}), TrackingParams(), tmp_path) as run:
        logging.getLogger("visionflow.data.coco").warning(
            "visionflow: warning: %s: %d images but no annotations", "test.json", 4)
    assert mlflow.get_run(run.info.run_id).data.tags[TAG_WARNINGS].endswith("test.json: 4 images but no annotations")
    assert "test.json: 4 images but no annotations" in caplog.text  # and still in the log


def test_a_parent_run_this_store_lacks_is_named_in_a_warning_and_dropped(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    absent = "90fa4bcc0fe348f381b009080e3fdc5d"  # e.g. a teammate's training run, from train.json
    with stage_run(StageRun("detection", "evaluate", {}), TrackingParams(), tmp_path, parent_run_id=absent) as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert "mlflow.parentRunId" not in tags
    assert f"MLflow run {absent}, the training run this evaluate belongs under, is not in this store" \
        in tags[TAG_WARNINGS]


def test_experiments_are_spelled_like_registered_models_and_default_is_gone(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with stage_run(StageRun("instance_segmentation", "train", {}), TrackingParams(), tmp_path):
        pass
    assert experiment_name("instance_segmentation") == "visionflow-instance-segmentation"
    names = [e.name for e in mlflow.search_experiments()]
    assert names == ["visionflow-instance-segmentation"]
    tags = mlflow.get_experiment_by_name("visionflow-instance-segmentation").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_epoch_metrics_go_to_the_active_run_at_the_epoch_step(tmp_path, monkeypatch):
    import mlflow
    import torch
    from lightning.pytorch.callbacks import Callback

    from visionflow.tracking import epoch_metrics_callback

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    callback = epoch_metrics_callback()
    assert isinstance(callback, Callback) and callback.state_dict() == {}  # nothing added to checkpoints

    class Trainer:  # what the callback reads of a Lightning trainer after an epoch
        is_global_zero = True
        current_epoch = 0
        callback_metrics = {"train/loss": torch.tensor(0.5), "val/mIoU": torch.tensor(0.25)}

    trainer = Trainer()
    with stage_run(StageRun("segmentation", "train", {}), TrackingParams(), tmp_path) as run:
        callback.on_train_epoch_end(trainer, None)
        trainer.current_epoch, trainer.callback_metrics = 1, {"train/loss": torch.tensor(0.125)}
        callback.on_train_epoch_end(trainer, None)
        trainer.is_global_zero = False  # another rank of a multi-GPU run: logs nothing
        callback.on_train_epoch_end(trainer, None)
    client = mlflow.MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")] == [(1, 0.5),
                                                                                                     (2, 0.125)]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/mIoU")] == [(1, 0.25)]
