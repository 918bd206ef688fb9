"""The ``augment:`` list run on whole batches (kornia): what each name does, seeding, errors,
self-supervision drawing its two views on the device (``selfsup.augment_on: device``), and boxes
and keypoints following the device's draws (``detection.augment_on``, ``pose.augment_on``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from visionflow.batch_augment import TwoViews, build_batch_augment
from visionflow.config import ConfigError, TransformSpec, load_params, parse_params, read_yaml_mapping
from visionflow.data.images import write_png

from conftest import REPO, trainer_in_stage


def spec(name: str, p: float = 1.0, **kwargs) -> TransformSpec:
    return TransformSpec(name=name, p=p, kwargs=kwargs)


def run(specs: list[TransformSpec], images: torch.Tensor) -> torch.Tensor:
    return build_batch_augment(specs, "test.augment")(images)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))


def test_each_name_does_what_albumentations_does_with_it(images):
    torch.testing.assert_close(run([spec("HorizontalFlip")], images), images.flip(-1))
    torch.testing.assert_close(run([spec("VerticalFlip")], images), images.flip(-2))
    gray = run([spec("ToGray")], images)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    rotated = run([spec("RandomRotate90")], images)
    for image, out in zip(images, rotated):  # some quarter turn of the image, each its own
        assert min((out - image.rot90(k, (1, 2))).abs().max() for k in range(4)) < 1e-5
    crop = run([spec("RandomResizedCrop", size=[16, 16], scale=[0.3, 0.6])], images)
    assert crop.shape == (6, 3, 16, 16)
    brighter = run([spec("ColorJitter", brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)], images)
    factor = (brighter / images.clamp(min=1e-3)).flatten(1)[:, :100].median(1).values
    assert ((factor > 0.49) & (factor < 1.51)).all() and factor.std() > 0.01  # one factor per image


def test_every_image_of_a_batch_gets_its_own_draw():
    same = torch.rand(1, 3, 64, 64).expand(16, -1, -1, -1).contiguous()
    out = run([spec("RandomResizedCrop", size=[32, 32], scale=[0.2, 0.8])], same)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 12  # crop boxes are whole pixels: rare repeats


def test_seeded_views_replay_and_leave_the_global_generator_alone(images):
    views = TwoViews(build_batch_augment(load_params(REPO / "params.yaml").selfsup.augment, "selfsup.augment"))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = views.seeded(images, 0)
    assert torch.equal(torch.get_rng_state(), state)
    again, other = views.seeded(images, 0), views.seeded(images, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # two independent draws
    assert all(v.shape == (6, 3, 32, 32) and v.min() >= 0 and v.max() <= 1 for v in first)


@pytest.mark.parametrize("entry, expected", [
    ({"name": "GaussianBlur", "p": 0.5}, "selfsup: augment[6]: GaussianBlur has no batched (kornia) version"),
    ({"name": "HorizontalFlip", "kwargs": {"always_apply": True}},
     "selfsup: augment[6].kwargs: HorizontalFlip on the device takes no arguments"),
])
def test_a_transform_without_a_batched_version_is_named(entry, expected):
    raw = read_yaml_mapping(REPO / "params.yaml")
    raw["selfsup"]["augment"].append(entry)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse_params(raw, "params.yaml")
    raw["selfsup"]["augment_on"] = "loader"  # albumentations takes any transform
    assert parse_params(raw, "params.yaml").selfsup.augment_on == "loader"


def test_selfsup_draws_its_views_on_the_device_after_the_batch_arrives(tmp_path):
    from visionflow.tasks import get_task

    rng = np.random.default_rng(0)
    for i in range(12):
        write_png(tmp_path / f"{i:02d}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    params = load_params(REPO / "params.yaml").selfsup
    assert params.augment_on == "device"
    from visionflow.tasks.selfsup import batch_views
    from visionflow.tasks.selfsup.data import SelfsupDataModule

    def data():
        return SelfsupDataModule([tmp_path], 32, 0.25, 4, None, None, seed=0, batch_views=batch_views(params))

    datamodule = data()
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 3, 32, 32)  # images, no views yet
    val_pairs = [pair for pair in datamodule.val]
    assert all(torch.equal(a, b) for pair, other in zip(val_pairs, data().val) for a, b in zip(pair, other))

    module = get_task("selfsup").module(params, datamodule)
    module.trainer = trainer_in_stage("training")
    first, second = module.on_after_batch_transfer(batch, 0)
    assert first.shape == second.shape == batch.shape and not torch.equal(first, second)
    pair = (first, second)
    module.trainer = trainer_in_stage("validating")
    assert module.on_after_batch_transfer(pair, 0) is pair  # validation pairs pass through


# --- boxes and keypoints follow the device's draws ------------------------------------------------


def test_affine_on_the_device_takes_min_max_ranges_and_a_symmetric_shift():
    with pytest.raises(ConfigError, match=r"translate_percent: on the device a shift is symmetric"):
        run([spec("Affine", translate_percent=[-0.1, 0.2])], torch.rand(2, 3, 8, 8))
    with pytest.raises(ConfigError, match=re.escape("kwargs.scale: expected a [min, max] list")):
        run([spec("Affine", scale=1.2)], torch.rand(2, 3, 8, 8))
    raw = read_yaml_mapping(REPO / "params.yaml")
    raw["detection"]["augment"]["transforms"].append({"name": "GaussNoise", "p": 0.5})
    with pytest.raises(ConfigError, match=r"params.yaml: detection: augment\.transforms\[4\]: GaussNoise has no batched"):
        parse_params(raw, "params.yaml")


def blobs(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 3, H, W) grey images, each a Gaussian blob (peak 0.5) at its point (N, 2)."""
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    x, y = points[:, 0, None, None], points[:, 1, None, None]
    return (0.5 * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0))[:, None].expand(-1, 3, -1, -1).contiguous()


