"""Detection and instance segmentation: box maths, CenterNet coding, results files, data checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visionflow.coco_eval import evaluate_coco
from visionflow.data.coco import CocoFormatError, encode_mask
from visionflow.models.boxes import box_iou, clip_boxes, coco_to_xyxy, mask_boxes, xyxy_to_coco
from visionflow.models.centernet import (CenterNet, centernet_loss, decode_detections, encode_targets,
                                         gaussian_radius, heatmap_focal_loss)
from visionflow.tasks.boxes.results import (detections_to_results, read_results, results_without_masks,
                                                write_results)

# --- boxes --------------------------------------------------------------------------------


def test_box_conversions_by_hand():
    coco = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 1.0, 1.0]])
    xyxy = torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.0, 1.0]])
    assert torch.equal(coco_to_xyxy(coco), xyxy)
    assert torch.equal(xyxy_to_coco(xyxy), coco)
    with pytest.raises(ValueError, match=r"boxes must be \(K, 4\)"):
        coco_to_xyxy(torch.zeros(4))


def test_iou_of_one_quarter_and_zero():
    # A 2x2 box against itself (1), a 4x4 box holding it (4 / 16 = 0.25) and a disjoint box (0).
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1.0, 0.25, 0.0]]))
    # Overlap by hand: [0,2]x[0,2] and [1,3]x[0,2] share 1x2 = 2 of a union 6 -> 1/3.
    assert box_iou(a, torch.tensor([[1.0, 0.0, 3.0, 2.0]])).item() == pytest.approx(1 / 3)


def test_clip_and_mask_boxes():
    assert torch.equal(clip_boxes(torch.tensor([[-5.0, 2.0, 70.0, 80.0]]), height=64, width=48),
                       torch.tensor([[0.0, 2.0, 48.0, 64.0]]))
    masks = torch.zeros(3, 10, 12, dtype=torch.uint8)
    masks[0, 2:5, 3:9] = 1  # rows 2..4, columns 3..8
    masks[1, 7, 11] = 1  # one pixel
    boxes = mask_boxes(masks)
    assert torch.equal(boxes, torch.tensor([[3.0, 2.0, 9.0, 5.0], [11.0, 7.0, 12.0, 8.0], [0.0, 0.0, 0.0, 0.0]]))


# --- CenterNet ----------------------------------------------------------------------------


@pytest.mark.parametrize("regression", ["centre", "gaussian"])
def test_centernet_encode_then_decode_recovers_the_boxes(regression):
    boxes = torch.tensor([[10.0, 12.0, 30.0, 40.0], [40.5, 8.25, 60.0, 22.0], [5.0, 44.0, 25.0, 62.0]])
    labels = torch.tensor([0, 2, 0])
    targets = encode_targets([boxes, torch.zeros(0, 4)], [labels, torch.zeros(0, dtype=torch.long)],
                             num_classes=3, out_size=(16, 16), stride=4, regression=regression)
    assert targets.heatmap.shape == (2, 3, 16, 16) and targets.heatmap.max() == 1.0
    assert int(targets.heatmap.eq(1).sum()) == 3 and targets.weight.eq(1).sum() == 3
    assert (targets.weight > 0).sum() == (3 if regression == "centre" else (targets.heatmap.amax(1) > 0).sum())
    assert targets.heatmap[1].sum() == 0  # the empty image
    detections = decode_detections(targets.heatmap, targets.size, targets.offset, stride=4, max_detections=5)
    assert detections.shape == (2, 5, 6)
    found = detections[0][detections[0, :, 4] > 0]
    assert len(found) == 3 and torch.all(found[:, 4] == 1.0)
    order = torch.argsort(found[:, 0])
    expected = torch.cat([boxes, labels[:, None].float()], 1)[torch.argsort(boxes[:, 0])]
    assert torch.allclose(found[order][:, [0, 1, 2, 3, 5]], expected, atol=1e-5)
    assert torch.all(detections[1] == -1)  # nothing found: all padding


@pytest.mark.parametrize("regression", ["centre", "gaussian"])
def test_objects_masked_out_encode_as_if_they_were_left_out(regression):
    """Boxes that device augmentation drops come with ``keep`` instead of being selected."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        corners = torch.rand(6, 2, generator=generator) * 48
        sizes = 4 + torch.rand(6, 2, generator=generator) * 24
        boxes, labels = torch.cat([corners, corners + sizes], 1), torch.randint(0, 3, (6,), generator=generator)
        keep = torch.rand(6, generator=generator) > 0.4
        masked = encode_targets([boxes], [labels], 3, (16, 16), 4, regression=regression, keep=[keep])
        selected = encode_targets([boxes[keep]], [labels[keep]], 3, (16, 16), 4, regression=regression)
        for name, value in selected._asdict().items():
            assert torch.equal(getattr(masked, name), value), name


