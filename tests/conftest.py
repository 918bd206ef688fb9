"""Shared fixtures: tiny params and a throwaway copy of the project."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_OVERRIDES = {
    "segmentation": {
        "synth": {"splits": {"train": 16, "val": 4, "test": 4}, "image_size": 32,
                  "min_radius": 4.0, "max_radius": 9.0},
        "model": {"channels": [4, 8]},
        "train": {"epochs": 1, "batch_size": 8},
        "evaluate": {"overlays": 2},
    },
    "stereo": {
        "synth": {"splits": {"train": 8, "val": 2, "test": 2}, "height": 32, "width": 64,
                  "max_disparity": 16.0, "supersample": 1},
        "augment": {"crop": [32, 48]},
        "model": {"max_disparity": 16, "channels": [4, 8, 8], "groups": 4, "aggregation_channels": 4,
                  "refine_channels": [4, 4]},
        "train": {"epochs": 1, "batch_size": 4},
        "evaluate": {"overlays": 2},
    },
    "selfsup": {
        "synth": {"splits": {"unlabelled": 24, "probe_train": 6, "probe_test": 6, "segmentation_train": 4,
                             "segmentation_test": 2}, "image_size": 32, "min_radius": 6.0, "max_radius": 10.0},
        "data": {"image_size": 32, "val_fraction": 0.25},
        "augment": [{"name": "RandomResizedCrop", "kwargs": {"size": [32, 32], "scale": [0.5, 1.0]}},
                    {"name": "ColorJitter", "p": 0.8, "kwargs": {"brightness": 0.4, "hue": 0.1}}],
        "model": {"channels": [4, 8], "projection_hidden": 8, "projection_dim": 4},
        "train": {"epochs": 1, "batch_size": 8},
        "evaluate": {"label_fractions": [0.5, 1.0], "transfer_steps": 2, "transfer_batch_size": 2,
                     "linear_probe_max_iter": 5},
    },
    "detection": {
        "synth": {"splits": {"train": 8, "val": 4, "test": 4}, "image_size": 64, "max_objects": 4,
                  "min_radius": 5.0, "max_radius": 14.0},
        "model": {"channels": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "fpn_channels": 8, "head_channels": 8,
                  "max_detections": 10},
        "train": {"epochs": 1, "batch_size": 4},
        "evaluate": {"overlays": 2, "batch_size": 4},
    },
    "instance_segmentation": {
        "synth": {"splits": {"train": 8, "val": 4, "test": 4}, "image_size": 64, "max_objects": 4,
                  "min_radius": 5.0, "max_radius": 14.0},
        "model": {"channels": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "fpn_channels": 8,
                  "box_head_dim": 16, "mask_head_channels": [8], "max_detections": 10},
        "train": {"epochs": 1, "batch_size": 4},
        "evaluate": {"overlays": 2, "batch_size": 4},
    },
    "pose": {
        "synth": {"splits": {"train": 8, "val": 4, "test": 4}, "image_size": 64, "min_height": 24.0,
                  "max_height": 48.0},
        "model": {"channels": [4, 8, 8]},
        "train": {"epochs": 1, "batch_size": 8},
        "evaluate": {"overlays": 2},
    },
    "trainer": {"accelerator": "cpu", "progress_bar": False},
}


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and key in base else value
    return out


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, by relative path (for byte-identical checks)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_params_dict(**extra: dict) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return merge(merge(params, TINY_OVERRIDES), extra)


def trainer_in_stage(stage: str):
    """A Trainer in ``stage`` (training, validating, ...), as a module's batch hooks see it mid-fit
    (families that augment on the device do so only for training batches)."""
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    setattr(trainer, stage, True)
    return trainer


def write_project_params(project: Path, params: dict) -> None:
    """``params`` as the project's params.yaml, and the dvc.yaml `visionflow dag` makes of it."""
    from visionflow import dag
    from visionflow.config import parse_params

    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dag.write(project, parse_params(params))


@pytest.fixture
def tiny_params():
    from visionflow.config import parse_params

    return parse_params(tiny_params_dict())


@pytest.fixture
def project_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for commands run in a temp project: its own MLflow, Prefect and DVC state."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path / ".cache" / "prefect"),
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(tmp_path / ".cache" / "prefect" / "ui"),
        "DVC_SITE_CACHE_DIR": str(tmp_path / ".cache" / "dvc-site"),
        "TQDM_DISABLE": "1",
        "VISIONFLOW_PREFECT_UI": "",  # a flow never reports to a developer's running `make ui`
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture
def tiny_project(tmp_path: Path, project_env: dict[str, str]) -> Path:
    """A copy of the project's pipeline (tiny params.yaml, its generated dvc.yaml) in a git + DVC repo."""
    project = tmp_path / "project"
    project.mkdir()
    # The CLI-level pipeline tests run one family; each family's stages are tested in-process too.
    write_project_params(project, tiny_params_dict(tasks=["segmentation"]))
    # dvc.yaml names code deps under src/: point them at the real package.
    (project / "src").symlink_to(REPO / "src")
    shutil.copytree(REPO / "pretrained", project / "pretrained")  # train-<task> depends on its folder

    def run(*command: str) -> None:
        subprocess.run(command, cwd=project, env=project_env, check=True, capture_output=True)

    run("git", "init", "-q")
    run("git", "config", "user.email", "test@example.com")
    run("git", "config", "user.name", "visionflow tests")
    run(str(BIN / "dvc"), "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")
    return project
