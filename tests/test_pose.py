"""The pose family: figures with truthful visibility, flip augmentation, skeletons from the data."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_params_dict, tree_hashes
from visionflow.config import ConfigError, TrainerParams, TransformSpec, parse_params
from visionflow.data.coco import CocoFormatError, annotation_mask, load_coco
from visionflow.data.synth.figures import FIGURES, FigureSceneSpec, render_figure_scene
from visionflow.data.synth.figures_coco import write_figures_coco
from visionflow.data.synth.shapes import scene_rng
from visionflow.tasks import get_task
from visionflow.tasks.base import EvalOutputs
from visionflow.tasks.pose.data import (CropGeometry, KeypointAugment, crop_image, crop_transform,
                                        flip_index_from_pairs, keypoint_drift, keypoint_schema,
                                        keypoints_to_crop)
from visionflow.tasks.pose.evaluate import resolve_sigmas, results_json, Instance
from visionflow.training import build_trainer

SPEC = FigureSceneSpec(image_size=64, min_height=24, max_height=48, truncation_probability=0.4,
                       occluder_probability=0.8)
SPLITS = {"train": 8, "test": 4}
PERSON = FIGURES["person"]
PERSON_FLIP = flip_index_from_pairs(PERSON.keypoints, PERSON.flip_pairs, "person")


@pytest.fixture(scope="module")
def figures_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "pose"
    write_figures_coco(out, SPEC, SPLITS, seed=5, progress=False)
    return out


# --- synthetic figures --------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(figures_dataset, tmp_path):
    again = tmp_path / "again"
    write_figures_coco(again, SPEC, SPLITS, seed=5, progress=False)
    assert tree_hashes(again) == tree_hashes(figures_dataset)


def test_coco_keypoint_fields_follow_the_declared_skeleton(figures_dataset):
    coco = load_coco(figures_dataset / "train.json")
    (category,) = coco.categories
    assert category["keypoints"] == list(PERSON.keypoints)
    names = category["keypoints"]
    # COCO's skeleton is 1-based; flip pairs name left/right twins
    assert [[names[a - 1], names[b - 1]] for a, b in category["skeleton"]] == [list(p) for p in PERSON.skeleton]
    assert ["left_wrist", "right_wrist"] in category["flip_pairs"]
    for annotation in coco.annotations:
        points = np.reshape(annotation["keypoints"], (-1, 3))
        assert annotation["num_keypoints"] == (points[:, 2] > 0).sum()
        mask = annotation_mask(annotation, 64, 64)
        assert annotation["area"] == mask.sum()


def test_visibility_flags_are_truthful():
    counts = {0: 0, 1: 0, 2: 0}
    for index in range(40):
        scene = render_figure_scene(scene_rng(1, "train", index), SPEC)
        owners = np.zeros((64, 64), int)
        for figure in scene.figures:
            owners += figure.mask
        assert owners.max() <= 1  # every pixel shows at most one figure
        for figure in scene.figures:
            for x, y, v in figure.keypoints:
                counts[int(v)] += 1
                if v == 0:  # outside the image: written as 0, 0 as COCO does
                    assert x == 0 and y == 0
                    continue
                row, col = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
                assert 0 <= row < 64 and 0 <= col < 64
                # visible: its pixel shows its own figure; occluded (1): something else covers it
                assert figure.mask[row, col] == (v == 2)
    assert min(counts.values()) > 0, counts  # truncation and occlusion both happen



def test_arms_do_not_share_the_torsos_colour():
    # A wrist across the torso is labelled visible (v = 2); painted in the torso's colour it
    # would vanish into it, so arms get their own colour group.
    person = FIGURES["person"]
    torso_groups = {group for kind, _, _, group in person.parts if kind == "polygon"}
    arm_groups = {group for kind, joints, _, group in person.parts if kind == "limb" and "left_wrist" in joints}
    assert torso_groups and arm_groups and not torso_groups & arm_groups
    assert max(group for *_, group in person.parts) < person.colour_groups

def test_truncated_points_lie_outside_the_image():
    # Re-render one scene's figure joints without truncation bookkeeping: every keypoint that
    # is v = 0 must be one that the posed figure put outside the image.
    spec = FigureSceneSpec(image_size=64, min_height=40, max_height=60, truncation_probability=1.0,
                           max_occluders=0, max_figures=1, min_figures=1, min_keypoints_inside=3)
    seen_outside = 0
    for index in range(20):
        scene = render_figure_scene(scene_rng(2, "test", index), spec)
        for figure in scene.figures:
            seen_outside += int((figure.keypoints[:, 2] == 0).sum())
            labelled = figure.keypoints[figure.keypoints[:, 2] > 0]
            assert ((labelled[:, :2] >= -0.5) & (labelled[:, :2] < 63.5)).all()
    assert seen_outside > 0


# --- crops and augmentation ---------------------------------------------------------------------


def test_crop_maps_pixels_and_keypoints_alike():
    image = np.zeros((80, 100, 3), np.uint8)
    image[30, 40] = 255  # one bright pixel
    geometry = CropGeometry(64, 48, 1.25)
    x0, y0, scale = crop_transform([20.0, 10.0, 40.0, 60.0], geometry)
    # the box centre (pixel-centre coordinates 39.5, 39.5) lands on the crop centre (23.5, 31.5)
    assert ((39.5 - x0) * scale, (39.5 - y0) * scale) == pytest.approx((23.5, 31.5))
    assert scale == pytest.approx(64 / (60 * 1.25))  # the longer side (with margin) fills the crop
    crop = crop_image(image, x0, y0, scale, geometry)
    point = keypoints_to_crop(np.array([[40.0, 30.0, 2]]), x0, y0, scale, geometry)[0]
    row, col = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
    assert abs(col - point[0]) <= 0.5 and abs(row - point[1]) <= 0.5
    outside = keypoints_to_crop(np.array([[95.0, 30.0, 2]]), x0, y0, scale, geometry)[0]
    assert outside.tolist() == [0, 0, 0]  # left the crop: v = 0, x = y = 0


def flip_only(flip_index, p=1.0, seed=0, replay=False):
    return KeypointAugment([TransformSpec(name="HorizontalFlip", p=p)], "pose.augment", flip_index, seed=seed,
                           replay=replay)


def test_horizontal_flip_swaps_left_and_right_and_mirrors_coordinates():
    names = ("nose", "left_eye", "right_eye", "left_foot", "right_foot")
    flip_index = (0, 2, 1, 4, 3)
    image = np.zeros((64, 48, 3), np.uint8)
    keypoints = np.array([[24.0, 5.0, 2], [20.0, 4.0, 2], [28.0, 4.5, 1], [15.0, 60.0, 2], [0.0, 0.0, 0]],
                         np.float32)
    _, flipped = flip_only(flip_index)(image, keypoints)
    # x -> W - 1 - x (pixel centres at integers); the point that was the left eye is now the right eye
    assert flipped[0].tolist() == [23.0, 5.0, 2]
    assert flipped[2].tolist() == [27.0, 4.0, 2]  # right_eye <- left_eye (20, 4), v carried along
    assert flipped[1].tolist() == [19.0, 4.5, 1]  # left_eye <- right_eye (28, 4.5), still occluded
    assert flipped[4].tolist() == [32.0, 60.0, 2]  # right_foot <- left_foot
    assert flipped[3].tolist() == [0, 0, 0]  # unlabelled stays unlabelled
    assert names[flip_index[1]] == "right_eye"


@pytest.mark.parametrize("transform, mirrors", [
    (TransformSpec(name="VerticalFlip"), True),  # a reflection: left and right swap too
    (TransformSpec(name="Transpose"), True),
    (TransformSpec(name="Affine", kwargs={"rotate": [90, 90]}), False),  # rotations keep sides
])
def test_any_reflection_swaps_and_rotations_do_not(transform, mirrors):
    augment = KeypointAugment([transform], "pose.augment", (1, 0), replay=True)
    keypoints = np.array([[10.0, 20.0, 2], [30.0, 22.0, 2]], np.float32)
    out = augment.apply(np.zeros((48, 48, 3), np.uint8), keypoints)
    assert out["mirrored"] == mirrors


def test_points_that_leave_the_crop_become_unlabelled():
    augment = KeypointAugment([TransformSpec(name="Affine", kwargs={"translate_px": {"x": [20, 20], "y": [0, 0]}})],
                              "pose.augment", (0, 1))
    keypoints = np.array([[40.0, 10.0, 2], [5.0, 10.0, 2]], np.float32)
    _, moved = augment(np.zeros((64, 48, 3), np.uint8), keypoints)
    assert moved[0].tolist() == [0, 0, 0]  # 40 + 20 = 60 > 47.5
    assert moved[1].tolist() == pytest.approx([25.0, 10.0, 2])


def test_keypoints_follow_their_pixels_through_geometry(figures_dataset):
    augment = KeypointAugment([TransformSpec(name="HorizontalFlip", p=0.5),
                               TransformSpec(name="Affine", kwargs={"rotate": [-40, 40], "scale": [0.7, 1.3]}),
                               TransformSpec(name="ColorJitter")], "pose.augment", PERSON_FLIP, seed=1,
                              replay=True)
    keypoints = np.array([[10.3, 12.7, 2], [30.0, 40.2, 1], [24.0, 50.0, 2]] + [[0, 0, 0]] * 11, np.float32)
    image = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    assert max(keypoint_drift(augment, image, keypoints) for _ in range(6)) < 0.5


def test_crops_cut_once_when_the_device_augments(figures_dataset):
    from visionflow.tasks.pose.data import CocoPoseDataset, PoseDataModule, keypoint_schema, load_split

    schema = keypoint_schema(load_split(figures_dataset, "train"))
    geometry = CropGeometry(64, 48, 1.25)
    cached = PoseDataModule(figures_dataset, schema, geometry, batch_size=4).train  # no loader transform
    assert cached._items is not None and len(cached._items[0]) == len(cached) > 0
    fresh = CocoPoseDataset(load_split(figures_dataset, "train"), schema, geometry)
    for index in range(len(fresh)):
        assert all(torch.equal(a, b) for a, b in zip(cached[index], fresh[index]))
    augmented = PoseDataModule(figures_dataset, schema, geometry, batch_size=4,
                               train_transform=KeypointAugment([], "pose.augment", schema.flip_index)).train
    assert augmented._items is None  # a loader transform draws anew every time


# --- skeleton, flip pairs and sigmas from data and params ---------------------------------------


def write_coco(path: Path, names: list[str], skeleton: list[list[int]], **category_extra) -> Path:
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}], "annotations": [],
            "categories": [{"id": 3, "name": "thing", "keypoints": names, "skeleton": skeleton, **category_extra}]}
    path.write_text(json.dumps(data))
    return path


def test_flip_pairs_come_from_params_then_the_category_then_the_names(tmp_path):
    names = ["tip", "left_hand", "right_hand", "Lfoot", "Rfoot"]
    coco = load_coco(write_coco(tmp_path / "a.json", names, [[1, 2], [1, 3]]))
    by_names = keypoint_schema(coco)
    assert by_names.flip_index == (0, 2, 1, 3, 4) and by_names.flip_source == "names"
    assert by_names.skeleton == ((0, 1), (0, 2))  # 0-based inside
    by_params = keypoint_schema(coco, [["Lfoot", "Rfoot"]])
    assert by_params.flip_index == (0, 1, 2, 4, 3) and by_params.flip_source == "params"
    coco = load_coco(write_coco(tmp_path / "b.json", names, [], flip_pairs=[["Lfoot", "Rfoot"]]))
    assert keypoint_schema(coco).flip_index == (0, 1, 2, 4, 3)


def test_bad_flip_pairs_and_skeletons_name_the_key(tmp_path):
    coco = load_coco(write_coco(tmp_path / "a.json", ["a", "b"], [[1, 2]]))
    with pytest.raises(ConfigError, match="pose.data.flip_pairs: unknown keypoint 'c'"):
        keypoint_schema(coco, [["a", "c"]])
    bad = load_coco(write_coco(tmp_path / "b.json", ["a", "b"], [[1, 3]]))
    with pytest.raises(CocoFormatError, match=r"b.json: category 3: field 'skeleton' entry \[1, 3\]"):
        keypoint_schema(bad)


def test_sigmas_from_params_and_default_warnings():
    names = ["a", "b", "c"]
    assert resolve_sigmas({"c": 0.3, "a": 0.1, "b": 0.2}, names).tolist() == [0.1, 0.2, 0.3]
    assert resolve_sigmas([0.1, 0.2, 0.3], names).tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(ConfigError, match="pose.evaluate.sigmas: no sigma for c; unknown keypoints d"):
        resolve_sigmas({"a": 0.1, "b": 0.2, "d": 0.3}, names)
    with pytest.raises(ConfigError, match="pose.evaluate.sigmas: 2 sigmas for 3 keypoints"):
        resolve_sigmas([0.1, 0.2], names)
    with pytest.warns(UserWarning, match="uniform 0.05 for all 3 keypoints"):
        assert resolve_sigmas(None, names).tolist() == [0.05] * 3
    from visionflow.tasks.pose.metrics import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS

    with pytest.warns(UserWarning, match="COCO's person sigmas"):
        assert tuple(resolve_sigmas(None, COCO_PERSON_KEYPOINTS)) == COCO_PERSON_SIGMAS


# --- the whole family on another skeleton, and its results file ---------------------------------


def five_point_dataset(source: Path, target: Path) -> Path:
    """The figures re-labelled as a 5-keypoint 'star' with other names, no flip_pairs field."""
    keep = ["head", "left_wrist", "right_wrist", "left_ankle", "right_ankle"]
    names = ["tip", "left_hand", "right_hand", "left_foot", "right_foot"]
    index = [PERSON.keypoints.index(n) for n in keep]
    target.mkdir(parents=True)
    (target / "images").symlink_to(source / "images")
    for split in ("train", "test"):
        data = json.loads((source / f"{split}.json").read_text())
        data["categories"] = [{"id": 7, "name": "star", "keypoints": names,
                               "skeleton": [[1, 2], [1, 3], [1, 4], [1, 5]]}]
        for annotation in data["annotations"]:
            points = np.reshape(annotation["keypoints"], (-1, 3))[index]
            annotation["keypoints"] = points.ravel().tolist()
            annotation["num_keypoints"] = int((points[:, 2] > 0).sum())
            annotation["category_id"] = 7
        (target / f"{split}.json").write_text(json.dumps(data))
    return target


def test_a_different_skeleton_trains_and_evaluates_unchanged(figures_dataset, tmp_path):
    root = five_point_dataset(figures_dataset, tmp_path / "star")
    raw = tiny_params_dict()
    raw["pose"]["evaluate"]["sigmas"] = None  # the default, with its warning
    params = parse_params(raw).pose
    family = get_task("pose")
    datamodule = family.datamodule(params, root, TrainerParams())
    assert datamodule.schema.names == ("tip", "left_hand", "right_hand", "left_foot", "right_foot")
    assert datamodule.schema.flip_index == (0, 2, 1, 4, 3)  # from the names
    module = family.module(params, datamodule)
    trainer = build_trainer(TrainerParams(accelerator="cpu", progress_bar=False), 1, tmp_path / "run", [])
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader(),
                val_dataloaders=datamodule.val_dataloader())
    assert trainer.global_step > 0
    with pytest.warns(UserWarning, match="uniform 0.05 for all 5 keypoints"):
        metrics = family.evaluate(params, module, root, EvalOutputs(tmp_path / "plots", tmp_path / "reports"),
                                  torch.device("cpu"))
    assert 0 <= metrics["AP"] <= 1 and set(metrics["error_px"]) == set(datamodule.schema.names)
    assert metrics["test_instances"] > 0 and (tmp_path / "reports" / "overlays.png").is_file()
    results = json.loads((tmp_path / "reports" / "keypoint_results.json").read_text())
    assert {r["category_id"] for r in results} == {7} and len(results[0]["keypoints"]) == 15
    exported = family.export(module, root)
    with torch.no_grad():
        assert exported.module(torch.from_numpy(exported.example)).shape == (2, 5, 3)


def test_results_writer_scores_like_pycocotools(figures_dataset):
    from test_coco_eval import KEYPOINT_NAMES, pycocotools_stats

    from visionflow.coco_eval import evaluate_coco

    gt = json.loads((figures_dataset / "test.json").read_text())
    rng = np.random.default_rng(0)
    instances, rows = [], []
    for annotation in gt["annotations"]:
        points = np.reshape(annotation["keypoints"], (-1, 3)).astype(float)
        points[:, :2] += rng.normal(0, 1.5, (len(points), 2))
        points[:, 2] = rng.uniform(0.1, 1.0, len(points))
        instances.append(Instance(annotation["image_id"], annotation["bbox"], float(rng.uniform(0.5, 1))))
        rows.append(points)
    results = results_json(instances, np.array(rows), 1, threshold=0.2)
    sigmas = [0.05 + 0.005 * k for k in range(14)]
    ours = evaluate_coco(gt, results, "keypoints", max_dets=[20], sigmas=sigmas, backend="faster")
    reference = pycocotools_stats(gt, results, "keypoints", sigmas=sigmas)
    assert [ours.stats[name] for name in KEYPOINT_NAMES] == pytest.approx(reference, abs=1e-12)
    assert 0.1 < ours.stats["AP"] < 1.0


@pytest.mark.parametrize("overrides, expected", [
    ({"model": {"crop_height": 60}}, "pose.model: crop_height and crop_width must be multiples of 8"),
    ({"synth": {"figure": "robot"}}, "pose.synth.figure: unknown figure 'robot'"),
    ({"evaluate": {"boxes": "yolo"}}, "pose.evaluate.boxes: input should be 'ground_truth' or 'detection'"),
    ({"evaluate": {"sigmas": {"head": -1}}}, "pose.evaluate.sigmas: every sigma must be > 0"),
    ({"model": {"heatmap_stride": 3}}, "pose.model.heatmap_stride"),
])
def test_bad_pose_params_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as caught:
        parse_params(tiny_params_dict(pose=overrides))
    assert expected in str(caught.value)


@pytest.mark.parametrize("model", [{"head": "regression"}, {"heatmap_loss": "cross_entropy", "heatmap_stride": 4}])
def test_other_heads_and_losses_train_and_export(model, figures_dataset):
    params = parse_params(tiny_params_dict(pose={"model": model})).pose
    family = get_task("pose")
    datamodule = family.datamodule(params, figures_dataset, TrainerParams())
    module = family.module(params, datamodule)
    _, losses = module.model_step(next(iter(datamodule.train_dataloader())))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and all(p.grad is not None for p in module.parameters())
    exported = family.export(module.eval(), figures_dataset)
    with torch.no_grad():
        keypoints = exported.module(torch.from_numpy(exported.example))
    assert keypoints.shape == (2, 14, 3) and ((keypoints[..., 2] >= 0) & (keypoints[..., 2] <= 1)).all()


def test_detection_boxes_need_the_detection_model(figures_dataset, tmp_path):
    raw = tiny_params_dict(pose={"evaluate": {"boxes": "detection"}})
    params = parse_params(raw).pose
    family = get_task("pose")
    datamodule = family.datamodule(params, figures_dataset, TrainerParams())
    module = family.module(params, datamodule)
    with pytest.raises(FileNotFoundError, match="pose.evaluate.boxes is 'detection' but"):
        family.evaluate(params, module, figures_dataset,
                        EvalOutputs(tmp_path / "plots", tmp_path / "reports", project_root=tmp_path),
                        torch.device("cpu"))


def test_flip_test_makes_predictions_mirror_equivariant():
    # Averaging a crop's maps with its mirror's makes the prediction for a mirrored crop the
    # mirror (x -> W - 1 - x, left/right swapped) of the prediction for the crop.
    from visionflow.tasks.pose.network import KeypointPredictor, PoseNet

    torch.manual_seed(0)
    flip_index = [0, 2, 1, 4, 3]
    net = PoseNet(5, (32, 24), "heatmap", (4, 8, 8), 2).eval()
    predictor = KeypointPredictor(net, flip_index=flip_index, flip_test=True)
    crops = torch.rand(3, 3, 32, 24)
    with torch.no_grad():
        direct = predictor(crops)
        mirrored = predictor(torch.flip(crops, dims=[3]))
    expected = direct[:, flip_index].clone()
    expected[..., 0] = 24 - 1 - expected[..., 0]
    assert mirrored == pytest.approx(expected, abs=1e-4)


def test_predict_without_detection_takes_the_whole_image(figures_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a project without models/detection/best.ckpt
    params = parse_params(tiny_params_dict()).pose
    family = get_task("pose")
    module = family.module(params, family.datamodule(params, figures_dataset, TrainerParams())).eval()
    exported = family.export(module, figures_dataset)
    image = figures_dataset / "images" / "test" / "000000.png"
    written = family.predict(exported.module, [image], tmp_path / "out", torch.device("cpu"))
    assert sorted(p.name for p in written) == ["000000_keypoints.json", "000000_overlay.png"]
    (result,) = json.loads((tmp_path / "out" / "000000_keypoints.json").read_text())
    assert result["bbox"] == [0.0, 0.0, 64.0, 64.0] and len(result["keypoints"]) == 3 * 14



def test_predict_takes_the_detector_it_is_given_over_the_projects(figures_dataset, tmp_path, monkeypatch):
    import visionflow.tasks.pose.predict as pose_predict

    def project_detector(device):
        raise AssertionError("the project's detector was looked up")

    monkeypatch.setattr(pose_predict, "project_detector", project_detector)
    params = parse_params(tiny_params_dict()).pose
    family = get_task("pose")
    module = family.module(params, family.datamodule(params, figures_dataset, TrainerParams())).eval()
    exported = family.export(module, figures_dataset).module
    image = figures_dataset / "images" / "test" / "000000.png"
    family.predict(exported, [image], tmp_path / "out", torch.device("cpu"), detector=None)
    (result,) = json.loads((tmp_path / "out" / "000000_keypoints.json").read_text())
    assert result["bbox"] == [0.0, 0.0, 64.0, 64.0]
    with pytest.raises(AssertionError, match="project's detector"):  # no detector given: the project's
        family.predict(exported, [image], tmp_path / "out", torch.device("cpu"))


def test_detector_option_is_refused_for_other_tasks(tmp_path, capsys):
    from visionflow.cli import main

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params_dict(tasks=["segmentation", "pose"])))
    code = main(["--params", str(params_file), "predict", "--task", "segmentation", "--detector", "none",
                 str(tmp_path / "image.png")])
    assert code == 2 and "--detector: only pose" in capsys.readouterr().err

def test_detection_boxes_come_from_the_detection_familys_model(tmp_path, monkeypatch):
    # The detection family's tiny model (trained by its own stage) supplies the boxes; every box
    # it keeps is cropped and scored, and the metrics say where the boxes came from.
    from visionflow.paths import TaskPaths
    from visionflow.stages import evaluate, synthesize, train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tiny_params_dict(tasks=["detection", "pose"],
                           pose={"evaluate": {"boxes": "detection", "detection_min_score": 0.0}})
    params = parse_params(raw)
    for task in ("detection", "pose"):
        synthesize.run(params, task, tmp_path, progress=False)
        train.run(params, task, tmp_path)
    metrics = evaluate.run(params, "pose", tmp_path)
    assert metrics["boxes"] == "detection" and 0.0 <= metrics["AP"] <= 1.0
    results = json.loads((TaskPaths("pose", tmp_path).eval_reports / "keypoint_results.json").read_text())
    assert metrics["predicted_instances"] > 0 and all(len(r["keypoints"]) == 3 * 14 for r in results)
