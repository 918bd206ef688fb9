"""The stereo family end to end on tiny data: augmentation checks, self-supervision, predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_params_dict
from visionflow.config import ConfigError, TrainerParams, parse_params
from visionflow.data.disparity import read_pfm
from visionflow.data.images import read_rgb, write_png
from visionflow.paths import TaskPaths
from visionflow.tasks import get_task
from visionflow.tasks.stereo.data import StereoAugmenter, resize_disparity


def stereo_params(**overrides):
    return parse_params(tiny_params_dict(stereo=overrides)).task("stereo")


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    get_task("stereo").synthesize(stereo_params(), TaskPaths("stereo", root).synthetic, progress=False)
    return root


def test_geometric_transforms_are_refused_by_name():
    params = stereo_params(augment={"per_view": [{"name": "HorizontalFlip"}]})
    with pytest.raises(ConfigError, match=r"stereo.augment.per_view\[0\].name: HorizontalFlip is a geometric"):
        StereoAugmenter(params.augment, seed=0)


def test_bad_stereo_params_name_the_key():
    with pytest.raises(ConfigError, match="stereo.model: max_disparity must be a multiple of 8"):
        stereo_params(model={"max_disparity": 20})
    with pytest.raises(ConfigError, match="stereo.augment.crop: crop sides must be multiples of 8"):
        stereo_params(augment={"crop": [30, 48]})


def test_augment_check_passes_and_catches_a_broken_geometry(tiny_synthetic, tmp_path, monkeypatch):
    family, params = get_task("stereo"), stereo_params()
    data_root = TaskPaths("stereo", tiny_synthetic).synthetic
    check = family.augment_preview(params, data_root, tmp_path / "augment.png")
    assert (tmp_path / "augment.png").is_file() and check["max_warp_error_ratio"] < 1.2

    original = StereoAugmenter.geometry

    def mirrored(self, left, right, disparity, crop):  # a horizontal flip: epipolar order broken
        left, right, disparity = original(self, left, right, disparity, crop)
        return left[:, ::-1].copy(), right[:, ::-1].copy(), disparity[:, ::-1].copy()

    monkeypatch.setattr(StereoAugmenter, "geometry", mirrored)
    with pytest.raises(ValueError, match="stereo.augment: after the augmentation's geometry"):
        family.augment_preview(params, data_root, tmp_path / "augment.png")


def test_augment_check_is_the_same_in_every_process(tiny_synthetic, tmp_path):
    from visionflow.tasks.stereo.augment_check import preview_and_check

    params, data_root = stereo_params(), TaskPaths("stereo", tiny_synthetic).synthetic
    checks = []
    for process_seed in (1, 2):  # a new process starts from a random torch seed
        torch.manual_seed(process_seed)
        checks.append(preview_and_check(params, data_root, tmp_path / f"augment{process_seed}.png"))
    assert checks[0] == checks[1]
    assert read_rgb(tmp_path / "augment1.png").tobytes() == read_rgb(tmp_path / "augment2.png").tobytes()


def test_resized_disparity_is_exact_on_planes_and_invents_nothing_at_edges():
    y, x = np.mgrid[0:20, 0:30].astype(np.float32)
    plane = 0.2 * x + 0.1 * y + 5
    resized = resize_disparity(plane, (45, 30))  # 1.5x
    y2, x2 = np.mgrid[0:30, 0:45].astype(np.float32)
    xs, ys = (x2 + 0.5) / 1.5 - 0.5, (y2 + 0.5) / 1.5 - 0.5  # source coordinates of the new pixel centres
    expected = 1.5 * (0.2 * xs + 0.1 * ys + 5)
    np.testing.assert_allclose(resized[2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-3)

    step = np.where(x < 15, 10.0, 30.0).astype(np.float32)
    step[0, 0] = np.inf
    resized = resize_disparity(step, (60, 40))  # 2x: only 20, 60 and the invalid pixel remain
    assert set(np.unique(resized[np.isfinite(resized)])) == {20.0, 60.0}
    assert np.isinf(resized[0, 0]) and not np.isnan(resized).any()


def test_scale_augmentation_scales_disparities_with_the_images():
    params = stereo_params(augment={"scale": [2.0, 2.0], "crop": [16, 32], "vertical_flip": 0.0})
    augmenter = StereoAugmenter(params.augment, seed=0)
    image = np.zeros((20, 40, 3), np.uint8)
    left, right, disparity = augmenter.geometry(image, image, np.full((20, 40), 7.0, np.float32), (16, 32))
    assert left.shape == (16, 32, 3) and np.all(disparity == 14.0)
    with pytest.raises(ConfigError, match=r"stereo.augment.scale: .*0 < min <= max"):
        stereo_params(augment={"scale": [2.0, 1.0]})


def make_unlabelled_real(folder: Path, count: int = 3) -> None:
    """Middlebury-style real pairs without disparity files (a shifted texture, 40x64)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        texture = rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)
        write_png(folder / f"scene{i}" / "im0.png", texture[:, 10:74])
        write_png(folder / f"scene{i}" / "im1.png", texture[:, 14:78])


