"""Registry champion alias, and the CLI's handling of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_params_dict
from visionflow.tasks.base import ExportedModel


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    return experiment


def test_champion_alias_moves_only_on_improvement(tracking):
    import mlflow

    from visionflow.tracking import log_pytorch_model, register_model

    model = ExportedModel(torch.nn.Conv2d(3, 2, 1), np.zeros((2, 3, 4, 4), np.float32),
                          (-1, 3, -1, -1), (-1, 2, -1, -1))
    with mlflow.start_run(experiment_id=tracking):
        logged = log_pytorch_model(model, name="tiny")
    first = register_model(logged, "tiny-model", "mIoU", 0.50, "champion")
    worse = register_model(logged, "tiny-model", "mIoU", 0.40, "champion")
    tie = register_model(logged, "tiny-model", "mIoU", 0.50, "champion")
    better = register_model(logged, "tiny-model", "mIoU", 0.60, "champion")
    assert [r.version for r in (first, worse, tie, better)] == ["1", "2", "3", "4"]
    assert [r.alias_moved for r in (first, worse, tie, better)] == [True, False, False, True]
    assert worse.champion_version == "1" and worse.previous_champion_metric == 0.5
    champion = mlflow.MlflowClient().get_model_version_by_alias("tiny-model", "champion")
    assert str(champion.version) == "4"
    # The registered model serves any batch size and image size.
    loaded = mlflow.pyfunc.load_model("models:/tiny-model@champion")
    assert loaded.predict(np.zeros((3, 3, 5, 7), np.float32)).shape == (3, 2, 5, 7)


def run_cli(tmp_path, params: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "visionflow.cli", *args], cwd=tmp_path,
                          capture_output=True, text=True)


def test_cli_rejects_bad_params_naming_the_key(tmp_path):
    params = tiny_params_dict(segmentation={"train": {"lr": 0}})
    result = run_cli(tmp_path, params, "synthesize", "--task", "segmentation")
    assert result.returncode == 2
    assert "segmentation.train.lr: must be > 0" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing written


def test_cli_reports_a_missing_upstream_output(tmp_path):
    result = run_cli(tmp_path, tiny_params_dict(), "evaluate", "--task", "segmentation")
    assert result.returncode == 1
    assert "models/segmentation/train.json: not found; run `visionflow train --task segmentation`" \
        in result.stderr


def test_predict_outputs_of_inputs_sharing_a_stem_get_distinct_names(tmp_path):
    from visionflow.tasks.base import output_stems

    assert output_stems([Path("a/x.png"), Path("b/y.png")]) == ["x", "y"]
    assert output_stems([Path("a/x.png"), Path("b/x.png"), Path("b/z.png")]) == ["a__x", "b__x", "z"]
    assert output_stems([Path("a/x.png"), Path("a/x.jpg"), Path("a/x.png")]) == ["x", "x-2", "x-3"]


def test_an_error_from_a_loader_process_is_shown_as_its_own_message():
    from torch.utils.data import DataLoader

    from visionflow.cli import one_line
    from visionflow.data.disparity import DisparityFormatError

    class Broken:
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise DisparityFormatError("d/000001_10.png: KITTI disparity must be a 1-channel 16-bit PNG")

    with pytest.raises(DisparityFormatError) as caught:
        list(DataLoader(Broken(), num_workers=1))
    assert "Traceback" in str(caught.value)
    assert one_line(caught.value) == "d/000001_10.png: KITTI disparity must be a 1-channel 16-bit PNG"