def test_gaussian_radius_is_centernets():
    # By hand for h=20, w=30, overlap 0.7, the third case decides:
    # a = 2.8, b = -70, c = -180 -> (b + sqrt(b^2 - 4ac)) / 2 = (-70 + sqrt(6916)) / 2 = 6.5811
    radius = gaussian_radius(torch.tensor([20.0, 2.0]), torch.tensor([30.0, 2.0]), 0.7)
    assert radius[0].item() == pytest.approx((-70 + 6916**0.5) / 2, rel=1e-5)
    assert 0 < radius[1].item() < radius[0].item()  # smaller boxes, smaller Gaussians


def test_focal_loss_is_small_for_a_perfect_heatmap_and_loss_is_tied_to_the_graph():
    target = encode_targets([torch.tensor([[8.0, 8.0, 24.0, 24.0]])], [torch.tensor([1])], 2, (8, 8), 4).heatmap
    perfect = torch.logit(target.clamp(1e-6, 1 - 1e-6))
    assert heatmap_focal_loss(perfect, target) < 0.01  # negatives near a centre still cost a little
    assert heatmap_focal_loss(torch.zeros_like(target), target) > 0.5
    net = CenterNet(2, channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), fpn_channels=8, head_channels=8)
    out = net(torch.rand(1, 3, 64, 64))
    empty = encode_targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 2, out.heatmap.shape[-2:], 4)
    losses = centernet_loss(out, empty, {"heatmap": 1.0, "size": 0.1, "offset": 1.0})
    losses["loss"].backward()  # an image without objects still trains the heatmap
    assert torch.isfinite(losses["loss"]) and net.heatmap[-1].weight.grad is not None


# --- COCO results -------------------------------------------------------------------------


def ground_truth(size: int = 64) -> tuple[dict, list[torch.Tensor]]:
    """Two images, three objects, one empty image; rows are the perfect detections."""
    images = [{"id": i, "file_name": f"{i}.png", "width": size, "height": size} for i in (1, 2, 3)]
    categories = [{"id": 7, "name": "circle"}, {"id": 9, "name": "square"}]
    boxes = {1: [([4.0, 6.0, 20.0, 10.0], 7), ([30.0, 30.0, 12.0, 16.0], 9)], 2: [([10.0, 10.0, 40.0, 30.0], 9)]}
    annotations, rows = [], []
    for image_id in (1, 2, 3):
        image_rows = []
        for bbox, category in boxes.get(image_id, []):
            x, y, w, h = bbox
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": bbox, "area": w * h, "iscrowd": 0})
            image_rows.append([x, y, x + w, y + h, 0.9, [7, 9].index(category)])
        rows.append(torch.tensor(image_rows + [[-1.0] * 6] * 2).reshape(-1, 6))
    return {"images": images, "annotations": annotations, "categories": categories}, rows