def peaks(images: torch.Tensor) -> torch.Tensor:
    """(N, 2) sub-pixel peak (3x3 centroid) of each image's first channel."""
    out = []
    for image in images[:, 0]:
        row, col = divmod(int(image.argmax()), image.shape[1])
        patch = image[row - 1: row + 2, col - 1: col + 2]
        steps = torch.tensor([-1.0, 0.0, 1.0])
        out.append([col + (patch.sum(0) * steps).sum() / patch.sum(), row + (patch.sum(1) * steps).sum() / patch.sum()])
    return torch.tensor(out)


def test_points_follow_their_pixels_through_flips_and_affine():
    from visionflow.batch_augment import PointAugment, mirrored, move_points

    specs = [spec("HorizontalFlip", p=0.5), spec("VerticalFlip", p=0.5),
             spec("Affine", scale=[0.8, 1.2], rotate=[-30, 30], translate_percent=[-0.1, 0.1]),
             spec("ColorJitter", brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)]
    augment = PointAugment(build_batch_augment(specs, "test.augment"))
    points = torch.tensor([[20.0, 24.0], [40.0, 30.0], [31.5, 26.0], [25.0, 40.0]]).repeat(4, 1)  # (16, 2)
    torch.manual_seed(0)
    out, matrices = augment(blobs(points, 64, 64))
    moved = move_points(points[:, None], matrices)[:, 0]
    assert (peaks(out) - moved).norm(dim=1).max() < 0.5
    assert 0 < int(mirrored(matrices).sum()) < 16  # some draws mirror, some do not


