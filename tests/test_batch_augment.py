"""The ``augment:`` list run on whole batches (kornia): what each name does, seeding, errors,
and self-supervision drawing its two views on the device (``selfsup.augment_on: device``)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from visionflow.batch_augment import TwoViews, build_batch_augment
from visionflow.config import ConfigError, TransformSpec, load_params, parse_params, read_yaml_mapping
from visionflow.data.images import write_png

from conftest import REPO


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
    first, second = module.on_after_batch_transfer(batch, 0)
    assert first.shape == second.shape == batch.shape and not torch.equal(first, second)
    pair = (first, second)
    assert module.on_after_batch_transfer(pair, 0) is pair  # validation pairs pass through
