"""Training curves: loss terms together, every validation quantity on its own axis."""

from __future__ import annotations

from visionflow.viz import curve_panels, save_curves


def test_training_terms_share_a_panel_and_validation_quantities_do_not():
    columns = ["train_distribution", "train_loss", "val_bad1", "val_epe", "val_loss"]
    assert curve_panels(columns) == [
        ("training loss terms", ["train_distribution", "train_loss"]),
        ("validation bad1", ["val_bad1"]), ("validation epe", ["val_epe"]), ("validation loss", ["val_loss"])]


def test_a_metric_without_loss_in_its_name_is_not_validation_unless_it_is():
    # train_class is a training loss term (detection), val_AP a validation metric.
    panels = dict(curve_panels(["train_class", "val_AP"]))
    assert panels == {"training loss terms": ["train_class"], "validation AP": ["val_AP"]}


def test_curves_png_is_written(tmp_path):
    rows = [{"epoch": 1, "train_loss": 2.0, "val_AP": 0.1}, {"epoch": 2, "train_loss": 1.0, "val_AP": 0.3}]
    save_curves(tmp_path / "curves.png", rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_titles_sit_above_their_columns(tmp_path):
    import cv2
    import numpy as np

    from visionflow.viz import save_grid

    black = np.zeros((40, 60, 3), np.uint8)
    save_grid(tmp_path / "g.png", [[black, black]], scale=2, titles=["image", "prediction"])
    picture = cv2.imread(str(tmp_path / "g.png"))
    assert picture.shape == (18 + 80, 2 * 120 + 4, 3)
    strip = picture[:18]
    for left, right in ((0, 120), (124, 244)):  # dark text pixels inside each column's span
        assert (strip[:, left:right] < 128).any()
