"""The cross-family report: headline rows, the terminal table and the self-contained page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionflow.report import Headline, HeadlineRow, headline_rows, lookup, render_html, summary_table

TOY = (Headline("score", "score", target=0.5, baseline="baseline.score", baseline_label="chance"),
       Headline("error_px", "error", target=2.0, higher_is_better=False),
       Headline("absent", "not measured"))


def _project(root: Path) -> Path:
    (root / "metrics").mkdir(parents=True)
    (root / "metrics/toy.json").write_text(json.dumps({"score": 0.625, "error_px": 2.5, "baseline": {"score": 0.25}}))
    (root / "models/toy").mkdir(parents=True)
    (root / "models/toy/train.json").write_text(json.dumps(
        {"epochs": 3, "global_steps": 30, "seconds": 12.0, "mlflow_run_id": "run42",
         "runtime": {"device_type": "cpu"}}))
    (root / "models/toy/registered.json").write_text(json.dumps(
        {"model_name": "visionflow-toy", "version": "2", "champion_version": "1", "metric_name": "score",
         "metric": 0.625, "provenance": {"commit": "abc123", "data:data/synthetic/toy.json": "aa11"}}))
    (root / "reports/toy/eval").mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (300, 2000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "reports/toy/eval/overlays.png")
    return root


def test_rows_compare_with_target_and_baseline(tmp_path):
    rows = headline_rows("toy", TOY, _project(tmp_path))
    assert [(r.value, r.baseline_value, r.met) for r in rows] == [(0.625, 0.25, True), (2.5, None, False),
                                                                   (None, None, None)]
    assert lookup({"a": {"b": True}}, "a.b") is None  # a flag is not a number
    assert lookup({"PCK@0.1": 0.5, "x": {"y": {"z": 2}}}, "PCK@0.1") == 0.5
    assert lookup({"x": {"y": {"z": 2}}}, "x.y.z") == 2.0


def test_summary_table_has_one_row_per_number(tmp_path):
    text = summary_table(headline_rows("toy", TOY, _project(tmp_path)))
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].split() == ["family", "metric", "value", "target", "baseline"]
    assert "0.625" in lines[1] and ">= 0.5" in lines[1] and "met" in lines[1] and "0.25 (chance)" in lines[1]
    assert "<= 2" in lines[2] and "MISSED" in lines[2]


def test_page_is_self_contained(tmp_path):
    root = _project(tmp_path)
    page = render_html({"toy": headline_rows("toy", TOY, root)}, root)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("data:image/") == 1  # the overlay, downscaled and inlined; no curves file here
    assert "0.625" in page and "MISSED" in page and "abc123" in page and "run42" in page
    assert "0.25 (chance)" in page.split('<section id="toy">')[0]  # the overview shows baselines too
    assert len(page) < 1_500_000  # a 2000 px wide overlay is downscaled


@pytest.mark.slow
def test_page_renders_in_a_real_browser(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt install chromium)")
    root = _project(tmp_path)
    page = root / "index.html"
    page.write_text(render_html({"toy": headline_rows("toy", TOY, root)}, root))
    dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "0.625" in dom and "MISSED" in dom and "visionflow-toy v2" in dom