def test_perfect_detections_through_our_results_path_give_ap_one():
    gt, rows = ground_truth()
    results = [r for i, image_rows in enumerate(rows, start=1)
               for r in detections_to_results(image_rows, i, [7, 9], 64, 64)]
    assert len(results) == 3  # padding rows dropped, the empty image gives none
    assert results[0] == {"image_id": 1, "category_id": 7, "bbox": [4.0, 6.0, 20.0, 10.0], "score": 0.9}
    stats = evaluate_coco(gt, results, "bbox").stats
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


def test_results_round_trip_through_a_file_changes_nothing(tmp_path):
    from test_coco_eval import random_dataset

    gt, results = random_dataset(seed=5)
    path = write_results(tmp_path / "results.json", results)
    again = read_results(path)
    assert again == json.loads(json.dumps(results))
    for kind, res, res_again in (("bbox", results_without_masks(results), results_without_masks(again)),
                                 ("segm", results, again)):
        direct, from_file = evaluate_coco(gt, res, kind), evaluate_coco(gt, str(path), kind)
        assert direct.stats == evaluate_coco(gt, res_again, kind).stats
        if kind == "segm":
            assert direct.stats == from_file.stats


def test_mask_columns_are_pasted_into_the_image_and_encoded():
    # A box over the middle with an all-ones 28x28 mask pastes to (about) the box itself.
    row = torch.cat([torch.tensor([16.0, 16.0, 48.0, 48.0, 0.8, 0.0]), torch.ones(28 * 28)])[None]
    [result] = detections_to_results(row, 1, [3], 64, 64, with_masks=True)
    from pycocotools import mask as mask_utils

    mask = mask_utils.decode(result["segmentation"])
    assert mask[17:47, 17:47].all() and mask.sum() - mask[15:49, 15:49].sum() == 0  # edges may move 1 px
    assert result["category_id"] == 3 and result["bbox"] == [16.0, 16.0, 32.0, 32.0]


# --- data ---------------------------------------------------------------------------------


def write_coco(folder, annotations, size=32):
    """A one-image COCO split (train and val) with the given annotations."""
    from visionflow.data.images import write_png

    write_png(folder / "images/0.png", np.zeros((size, size, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "images/0.png", "width": size, "height": size}],
            "annotations": annotations, "categories": [{"id": 1, "name": "circle"}]}
    for split in ("train", "val", "test"):
        (folder / f"{split}.json").write_text(json.dumps(data))


@pytest.mark.parametrize("bbox, category, message", [
    ([2, 2, -3, 4], 1, "annotation id 41: field 'bbox' has negative width"),
    ([20, 20, 30, 30], 1, "annotation id 41: field 'bbox' [20, 20, 30, 30] lies outside its 32x32 image"),
    ([2, 2, 3, 4], 5, "annotation id 41: field 'category_id' refers to unknown category 5"),
])
def test_malformed_annotations_name_the_annotation(tmp_path, bbox, category, message):
    from visionflow.tasks.boxes.data import DetectionData

    write_coco(tmp_path, [{"id": 41, "image_id": 1, "category_id": category, "bbox": bbox, "area": 12,
                           "iscrowd": 0}])
    with pytest.raises(CocoFormatError) as caught:
        DetectionData(tmp_path, batch_size=1)
    assert message in str(caught.value) and "train.json" in str(caught.value)


