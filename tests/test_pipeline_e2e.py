"""The whole pipeline through the real CLI, in a throwaway copy of the project."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN
from visionflow.dag import stage_name
from visionflow.data.disparity import read_pfm
from visionflow.data.images import read_rgb
from visionflow.stages import TASK_STAGES


def dvc(project: Path, env: dict, *args: str) -> str:
    result = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def predict_from_registry_and_checkpoint(project: Path, env: dict, task: str) -> tuple[Path, Path]:
    """``visionflow predict`` on the first test image with the registered champion, then with the
    checkpoint; the two output folders."""
    image = project / f"data/synthetic/{task}/images/test/000000.png"
    outs = []
    for model, out in ((f"models:/visionflow-{task}@champion", f"{task}_registry"),
                       (f"models/{task}/best.ckpt", f"{task}_checkpoint")):
        subprocess.run([str(BIN / "visionflow"), "predict", "--task", task, "--model", model, "--out", out,
                        str(image)], cwd=project, env=env, check=True, capture_output=True)
        outs.append(project / out)
    return outs[0], outs[1]


def serve_champion(project: Path, env: dict, task: str, image: Path) -> np.ndarray:
    """``visionflow serve`` of ``models:/visionflow-<task>@champion`` on a free port, one PNG
    posted; the answer's per-class RLEs as a label map ``(H, W)``."""
    from pycocotools import mask as mask_utils
    from test_serve import post, serve_command

    with serve_command(["--task", task, "--model", f"models:/visionflow-{task}@champion"], project, env) as url:
        status, answer = post(url, image.read_bytes(), "image/png")
    assert status == 200, answer
    labels = np.zeros((answer["height"], answer["width"]), dtype=np.uint8)
    for entry in answer["classes"]:
        labels[mask_utils.decode(entry["rle"]).astype(bool)] = entry["index"]
    return labels


def lineage(project: Path, env: dict, model_uri: str) -> str:
    return subprocess.run([str(BIN / "visionflow"), "lineage", model_uri], cwd=project, env=env, check=True,
                          capture_output=True, text=True).stdout


def locked_md5(project: Path, stage: str, path: str) -> str:
    deps = yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["deps"]
    return next(dep["md5"] for dep in deps if dep["path"] == path)


