"""Pictures for people: mask overlays, image grids, confusion matrices, curves.

Everything returns or writes uint8 RGB images / PNG files; matplotlib is
imported only by the functions that draw charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from visionflow.data.images import write_png
from visionflow.constants import IGNORE_INDEX


def palette(num_classes: int) -> np.ndarray:
    """uint8 (num_classes, 3) distinct colours; class 0 (background) is black."""
    colours = [(0, 0, 0)]
    for i in range(1, num_classes):
        hue = int(180 * ((i * 0.618033988749895) % 1.0))
        hsv = np.uint8([[[hue, 220, 255]]])
        colours.append(tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
    return np.array(colours, np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray, colours: np.ndarray,
                   alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an image where labels are not background; outline regions.

    image: uint8 (H, W, 3); labels: int (H, W); ignored pixels are shown grey.
    """
    out = image.astype(np.float32)
    valid = (labels > 0) & (labels != IGNORE_INDEX)
    colour_map = colours[np.clip(labels, 0, len(colours) - 1)].astype(np.float32)
    out[valid] = (1 - alpha) * out[valid] + alpha * colour_map[valid]
    out[labels == IGNORE_INDEX] = 128
    edges = cv2.morphologyEx(labels.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges & valid] = colour_map[edges & valid]
    return out.clip(0, 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 1, gap: int = 2) -> np.ndarray:
    """Tile equally sized uint8 (H, W, 3) images into a grid with white gaps, optionally upscaled."""
    height = max(t.shape[0] for row in rows for t in row)
    width = max(t.shape[1] for row in rows for t in row)
    n_cols = max(len(row) for row in rows)
    canvas = np.full((len(rows) * (height + gap) - gap, n_cols * (width + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y: y + tile.shape[0], x: x + tile.shape[1]] = tile
    if scale != 1:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return canvas


def column_titles(titles: Sequence[str], tile_width: int, gap: int, height: int = 18) -> np.ndarray:
    """A white uint8 (height, W, 3) strip with each title centred over its column."""
    width = len(titles) * (tile_width + gap) - gap
    strip = np.full((height, width, 3), 255, np.uint8)
    for c, title in enumerate(titles):
        (text_width, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        x = c * (tile_width + gap) + max(0, (tile_width - text_width) // 2)
        cv2.putText(strip, title, (x, height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def save_grid(path: Path, rows: Sequence[Sequence[np.ndarray]], scale: int = 1,
              titles: Sequence[str] | None = None) -> None:
    """:func:`grid` as PNG, with ``titles`` (one per column) written above the columns."""
    image = grid(rows, scale=scale)
    if titles:
        n_cols = max(len(row) for row in rows)
        if len(titles) != n_cols:
            raise ValueError(f"{len(titles)} titles for {n_cols} columns")
        tile_width = max(t.shape[1] for row in rows for t in row) * scale
        strip = column_titles(titles, tile_width, gap=2 * scale)
        image = np.concatenate([strip[:, : image.shape[1]], image], axis=0)
    write_png(path, image)


def save_confusion_matrix(path: Path, confusion: np.ndarray, class_names: Sequence[str]) -> None:
    """Row-normalised confusion matrix (true class rows, predicted columns) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, np.float64)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted", ylabel="true",
           title="confusion (row-normalised)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_panels(columns: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(title, columns) per panel: the training loss terms together, each validation quantity alone.

    Columns are named ``train_<term>`` and ``val_<name>`` (Lightning's ``train/`` and ``val/``
    logs); AP, pixel errors and losses do not share a scale, so each ``val_`` gets its own axis.
    """
    training = [c for c in columns if not c.startswith("val_")]
    validation = [c for c in columns if c.startswith("val_")]
    return [("training loss terms", training)] * bool(training) + \
        [(f"validation {c.removeprefix('val_')}", [c]) for c in validation]


def save_curves(path: Path, rows: Sequence[dict[str, float]], x: str = "epoch") -> None:
    """:func:`curve_panels` of ``rows`` (one dict per epoch) against ``x``, in a grid of 4 columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = curve_panels([k for k in rows[0] if k != x] if rows else []) or [("no metrics", [])]
    columns = min(4, len(panels))
    grid_rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(3.6 * columns, 3.2 * grid_rows), squeeze=False)
    xs = [row[x] for row in rows]
    for ax, (title, names) in zip(axes.flat, panels):
        for name in names:
            ax.plot(xs, [row.get(name, np.nan) for row in rows], marker="o", markersize=3,
                    label=name.removeprefix("train_"))
        ax.set(xlabel=x, title=title)
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, colours: np.ndarray,
               scores: np.ndarray | None = None, thickness: int = 1) -> np.ndarray:
    """Rectangles (and scores) over a copy of an image.

    image: uint8 (H, W, 3); boxes: (K, 4) xyxy pixels; classes: (K,) int indices into
    ``colours`` (uint8 (C, 3)); scores: (K,) in [0, 1], printed at each box's corner.
    """
    out = np.ascontiguousarray(image).copy()
    for k, (box, cls) in enumerate(zip(np.asarray(boxes, np.float64), np.asarray(classes, int))):
        colour = tuple(int(c) for c in colours[cls % len(colours)])
        x1, y1 = int(round(box[0])), int(round(box[1]))
        x2, y2 = int(round(box[2])) - 1, int(round(box[3])) - 1  # x2, y2 are one past the box
        cv2.rectangle(out, (x1, y1), (max(x1, x2), max(y1, y2)), colour, thickness)
        if scores is not None:
            cv2.putText(out, f"{scores[k]:.2f}", (x1, max(y1 - 2, 7)), cv2.FONT_HERSHEY_PLAIN, 0.6,
                        colour, 1, cv2.LINE_AA)
    return out


def overlay_instances(image: np.ndarray, masks: np.ndarray, classes: np.ndarray, colours: np.ndarray,
                      alpha: float = 0.45) -> np.ndarray:
    """Blend each instance mask (bool (K, H, W)) in its class colour (``colours[classes[k]]``)."""
    out = image.astype(np.float32)
    for mask, cls in zip(np.asarray(masks, bool), np.asarray(classes, int)):
        colour = colours[cls % len(colours)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def save_pr_curves(path: Path, recall: np.ndarray, curves: dict[str, np.ndarray], title: str) -> None:
    """Precision-recall curves (name -> precision (R,), -1 where undefined) as one PNG chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, precision in curves.items():
        valid = precision >= 0
        ax.plot(recall[valid], precision[valid], label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, skeleton: Sequence[tuple[int, int]],
                   colour: tuple[int, int, int] = (0, 255, 0), min_score: float = 0.0,
                   flip_index: Sequence[int] | None = None, scale: int = 1,
                   visibility: bool = False) -> np.ndarray:
    """Skeleton overlay: limbs as lines, keypoints as dots, on a copy upscaled by ``scale``.

    image: uint8 (H, W, 3); keypoints: float (K, 3) x, y in image pixels and a score
    (drawn where > ``min_score``), or with ``visibility`` COCO's v (drawn where v > 0,
    hollow where v == 1: labelled but occluded); skeleton: 0-based index pairs. With ``flip_index``, a
    keypoint's left/right side is marked: the lower index of a mirror pair is drawn in
    ``colour``, its partner in the complementary colour, midline points in white.
    """
    out = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale != 1 \
        else image.copy()
    keypoints = np.asarray(keypoints, np.float64)
    shown = keypoints[:, 2] > min_score
    other = tuple(255 - c for c in colour)

    def point(k: int) -> tuple[int, int]:
        return (int(round((keypoints[k, 0] + 0.5) * scale - 0.5)),
                int(round((keypoints[k, 1] + 0.5) * scale - 0.5)))

    for a, b in skeleton:
        if shown[a] and shown[b]:
            cv2.line(out, point(a), point(b), colour, max(1, scale // 2), cv2.LINE_AA)
    radius = max(2, scale + 1)
    for k in np.flatnonzero(shown):
        dot = colour
        if flip_index is not None:
            partner = flip_index[k]
            dot = (255, 255, 255) if partner == k else colour if k < partner else other
        hollow = visibility and keypoints[k, 2] == 1
        cv2.circle(out, point(k), radius, dot, 1 if hollow else -1, cv2.LINE_AA)
    return out
