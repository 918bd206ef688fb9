"""Self-supervision: NT-Xent by hand, two seeded views, strict backbone transfer, probes, DAG."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import BIN, REPO, tiny_params_dict, write_project_params
from visionflow.config import ConfigError, TransformSpec, parse_params
from visionflow.losses import nt_xent_loss
from visionflow.models.backbones import (BackboneMismatchError, backbone_from_file, load_backbone,
                                         save_backbone, save_state)
from visionflow.models.unet import UNet, UNetEncoder
from visionflow.tasks.selfsup.probes import knn_accuracy, linear_probe_accuracy, pca_2d


# --- NT-Xent ------------------------------------------------------------------------------------


def test_nt_xent_equals_the_hand_computed_value():
    # Two images, 2-dim embeddings. Views agree: for every anchor the positive has cosine 1
    # and both negatives cosine 0, so each term is -log(e / (e + 1 + 1)) = log(1 + 2/e).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # lengths do not matter: cosine similarity
    assert nt_xent_loss(z1, z2, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    # Temperature 0.5 doubles every logit: log(1 + 2 e^-2).
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)
    # Views swapped: each positive is orthogonal (0) and one negative identical (1):
    # -log(e^0 / (e^0 + e^0 + e^1)) = log(2 + e).
    swapped = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert nt_xent_loss(z1, swapped, 1.0).item() == pytest.approx(math.log(2 + math.e), abs=1e-6)


def test_nt_xent_has_gradients_and_rejects_bad_input():
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: nt_xent_loss(a, z2, 0.3), (z1,))
    with pytest.raises(ValueError, match=r"N >= 2"):
        nt_xent_loss(torch.ones(1, 2), torch.ones(1, 2), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(torch.ones(2, 2), torch.ones(2, 2), 0.0)


# --- two views ----------------------------------------------------------------------------------


VIEW_PIPELINE = [TransformSpec(name="RandomResizedCrop", kwargs={"size": [32, 32], "scale": [0.3, 1.0]}),
                 TransformSpec(name="ColorJitter", p=1.0, kwargs={"brightness": 0.4, "hue": 0.1})]


def _views(seed: int, image: np.ndarray, pairs: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    from visionflow.augment import build_transforms
    from visionflow.tasks.selfsup.data import two_views

    pipeline = build_transforms(VIEW_PIPELINE, "selfsup.augment", seed=seed)
    return [two_views(pipeline, image) for _ in range(pairs)]


def test_two_views_differ_and_the_seed_reproduces_them():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    first = _views(7, image)
    for view_1, view_2 in first:
        assert view_1.shape == view_2.shape == (32, 32, 3)
        assert not np.array_equal(view_1, view_2)  # one seed, two different draws
    again = _views(7, image)
    assert all(np.array_equal(a, b) for pair, pair_again in zip(first, again) for a, b in zip(pair, pair_again))
    other = _views(8, image)
    assert not np.array_equal(first[0][0], other[0][0])


def test_the_dataset_yields_two_different_views(tmp_path):
    from visionflow.augment import build_transforms
    from visionflow.data.images import write_png
    from visionflow.tasks.selfsup.data import TwoViewDataset

    write_png(tmp_path / "a.png", np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    dataset = TwoViewDataset([tmp_path / "a.png"], 32, build_transforms(VIEW_PIPELINE, "x", seed=0))
    view_1, view_2 = dataset[0]
    assert view_1.shape == view_2.shape == (3, 32, 32) and view_1.dtype == torch.float32
    assert not torch.equal(view_1, view_2)


# --- backbone transfer --------------------------------------------------------------------------


def test_loading_a_matching_backbone_changes_the_encoder(tmp_path):
    torch.manual_seed(0)
    pretrained = UNetEncoder((4, 8, 16))
    path = save_backbone(pretrained, tmp_path / "backbone.pt", {"by": "test"})
    torch.manual_seed(1)
    downstream = UNet(3, channels=(4, 8, 16))
    before = downstream.encoder.stem[0][0].weight.clone()
    decoder_before = downstream.decoder.head.weight.clone()
    meta = load_backbone(downstream.encoder, path)
    assert meta == {"by": "test"}
    assert not torch.equal(before, downstream.encoder.stem[0][0].weight)
    for key, value in pretrained.state_dict().items():
        assert torch.equal(downstream.encoder.state_dict()[key], value), key
    assert torch.equal(decoder_before, downstream.decoder.head.weight)  # the decoder is untouched


def test_a_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    path = save_backbone(UNetEncoder((4, 8, 16)), tmp_path / "backbone.pt")
    downstream = UNet(3, channels=(8, 8, 16))
    before = {k: v.clone() for k, v in downstream.encoder.state_dict().items()}
    with pytest.raises(BackboneMismatchError) as caught:
        load_backbone(downstream.encoder, path)
    message = str(caught.value)
    assert "backbone.pt" in message
    assert "stem.0.0.weight: backbone (4, 3, 3, 3) vs model (8, 3, 3, 3)" in message
    # Nothing was half-loaded.
    assert all(torch.equal(before[k], v) for k, v in downstream.encoder.state_dict().items())


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = save_backbone(UNetEncoder((4, 8, 16)), tmp_path / "backbone.pt")
    with pytest.raises(BackboneMismatchError, match=r"missing keys \(\d+\): downs\.2\."):
        load_backbone(UNetEncoder((4, 8, 16, 32)), path)
    with pytest.raises(BackboneMismatchError, match=r"unexpected keys \(\d+\): downs\.1\."):
        load_backbone(UNetEncoder((4, 8)), path)
    # A dilated bottleneck adds layers: also a loud mismatch, not a partial load.
    with pytest.raises(BackboneMismatchError, match="missing keys"):
        load_backbone(UNetEncoder((4, 8, 16), dilations=(1, 2)), path)


def test_not_a_backbone_file_is_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    with pytest.raises(BackboneMismatchError, match="junk.pt: not a readable"):
        load_backbone(UNetEncoder((4, 8)), junk)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_backbone(UNetEncoder((4, 8)), tmp_path / "missing.pt")


def test_an_encoder_is_found_inside_a_checkpoint(tmp_path):
    from visionflow.tasks.selfsup.contrastive import ContrastiveNet

    net = ContrastiveNet((4, 8), (1,), 8, 4)
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, checkpoint)
    payload = backbone_from_file(checkpoint)
    assert set(payload["state_dict"]) == set(net.encoder.state_dict())
    converted = save_state(payload["state_dict"], tmp_path / "backbone.pt", {})
    target = UNetEncoder((4, 8))
    load_backbone(target, converted)
    assert torch.equal(target.stem[0][0].weight, net.encoder.stem[0][0].weight)

    two = tmp_path / "two.ckpt"
    torch.save({"state_dict": {**{f"a.{k}": v for k, v in net.encoder.state_dict().items()},
                               **{f"b.{k}": v for k, v in net.encoder.state_dict().items()}}}, two)
    with pytest.raises(BackboneMismatchError, match="exactly one U-Net encoder.*found 2"):
        backbone_from_file(two)


def test_segmentation_starts_from_a_backbone_and_refuses_a_wrong_one(tiny_params, tmp_path):
    from visionflow.tasks import get_task
    from visionflow.tasks.segmentation.module import SegmentationModule

    family = get_task("segmentation")
    channels = tiny_params.segmentation.model.channels
    module = SegmentationModule(["background", "a"], tiny_params.segmentation.model, tiny_params.segmentation.train)
    good = save_backbone(UNetEncoder(tuple(channels)), tmp_path / "good.pt")
    family.start_from_backbone(module, good)
    bad = save_backbone(UNetEncoder(tuple(c * 2 for c in channels)), tmp_path / "bad.pt")
    with pytest.raises(BackboneMismatchError, match="shape mismatch"):
        family.start_from_backbone(module, bad)


# --- probes -------------------------------------------------------------------------------------


def test_knn_and_linear_probe_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.6, 0.5]])
    test_y = torch.tensor([0, 1, 1])
    # Nearest neighbour by cosine: [0.6, 0.5] is closest to [0.9, 0.1]'s class 0 -> 2 of 3 right.
    assert knn_accuracy(train, train_y, test, test_y, k=1) == pytest.approx(2 / 3)
    assert linear_probe_accuracy(train, train_y, test[:2], test_y[:2]) == 1.0
    with pytest.raises(ValueError, match="train: expected features"):
        knn_accuracy(train, train_y[:3], test, test_y)


def test_pca_2d_finds_the_line_the_points_lie_on():
    t = torch.linspace(-1, 1, 11)
    points = torch.stack([t, 2 * t, torch.zeros_like(t)], 1)
    projected = pca_2d(points)
    assert projected.shape == (11, 2)
    assert projected[:, 0].abs().max() == pytest.approx(math.sqrt(5), rel=1e-5)
    assert projected[:, 1].abs().max() < 1e-5


# --- params and the DVC graph ------------------------------------------------------------------


@pytest.mark.parametrize("pretrained, expected", [
    ({"segmentaton": "models/selfsup/best.ckpt"}, "pretrained.segmentaton: unknown enabled task family"),
    ({"segmentation": "/abs/backbone.pt"}, "pretrained.segmentation: must be a path inside the project"),
    ({"selfsup": "models/selfsup/best.ckpt"}, "pretrained.selfsup: models/selfsup/best.ckpt is selfsup's own"),
])
def test_bad_pretrained_entries_name_the_key(pretrained, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        parse_params(tiny_params_dict(pretrained=pretrained))


def test_selfsup_params_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"selfsup\.train\.temperature: must be > 0"):
        parse_params(tiny_params_dict(selfsup={"train": {"temperature": 0}}))
    with pytest.raises(ConfigError, match=r"selfsup\.evaluate\.label_fractions: every fraction"):
        parse_params(tiny_params_dict(selfsup={"evaluate": {"label_fractions": [0.0, 1.0]}}))


def _dvc_graph(project: Path, env: dict) -> dict[str, set[str]]:
    """{stage: stages it depends on}, from DVC's own parse of dvc.yaml."""
    code = ("import json; from dvc.repo import Repo\n"
            "r = Repo('.'); g = r.index.graph\n"
            "print(json.dumps({s.addressing: sorted(d.addressing for d in g.successors(s)) for s in g}))")
    out = subprocess.run([str(BIN / "python"), "-c", code], cwd=project, env=env, capture_output=True,
                         text=True, check=True)
    import json

    return {k: set(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def test_pretraining_is_upstream_of_segmentation_only_when_params_say_so(tiny_project, project_env):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["tasks"] = ["segmentation", "selfsup"]  # the fixture enables segmentation only
    write_project_params(tiny_project, params)
    graph = _dvc_graph(tiny_project, project_env)
    assert "pretrained-segmentation" not in graph
    assert "train-selfsup" not in graph["train-segmentation"]

    params["pretrained"] = {"segmentation": "models/selfsup/best.ckpt"}
    write_project_params(tiny_project, params)
    graph = _dvc_graph(tiny_project, project_env)
    assert graph["pretrained-segmentation"] == {"train-selfsup"}
    assert "pretrained-segmentation" in graph["train-segmentation"]
    assert "pretrained-segmentation" not in graph["train-selfsup"]


def test_every_family_has_its_pretrained_folder():
    """train-<family> depends on pretrained/<family>/: a family without the folder breaks `dvc repro`."""
    from visionflow.tasks import task_names

    missing = [f for f in task_names() if not (REPO / "pretrained" / f / ".gitignore").is_file()]
    assert not missing, f"add pretrained/<family>/.gitignore for {missing}"
