"""Adding a family: register the toy family (tests/toy_family.py), give it a params.yaml section,
and it gets its dvc.yaml stages and runs through every stage, in a throwaway project."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from toy_family import Toy

TOY_SECTION = {
    "synth": {"seed": 0, "splits": {"train": 128, "val": 32, "test": 64}, "image_size": 8, "margin": 0.1,
              "noise_std": 8.0},
    "data": {"source": "synthetic"},
    "augment": [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}],
    "model": {"hidden": 0},
    "train": {"seed": 0, "epochs": 6, "batch_size": 16, "lr": 0.1, "weight_decay": 0.0, "schedule": "constant",
              "resume": False},
    "evaluate": {"overlays": 4, "batch_size": 32, "onnx_tolerance": 0.005},
    "register": {"model_name": "visionflow-toy", "alias": "champion"},
}


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch):
    """The registry with ``toy`` added, for this test only (a copy of the registry dict is patched in)."""
    from visionflow import config, dag, tasks

    tasks.task_names()  # load the built-in families first, into the real registry
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    tasks.register_task(Toy)

    # dag.py names each file it parses as a dotted module under src/ (dag._dotted, to resolve relative
    # imports), so it cannot follow the imports of a family outside the package: read toy_family.py
    # as if it were visionflow/tasks/toy_family.py. Its code deps are then the visionflow modules it
    # imports (the file itself, outside src/, is not one).
    original = dag._dotted
    toy_file = Path(__file__).with_name("toy_family.py").resolve()
    monkeypatch.setattr(dag, "_dotted",
                        lambda path: "visionflow.tasks.toy_family" if path == toy_file else original(path))
    config._params_model.cache_clear()
    yield
    config._params_model.cache_clear()


def toy_project_params(root: Path) -> dict:
    """The repo's shared sections, only ``toy`` enabled, tracking into the project's own sqlite file."""
    shared = yaml.safe_load((REPO / "params.yaml").read_text())
    params = {key: shared[key] for key in ("trainer", "tracking", "acquire", "pretrained")}
    params["trainer"] = {**params["trainer"], "accelerator": "cpu", "progress_bar": False}
    params["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}"}
    return {"tasks": ["toy"], **params, "toy": TOY_SECTION}


def test_a_registered_toy_family_gets_its_stages_and_runs_through_all_of_them(toy_registered, tmp_path,
                                                                               monkeypatch):
    import mlflow

    from visionflow import dag
    from visionflow.config import load_params
    from visionflow.paths import TaskPaths
    from visionflow.report import REPORT_HTML
    from visionflow.stages import TASK_STAGES, augment, evaluate, register, report, synthesize, train
    from visionflow.tasks import get_task

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(toy_project_params(tmp_path), sort_keys=False))
    params = load_params(tmp_path / "params.yaml")
    assert isinstance(params.task("toy"), Toy.params_model)

    # dvc.yaml: the toy's five stages, then the report; each with the toy's params keys.
    stages = yaml.safe_load(dag.render(params))["stages"]
    assert list(stages) == ["acquire", *[f"{stage}-toy" for stage in TASK_STAGES], "report"]
    assert "toy.train" in stages["train-toy"]["params"] and "toy.evaluate" in stages["evaluate-toy"]["params"]
    assert "src/visionflow/tasks/lightning_base.py" in stages["train-toy"]["deps"]
    assert stages["evaluate-toy"]["cmd"] == "visionflow evaluate --task toy"

    family, paths = get_task("toy"), TaskPaths("toy", tmp_path)
    counts = synthesize.run(params, "toy", tmp_path, progress=False)
    assert counts["train"]["images"] == 128 and paths.synthetic_manifest.is_file()
    check = augment.run(params, "toy", tmp_path)
    assert check["labels_kept"] == 1.0 and paths.augment_preview.is_file()

    summary = train.run(params, "toy", tmp_path)
    assert summary["epochs"] == 6 and summary["monitor"] == "val/accuracy"
    for written in (paths.best_checkpoint, paths.last_checkpoint, paths.train_summary, paths.train_curves_png):
        assert written.is_file(), written
    with open(paths.train_curves_csv) as f:
        curve = list(csv.DictReader(f))
    # It learnt (an untrained linear layer may already sort the colours, but not confidently).
    assert float(curve[-1]["val_loss"]) < 0.5 * float(curve[0]["train_loss"]), curve

    metrics = evaluate.run(params, "toy", tmp_path)
    assert metrics["accuracy"] > 0.9, metrics
    assert json.loads(paths.metrics.read_text())["accuracy"] == metrics["accuracy"]
    assert (paths.eval_reports / "overlays.png").is_file() and (paths.eval_plots / "confusion.json").is_file()
    onnx = metrics["onnx"]
    assert "error" not in onnx and onnx["passed"], onnx
    assert paths.onnx_model.is_file()

    registration = register.run(params, "toy", tmp_path)
    assert registration["version"] == "1" and registration["alias_moved"] and paths.registered.is_file()
    client = mlflow.MlflowClient(params.tracking.uri)
    assert str(client.get_model_version_by_alias("visionflow-toy", "champion").version) == "1"

    # The registered champion answers as the checkpoint's network does.
    mlflow.set_tracking_uri(params.tracking.uri)
    champion = mlflow.pytorch.load_model("models:/visionflow-toy@champion")
    image = sorted((paths.synthetic / "images/test").glob("*.png"))[0]
    from_registry = family.predict(champion, [image], tmp_path / "registry", torch.device("cpu"))
    from_checkpoint = family.predict(family.inference_module(family.load_module(paths.best_checkpoint)), [image],
                                     tmp_path / "checkpoint", torch.device("cpu"))
    answers = [json.loads(p[0].read_text()) for p in (from_registry, from_checkpoint)]
    assert answers[0]["label"] == answers[1]["label"]
    assert answers[0]["probabilities"] == pytest.approx(answers[1]["probabilities"], abs=1e-5)

    result = report.run(params, tmp_path)
    assert result["families"] == 1 and result["targets_missed"] == []
    page = (tmp_path / REPORT_HTML).read_text()
    assert html.escape("bright/dark accuracy") in page and f"{metrics['accuracy']:.4g}" in page


def test_the_toy_family_is_registered_only_inside_its_test():
    from visionflow.config import params_model
    from visionflow.tasks import task_names

    assert "toy" not in task_names() and "toy" not in params_model().model_fields
