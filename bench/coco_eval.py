"""COCO evaluation speed: our evaluation (faster-coco-eval) vs plain pycocotools, same numbers.

    python bench/coco_eval.py [--images 5000] [--iou-type bbox|segm]

Builds a synthetic ground truth (0-8 objects per image, crowds, empty images)
and jittered detections with false positives, scores them with both backends
through ``visionflow.coco_eval.evaluate_coco``, and prints each one's time,
the speed-up and the largest difference between their numbers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from visionflow.coco_eval import evaluate_coco
from visionflow.data.coco import encode_mask


def synthetic_coco(n_images: int, iou_type: str, seed: int = 0) -> tuple[dict, list]:
    rng = np.random.default_rng(seed)
    size = 128
    images, annotations, results = [], [], []
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": size, "height": size})
        for _ in range(rng.integers(0, 9)):
            w, h = rng.uniform(4, 60, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 6)),
                   "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(rng.random() < 0.02)}
            det = {"image_id": image_id, "category_id": ann["category_id"], "score": float(rng.random()),
                   "bbox": [x + rng.normal(0, 3), y + rng.normal(0, 3), w, h]}
            if iou_type == "segm":
                mask = np.zeros((size, size), bool)
                mask[int(y):int(y + h), int(x):int(x + w)] = True
                ann["segmentation"] = encode_mask(mask)
                det["segmentation"] = encode_mask(np.roll(mask, (2, 1), (0, 1)))
            annotations.append(ann)
            if rng.random() < 0.9:
                results.append(det)
        for _ in range(rng.integers(0, 3)):
            fp = {"image_id": image_id, "category_id": int(rng.integers(1, 6)), "score": float(rng.random() * 0.5),
                  "bbox": [float(rng.uniform(0, 100)), float(rng.uniform(0, 100)), 20.0, 20.0]}
            if iou_type == "segm":
                mask = np.zeros((size, size), bool)
                x, y = int(fp["bbox"][0]), int(fp["bbox"][1])
                mask[y:y + 20, x:x + 20] = True
                fp["segmentation"] = encode_mask(mask)
            results.append(fp)
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 6)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    args = parser.parse_args()
    gt, results = synthetic_coco(args.images, args.iou_type)
    print(f"{args.images} images, {len(gt['annotations'])} objects, {len(results)} detections, "
          f"iou_type {args.iou_type}")
    timings, stats = {}, {}
    for backend in ("pycocotools", "faster"):
        started = time.perf_counter()
        stats[backend] = evaluate_coco(gt, results, args.iou_type, backend=backend).stats
        timings[backend] = time.perf_counter() - started
        print(f"{backend:<12} {timings[backend]:7.2f} s   AP {stats[backend]['AP']:.4f}  "
              f"AP50 {stats[backend]['AP50']:.4f}")
    largest = max(abs(stats["faster"][k] - stats["pycocotools"][k]) for k in stats["faster"])
    print(f"speed-up {timings['pycocotools'] / timings['faster']:.1f}x; largest difference "
          f"between the two backends' numbers: {largest:.2e}")


if __name__ == "__main__":
    main()