def test_self_supervised_phase_adds_photometric_terms(tiny_synthetic):
    make_unlabelled_real(tiny_synthetic / "data" / "raw" / "street" / "training")
    params = stereo_params(train={"self_supervised": {"source": "street", "start_epoch": 0}})
    family = get_task("stereo")
    datamodule = family.datamodule(params, TaskPaths("stereo", tiny_synthetic).synthetic, TrainerParams())
    module = family.module(params, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.real_left.shape == batch.left.shape
    module.train()
    _, losses = module.model_step(batch)
    assert {"supervised", "distribution", "photometric", "smoothness", "left_right", "loss"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is not None for p in module.net.parameters() if p.requires_grad)
    # Before start_epoch only the supervised loss counts.
    late = stereo_params(train={"self_supervised": {"source": "street", "start_epoch": 5}})
    _, losses = family.module(late, datamodule).model_step(batch)
    assert set(losses) == {"supervised", "distribution", "loss"}


def test_real_pairs_are_decoded_once_however_often_they_are_drawn(tiny_synthetic, monkeypatch):
    import visionflow.tasks.stereo.data as stereo_data

    make_unlabelled_real(tiny_synthetic / "data" / "raw" / "yard" / "training", count=2)
    params = stereo_params(train={"self_supervised": {"source": "yard", "start_epoch": 0}})
    datamodule = get_task("stereo").datamodule(params, TaskPaths("stereo", tiny_synthetic).synthetic,
                                               TrainerParams())
    dataset = datamodule.train_dataloader().dataset
    real_reads, original = [], stereo_data.read_pair

    def counting_read_pair(record, with_labels=True):
        if not with_labels:
            real_reads.append(record.left)
        return original(record, with_labels)

    monkeypatch.setattr(stereo_data, "read_pair", counting_read_pair)
    items = [dataset[(i % len(dataset), i)] for i in range(3 * len(dataset))]  # (index, sample seed)
    assert all(item[3].shape == item[0].shape for item in items)  # a real crop in every item
    assert 1 <= len(real_reads) <= 2 and len(set(real_reads)) == len(real_reads)


def test_real_draws_leave_the_labelled_augmentation_unchanged(tiny_synthetic):
    make_unlabelled_real(tiny_synthetic / "data" / "raw" / "yard" / "training", count=2)
    data_root = TaskPaths("stereo", tiny_synthetic).synthetic

    def labelled_items(params):
        dataset = get_task("stereo").datamodule(params, data_root, TrainerParams()).train_dataloader().dataset
        return [dataset[(i % len(dataset), i)][:3] for i in range(2 * len(dataset))]  # (index, sample seed)

    with_real = labelled_items(stereo_params(train={"self_supervised": {"source": "yard"}}))
    without = labelled_items(stereo_params())
    for a, b in zip(with_real, without, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_missing_self_supervised_source_names_it(tiny_synthetic):
    params = stereo_params(train={"self_supervised": {"source": "nowhere"}})
    with pytest.raises(FileNotFoundError, match="data source 'nowhere' not found"):
        get_task("stereo").datamodule(params, TaskPaths("stereo", tiny_synthetic).synthetic, TrainerParams())


def test_predict_writes_a_pfm_and_a_colour_map(tiny_synthetic, tmp_path):
    family, params = get_task("stereo"), stereo_params()
    data_root = TaskPaths("stereo", tiny_synthetic).synthetic
    datamodule = family.datamodule(params, data_root, TrainerParams())
    exported = family.export(family.module(params, datamodule), data_root)
    assert exported.example.shape[:2] == (2, 6)
    scene = data_root / "test" / "000000"
    written = family.predict(exported.module, [scene / "im0.png", scene / "im1.png"], tmp_path,
                             torch.device("cpu"))
    assert [p.name for p in written] == ["im0_disparity.pfm", "im0_disparity.png"]
    disparity = read_pfm(written[0])
    assert disparity.shape == read_rgb(scene / "im0.png").shape[:2] and np.isfinite(disparity).all()
    with pytest.raises(Exception, match="LEFT RIGHT image pairs"):
        family.predict(exported.module, [scene / "im0.png"], tmp_path, torch.device("cpu"))


class _RecordingStub(torch.nn.Module):
    """A stand-in network: disparity = 10 x the left red channel, per pixel; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(pair))
        return pair[:, :1] * 10


def test_evaluation_batches_only_pairs_of_one_size_and_range(tmp_path):
    from visionflow.data.disparity import write_pfm
    from visionflow.data.synth.stereo import write_calib
    from visionflow.tasks.base import EvalOutputs
    from visionflow.tasks.stereo.evaluate import evaluate_split

    rng = np.random.default_rng(0)
    shapes_and_ranges = [((32, 48), 16), ((32, 48), 16), ((32, 48), 16), ((40, 48), 16), ((32, 48), 24)]
    for i, ((h, w), ndisp) in enumerate(shapes_and_ranges):
        scene = tmp_path / "data" / "test" / f"{i:02d}"
        scene.mkdir(parents=True)
        write_png(scene / "im0.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_png(scene / "im1.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_pfm(scene / "disp0.pfm", rng.uniform(0, ndisp, (h, w)).astype(np.float32))
        write_calib(scene / "calib.txt", w, h, ndisp, 0.0, float(ndisp))

    def evaluate(batch_size: int) -> tuple[dict, str, list[int]]:
        params = stereo_params(evaluate={"batch_size": batch_size})
        out = EvalOutputs(tmp_path / f"plots{batch_size}", tmp_path / f"reports{batch_size}")
        out.plots_dir.mkdir()
        out.reports_dir.mkdir()
        model = _RecordingStub()
        result = evaluate_split(model, 16.0, tmp_path / "data", "test", "k", params, out, torch.device("cpu"))
        return result, (out.plots_dir / "k_pairs.csv").read_text(), sorted(set(model.batch_sizes))

    one, one_pairs, one_sizes = evaluate(1)
    batched, batched_pairs, batched_sizes = evaluate(2)
    assert one_sizes == [1]
    assert batched_sizes == [1, 2]  # the first two pairs together; the rest differ in size or range
    assert batched_pairs == one_pairs  # every pair keeps its own prediction
    assert batched["net"]["all"] == one["net"]["all"] and batched["pairs"] == 5


def test_channels_last_weights_change_the_layout_not_the_disparity(tmp_path):
    from visionflow.tasks.stereo.module import StereoModule

    params = stereo_params()
    module = get_task("stereo").module(params, None).eval()
    convolutions = [p for p in module.net.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    plain = StereoModule(params.model, params.train).eval()
    for parameter in plain.net.parameters():
        parameter.data = parameter.data.contiguous()
    plain.load_state_dict(module.state_dict())
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in plain.net.parameters() if p.dim() == 4)
    left, right = torch.rand(2, 1, 3, 32, 64).unbind(0)
    with torch.no_grad():
        assert torch.allclose(module(left, right)[-1], plain(left, right)[-1], atol=1e-4)
    torch.save({"state_dict": module.state_dict()}, tmp_path / "weights.pt")
    reloaded = get_task("stereo").module(params, None)
    reloaded.load_state_dict(torch.load(tmp_path / "weights.pt")["state_dict"])
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in reloaded.net.parameters() if p.dim() == 4)