def test_boxes_move_with_the_image_and_obey_the_rule_for_leaving_it():
    from visionflow.tasks.boxes.device_augment import apply_box_rule, move_boxes
    from visionflow.tasks.boxes.params import BoxRuleParams

    mirror = torch.tensor([[[-1.0, 0.0, 63.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # x -> 63 - x, W = 64
    torch.testing.assert_close(move_boxes(torch.tensor([[5.0, 10.0, 30.0, 20.0]]), mirror),
                               torch.tensor([[34.0, 10.0, 59.0, 20.0]]))  # pixel edges: x -> 64 - x
    boxes = torch.tensor([[-10.0, 0.0, 10.0, 10.0],   # half inside: 100 px^2 visible
                          [60.0, 60.0, 70.0, 61.0],   # 4 x 1 px visible
                          [10.0, 10.0, 20.0, 20.0]])  # inside
    rule = dict(min_area=0.0, min_side=0.0)
    kept, keep = apply_box_rule(boxes, 64, 64, BoxRuleParams(clip=True, min_visibility=0.3, **rule))
    assert keep.tolist() == [True, True, True] and kept[0].tolist() == [0.0, 0.0, 10.0, 10.0]
    _, keep = apply_box_rule(boxes, 64, 64, BoxRuleParams(clip=True, min_visibility=0.6, **rule))
    assert keep.tolist() == [False, False, True]
    _, keep = apply_box_rule(boxes, 64, 64, BoxRuleParams(clip=True, min_visibility=0.0, min_area=0.0, min_side=2.0))
    assert keep.tolist() == [True, False, True]
    kept, keep = apply_box_rule(boxes, 64, 64, BoxRuleParams(clip=False, min_visibility=0.0, min_area=50.0,
                                                              min_side=0.0))
    assert keep.tolist() == [True, False, True] and kept[0].tolist() == [-10.0, 0.0, 10.0, 10.0]


def test_keypoints_swap_sides_in_a_mirror_and_leave_when_outside():
    from visionflow.batch_augment import PointAugment
    from visionflow.tasks.pose.device_augment import KeypointBatchAugment, mark_outside

    augment = KeypointBatchAugment(PointAugment(build_batch_augment([spec("HorizontalFlip")], "pose.augment")),
                                   flip_index=[1, 0, 2])  # left, right, nose
    crops = torch.rand(2, 3, 8, 6)
    keypoints = torch.tensor([[[1.0, 2.0, 2.0], [4.0, 2.0, 2.0], [2.0, 5.0, 1.0]],
                              [[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [2.0, 5.0, 2.0]]])
    info = torch.zeros(2, 5)
    out, moved, same_info = augment((crops, keypoints, info))
    assert torch.equal(out, crops.flip(-1)) and same_info is info
    # x -> 5 - x; what was the left point is now on the right, so it takes the right's slot
    assert moved[0].tolist() == [[1.0, 2.0, 2.0], [4.0, 2.0, 2.0], [3.0, 5.0, 1.0]]
    assert moved[1].tolist() == [[0.0, 0.0, 0.0], [4.0, 2.0, 2.0], [3.0, 5.0, 2.0]]  # unlabelled stays (0, 0, 0)
    inside_out = mark_outside(torch.tensor([[[5.25, 7.25, 2.0], [5.6, 1.0, 2.0], [1.0, -0.6, 1.0]]]), 8, 6)
    assert inside_out[0].tolist() == [[5.25, 7.25, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("task", ["detection", "pose"])
def test_box_and_keypoint_families_augment_training_batches_on_the_device(task, tmp_path):
    from conftest import tiny_params_dict
    from visionflow.paths import TaskPaths
    from visionflow.stages import synthesize
    from visionflow.tasks import get_task

    params = parse_params(tiny_params_dict(tasks=[task]))
    section, family = params.task(task), get_task(task)
    assert section.augment_on == "device"
    synthesize.run(params, task, tmp_path, progress=False)
    datamodule = family.datamodule(section, TaskPaths(task, tmp_path).data_root(section.data.source), params.trainer)
    batch = next(iter(datamodule.train_dataloader()))
    module = family.module(section, datamodule)
    module.trainer = trainer_in_stage("training")
    torch.manual_seed(0)
    images, targets = module.on_after_batch_transfer(batch, 0)[:2]
    assert images.shape == batch[0].shape and not torch.equal(images, batch[0])
    if task == "detection":  # boxes moved with their images
        assert any(len(b["boxes"]) and not torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, batch[1]))
    else:  # keypoints moved with their crops
        assert not torch.equal(targets, batch[1])
    module.trainer = trainer_in_stage("validating")
    assert module.on_after_batch_transfer(batch, 0) is batch