def test_boxes_leaving_the_image_are_clipped_or_dropped_with_their_masks(tmp_path):
    from visionflow.tasks.boxes.params import BoxAugmentParams
    from visionflow.tasks.boxes.data import CocoDetectionDataset, build_box_transforms, load_split

    masks = np.zeros((3, 32, 32), bool)
    masks[0, 4:12, 4:12] = True  # stays inside after the shift
    masks[1, 4:12, 20:30] = True  # 10 wide, 4 columns stay inside: clipped (40% visible)
    masks[2, 20:28, 26:30] = True  # leaves the image: dropped
    annotations = [{"id": k + 1, "image_id": 1, "category_id": 1,
                    "bbox": [float(v) for v in mask_boxes(torch.from_numpy(m[None]))[0, :2].tolist()] + [
                        float(np.any(m, 0).sum()), float(np.any(m, 1).sum())],
                    "area": int(m.sum()), "iscrowd": 0, "segmentation": encode_mask(m)}
                   for k, m in enumerate(masks)]
    write_coco(tmp_path, annotations)
    augment = BoxAugmentParams.model_validate({
        "transforms": [{"name": "Affine", "kwargs": {"translate_px": {"x": 6, "y": 0}}}],
        "boxes": {"clip": True, "min_visibility": 0.3, "min_area": 4, "min_side": 2.0}})
    transform = build_box_transforms(augment, "detection.augment", seed=0)
    dataset = CocoDetectionDataset(load_split(tmp_path, "train"), transform, with_masks=True)
    out = dataset.transformed(0)
    assert out["bboxes"].tolist() == [[10.0, 4.0, 8.0, 8.0], [26.0, 4.0, 6.0, 8.0]]  # clipped at x = 32
    assert out["masks"].shape == (2, 32, 32)  # the dropped box took its mask along
    assert out["masks"][1, 4:12, 26:32].all() and out["masks"][1].sum() == 6 * 8
    image, target = dataset[0]
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 4.0, 18.0, 12.0], [26.0, 4.0, 32.0, 12.0]]))


def test_bad_box_rule_names_the_key():
    from conftest import tiny_params_dict

    from visionflow.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="detection.augment.boxes.min_visibility: must be <= 1"):
        parse_params(tiny_params_dict(detection={"augment": {"boxes": {"min_visibility": 2}}}))
    with pytest.raises(ConfigError, match="detection.model.name: input should be 'centernet' or 'retinanet'"):
        parse_params(tiny_params_dict(detection={"model": {"name": "yolo"}}))


def test_box_only_datasets_preview_without_mask_checks_and_masks_are_required_for_instances(tmp_path):
    from conftest import tiny_params_dict

    from visionflow.config import parse_params
    from visionflow.tasks import get_task
    from visionflow.tasks.boxes.data import CocoDetectionDataset, load_split

    write_coco(tmp_path, [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 12], "area": 120}])
    params = parse_params(tiny_params_dict()).detection
    check = get_task("detection").augment_preview(params, tmp_path, tmp_path / "preview.png")
    assert check["masks_checked"] is False and check["boxes_before"] == 1
    assert (tmp_path / "preview.png").is_file()
    with pytest.raises(CocoFormatError, match="annotation id 5: missing field 'segmentation'"):
        CocoDetectionDataset(load_split(tmp_path, "train"), with_masks=True)[0]


def test_class_cross_entropy_counts_only_where_objects_are():
    from visionflow.models.centernet import CenterNetOutput

    targets = encode_targets([torch.tensor([[8.0, 8.0, 24.0, 24.0]])], [torch.tensor([1])], 2, (8, 8), 4,
                             regression="gaussian")
    assert set(targets.classes.unique().tolist()) == {-1, 1}
    assert torch.equal(targets.classes >= 0, targets.weight > 0)
    zeros = torch.zeros(1, 2, 8, 8)

    def class_loss(favoured: int) -> float:
        heatmap = torch.zeros(1, 2, 8, 8)
        heatmap[:, favoured] = 10.0  # everywhere: cells without objects must not count
        out = CenterNetOutput(heatmap, zeros, zeros)
        return float(centernet_loss(out, targets, {"heatmap": 0, "size": 0, "offset": 0,
                                                   "classification": 1.0})["class"])

    # log(1 + e^-10) ~ 4.5e-5 when right; ~10 when wrong
    assert class_loss(1) == pytest.approx(4.54e-5, rel=0.01) and class_loss(0) == pytest.approx(10.0, rel=1e-3)