def test_dvc_repro_builds_tracks_and_reruns_only_what_changed(tiny_project: Path, project_env: dict):
    subprocess.run(["git", "add", "-A"], cwd=tiny_project, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "tiny project"], cwd=tiny_project, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tiny_project, check=True, capture_output=True,
                            text=True).stdout.strip()
    out = dvc(tiny_project, project_env, "repro")
    tasks = yaml.safe_load((tiny_project / "params.yaml").read_text())["tasks"]
    assert stages_run(out) == {"acquire", "report"} | {stage_name(stage, task) for task in tasks
                                                       for stage in TASK_STAGES}
    page = (tiny_project / "reports/index.html").read_text()
    assert 'id="segmentation"' in page and "mIoU" in page

    metrics = json.loads((tiny_project / "metrics/segmentation.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 1.0 and set(metrics["iou"]) == {
        "background", "circle", "square", "triangle"}
    for produced in ("models/segmentation/best.ckpt", "models/segmentation/last.ckpt",
                     "reports/segmentation/augment.png", "reports/segmentation/curves.png",
                     "reports/segmentation/eval/overlays.png", "reports/segmentation/eval/confusion.png",
                     "plots/segmentation/train.csv"):
        assert (tiny_project / produced).is_file(), produced
    registered = json.loads((tiny_project / "models/segmentation/registered.json").read_text())
    assert registered["version"] == "1" and registered["alias_moved"]

    shown = dvc(tiny_project, project_env, "metrics", "show", "--json")
    assert "mIoU" in shown

    # MLflow: one experiment for the family, one tagged run per stage, evaluate nested in train.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("visionflow-segmentation")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {run.data.tags["visionflow.stage"]: run for run in runs}
    assert set(by_stage) == {"synthesize", "augment", "train", "evaluate", "register"}
    train_run = by_stage["train"]
    assert by_stage["evaluate"].data.tags["mlflow.parentRunId"] == train_run.info.run_id
    assert "test/mIoU" in by_stage["evaluate"].data.metrics
    assert {"val/mIoU", "test/mIoU"} <= set(train_run.data.metrics)  # the training run shows its test score
    assert train_run.data.params["segmentation.train.lr"] == "0.006"
    for run in runs:
        assert run.data.tags["visionflow.dvc_stage"].endswith("-segmentation")
        assert len(run.data.tags["visionflow.params_hash"]) == 12
    champion = client.get_model_version_by_alias("visionflow-segmentation", "champion")
    assert str(champion.version) == "1"

    # The registered champion predicts exactly what the checkpoint does.
    registry, checkpoint = predict_from_registry_and_checkpoint(tiny_project, project_env, "segmentation")
    assert (registry / "000000_labels.png").read_bytes() == (checkpoint / "000000_labels.png").read_bytes()
    # ... and so does the champion served over HTTP.
    served = serve_champion(tiny_project, project_env, "segmentation",
                            tiny_project / "data/synthetic/segmentation/images/test/000000.png")
    np.testing.assert_array_equal(served, read_rgb(checkpoint / "000000_labels.png")[..., 0])
    if "pose" in tasks:  # crops in, keypoints out: the registered copy (torch.export) agrees too
        registry, checkpoint = predict_from_registry_and_checkpoint(tiny_project, project_env, "pose")
        registry = json.loads((registry / "000000_keypoints.json").read_text())
        checkpoint = json.loads((checkpoint / "000000_keypoints.json").read_text())
        assert registry[0]["keypoints"] == pytest.approx(checkpoint[0]["keypoints"], abs=1e-3)

    # Stereo: the registered champion (torch.export, one (N, 6, H, W) input) predicts what the checkpoint does.
    if "stereo" in tasks:
        assert json.loads((tiny_project / "metrics/stereo.json").read_text())["epe"] >= 0
        scene = tiny_project / "data/synthetic/stereo/test/000000"
        disparities = []
        for model, out in (("models:/visionflow-stereo@champion", "stereo_registry"),
                           ("models/stereo/best.ckpt", "stereo_checkpoint")):
            subprocess.run([str(BIN / "visionflow"), "predict", "--task", "stereo", "--model", model, "--out",
                            out, str(scene / "im0.png"), str(scene / "im1.png")], cwd=tiny_project,
                           env=project_env, check=True, capture_output=True)
            disparities.append(read_pfm(tiny_project / out / "im0_disparity.pfm"))
        np.testing.assert_allclose(disparities[0], disparities[1], atol=1e-4)

    # Nothing changed: nothing runs.
    assert "Data and pipelines are up to date" in dvc(tiny_project, project_env, "status")

    # A segmentation training param reruns exactly train, evaluate and register.
    params_file = tiny_project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["segmentation"]["train"]["lr"] = 0.003
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(tiny_project, project_env, "repro")
    assert stages_run(out) == {"train-segmentation", "evaluate-segmentation", "register-segmentation", "report"}

    # Lineage: each version names its commit (dirty once params.yaml was edited), params hash and
    # the data hashes dvc.lock holds; the retrained version 2 has another params hash.
    first, second = (lineage(tiny_project, project_env, f"models:/visionflow-segmentation/{v}") for v in (1, 2))
    data_md5 = locked_md5(tiny_project, "train-segmentation", "data/synthetic/segmentation.json")
    assert f"commit   {commit}\n" in first and f"commit   {commit} with uncommitted changes" in second
    for text in (first, second):
        assert f"data/synthetic/segmentation.json  md5 {data_md5}  (as in dvc.lock now)" in text
        assert "dvc repro register-segmentation" in text
    hashes = [re.search(r"params   hash (\w+)", text).group(1) for text in (first, second)]
    assert hashes[0] != hashes[1] and "unknown" not in hashes

    # A teammate's checkout: the outputs (dvc pull) but another MLflow store, without the run that
    # trained them. An evaluate change reruns evaluate and register, each under a run of its own.
    (tiny_project / "mlflow.db").rename(tiny_project / "mlflow.teammate.db")
    params["segmentation"]["evaluate"]["onnx_tolerance"] = 0.01  # in the metrics: register reruns too
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(tiny_project, project_env, "repro")
    assert stages_run(out) == {"evaluate-segmentation", "register-segmentation", "report"}
    assert "the training run this evaluate belongs under, is not in this store" in out
    # (sqlite3, not MlflowClient: this process's MLflow keeps the first store's file open under the same URI)
    with contextlib.closing(sqlite3.connect(tiny_project / "mlflow.db")) as store:
        stages = store.execute("SELECT value FROM tags WHERE key = 'visionflow.stage'").fetchall()
        parents = store.execute("SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId'").fetchone()
    assert sorted(stages) == [("evaluate",), ("register",)] and parents == (0,)
