"""Both box families through the real stage functions on tiny data, then predict from the registry."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_params_dict
from visionflow.config import parse_params
from visionflow.paths import TaskPaths
from visionflow.stages import augment, evaluate, register, synthesize, train
from visionflow.tasks import get_task


@pytest.mark.parametrize("task, model", [("detection", "centernet"), ("instance_segmentation", None)])
def test_stages_write_their_outputs_and_the_registered_model_predicts(task, model, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = {task: {"model": {"name": model}}} if model else {}
    params = parse_params(tiny_params_dict(tasks=[task], **overrides))
    paths = TaskPaths(task, tmp_path)

    counts = synthesize.run(params, task, tmp_path, progress=False)
    assert counts["train"]["images"] == 8
    check = augment.run(params, task, tmp_path)
    assert check["masks_checked"] and check["max_box_miss_px"] <= 1.5
    if task == "instance_segmentation":  # albumentations in the loader (detection: on the device)
        assert check["min_mask_agreement"] >= 0.98
    assert paths.augment_preview.is_file()
    summary = train.run(params, task, tmp_path)
    assert summary["monitor"] == get_task(task).monitor and paths.best_checkpoint.is_file()

    metrics = evaluate.run(params, task, tmp_path)
    family = get_task(task)
    assert 0.0 <= metrics[family.primary_metric] <= 1.0
    assert set(metrics["per_class_AP" if task == "detection" else "mask_per_class_AP"]) == {
        "circle", "square", "triangle", "star"}
    written = json.loads(paths.metrics.read_text())
    assert written[family.primary_metric] == metrics[family.primary_metric]
    results = json.loads((paths.eval_reports / "results.json").read_text())
    assert all(("segmentation" in r) == (task == "instance_segmentation") for r in results)
    for name in ("overlays.png", "pr_bbox.png"):
        assert (paths.eval_reports / name).is_file(), name
    assert (paths.eval_plots / "pr_bbox.csv").is_file()
    if task == "instance_segmentation":
        assert (paths.eval_plots / "pr_segm.csv").is_file() and "box_AP" in metrics

    registration = register.run(params, task, tmp_path)
    assert registration["version"] == "1" and registration["alias_moved"]

    # The registered model and the checkpoint's export detect the same things.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    registered = mlflow.pytorch.load_model(f"models:/{params.task(task).registry.model_name}@champion")
    exported = family.export(family.load_module(paths.best_checkpoint), paths.synthetic)
    images = sorted((paths.synthetic / "images/test").glob("*.png"))[:2]
    # An image of another size: the registered model's H and W are free (pt2 and pickle alike).
    from visionflow.data.images import read_rgb, write_png

    write_png(tmp_path / "crop.png", read_rgb(images[0])[5:55, 3:63])
    images.append(tmp_path / "crop.png")
    outputs = {}
    for name, model_ in (("registry", registered), ("checkpoint", exported.module)):
        written = family.predict(model_, images, tmp_path / name, torch.device("cpu"))
        assert [p.name for p in written[:2]] == ["results.json", "images.json"]
        assert (tmp_path / name / f"{images[0].stem}_overlay.png").is_file()
        outputs[name] = json.loads(written[0].read_text())
    assert outputs["registry"] == outputs["checkpoint"]
    example = torch.from_numpy(exported.example)
    with torch.no_grad():
        rows = exported.module(example)
    assert rows.shape[:2] == (2, 10) and rows.shape[2] == (6 if task == "detection" else 6 + 28 * 28)


def test_retinanet_trains_a_step_and_detects(tmp_path):
    from visionflow.config import TrainerParams

    params = parse_params(tiny_params_dict(detection={"model": {"name": "retinanet"}})).task("detection")
    family, paths = get_task("detection"), TaskPaths("detection", tmp_path)
    family.synthesize(params, paths.synthetic, progress=False)
    datamodule = family.datamodule(params, paths.synthetic, TrainerParams())
    module = family.module(params, datamodule)
    images, targets = next(iter(datamodule.train_dataloader()))
    _, losses = module.model_step((images, targets))
    assert set(losses) == {"loss", "classification", "bbox_regression"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert module.net.head.classification_head.cls_logits.weight.grad is not None
    rows = module.detect(images)
    assert rows.shape == (len(images), 10, 6) and module.training  # detect() restores the mode
    found = rows[rows[:, :, 4] >= 0]
    assert torch.all((found[:, 5] >= 0) & (found[:, 5] < 4))
    exported = family.export(module, paths.synthetic)
    assert exported.serialization_format == "pickle" and exported.output_shape == (-1, 10, 6)
