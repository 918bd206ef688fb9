"""``visionflow serve``: the real server on 127.0.0.1 answers what ``predict`` writes for the same image.

Each family's tiny model (built from the tiny params, untrained: the numbers need only agree)
is served on a free port in a thread; a PNG from its tiny synthetic data (a pair for stereo) is
posted as raw bytes and as base64 JSON; the answer is checked against ``family.predict``'s files.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from conftest import BIN
from visionflow.config import TrainerParams
from visionflow.data.disparity import read_pfm
from visionflow.data.images import read_rgb, write_png
from visionflow.paths import TaskPaths
from visionflow.serve import make_server
from visionflow.tasks import get_task, task_names

CPU = torch.device("cpu")


def tiny_model(task: str, tiny_params, folder: Path) -> tuple[torch.nn.Module, list[Path]]:
    """The family's exported tiny model (untrained) and its input: one image, or a left/right pair."""
    family, params = get_task(task), tiny_params.task(task)
    paths = TaskPaths(task, folder)
    family.synthesize(params, paths.synthetic, progress=False)
    datamodule = family.datamodule(params, paths.data_root(params.data.source), TrainerParams())
    model = family.inference_module(family.module(params, datamodule)).eval()
    if task == "stereo":
        scene = sorted(p for p in paths.synthetic.glob("*/*") if (p / "im0.png").is_file())[0]
        return model, [scene / "im0.png", scene / "im1.png"]
    return model, [sorted(paths.synthetic.rglob("*.png"))[0]]


@contextmanager
def running(family, model, options=None):
    server = make_server(family, model, CPU, "127.0.0.1", 0, options, "tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def serve_command(args: list[str], cwd: Path, env: dict):
    """``visionflow serve ARGS --port 0`` as a user starts it; yields the URL it says it listens on."""
    server = subprocess.Popen([str(BIN / "visionflow"), "serve", *args, "--port", "0"], cwd=cwd, env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            found = re.search(r"on (http://127\.0\.0\.1:\d+)/invocations", line)
            if found:
                break
        else:
            pytest.fail("the server did not say where it listens")
        yield found.group(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def check_against_predict(task: str, answer: dict, model, inputs: list[Path], out: Path, options: dict) -> None:
    family = get_task(task)
    if task == "stereo":  # without the scene's calib.txt predict probes the range, as the server does
        out.mkdir(parents=True)
        for path in inputs:
            (out / path.name).write_bytes(path.read_bytes())
        inputs = [out / path.name for path in inputs]
    family.predict(model, inputs, out, CPU, **options)
    image = read_rgb(inputs[0])
    assert (answer["height"], answer["width"]) == image.shape[:2]
    if task == "segmentation":
        written = read_rgb(out / f"{inputs[0].stem}_labels.png")[..., 0]
        labels = np.full(written.shape, -1)
        for entry in answer["classes"]:
            labels[mask_utils.decode({**entry["rle"], "counts": entry["rle"]["counts"].encode()}) > 0] = entry["index"]
            assert entry["name"] == answer["class_names"][entry["index"]]
        np.testing.assert_array_equal(labels, written)
    elif task in ("detection", "instance_segmentation"):
        results = json.loads((out / "results.json").read_text())
        assert len(answer["detections"]) == len(results)
        for got, want in zip(answer["detections"], results):
            x1, y1, x2, y2 = got["box"]
            np.testing.assert_allclose([x1, y1, x2 - x1, y2 - y1], want["bbox"], atol=0.02)
            assert (got["score"], got["category_id"]) == (want["score"], want["category_id"])
            assert got["class_name"] == model.class_names[got["class_index"]]
            if task == "instance_segmentation":
                assert got["mask"] == want["segmentation"]
    elif task == "pose":
        results = json.loads((out / f"{inputs[0].stem}_keypoints.json").read_text())
        assert len(answer["instances"]) == len(results)
        for got, want in zip(answer["instances"], results):
            assert np.ravel(got["keypoints"]).tolist() == want["keypoints"]
            assert len(got["keypoints"]) == len(answer["keypoint_names"])
            x1, y1, x2, y2 = got["box"]
            np.testing.assert_allclose([x1, y1, x2 - x1, y2 - y1], want["bbox"], atol=0.002)
    elif task == "stereo":
        array = answer["disparity"]
        disparity = np.frombuffer(base64.b64decode(array["data"]), dtype="<f2").reshape(array["shape"])
        written = read_pfm(out / f"{inputs[0].stem}_disparity.pfm")
        assert array["dtype"] == "float16" and disparity.shape == written.shape
        np.testing.assert_allclose(disparity.astype(np.float32), written, rtol=1e-3, atol=1e-3)
        assert (array["min"], array["max"]) == pytest.approx((float(written.min()), float(written.max())))
    elif task == "selfsup":
        with open(out / "embeddings.csv") as f:
            row = list(csv.reader(f))[1]
        assert answer["dim"] == len(row) - 1
        np.testing.assert_allclose(answer["embedding"], [float(v) for v in row[1:]], rtol=1e-5, atol=1e-6)


def serve_and_check(task: str, model, inputs: list[Path], out: Path, options: dict | None = None) -> dict:
    """Post ``inputs`` as bytes (one image) and as JSON; both answers match predict's files."""
    family, options = get_task(task), options or {}
    with running(family, model, options) as url:
        with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        document = ({"left": b64(inputs[0]), "right": b64(inputs[1])} if task == "stereo"
                    else {"image": b64(inputs[0])})
        status, answer = post(url, json.dumps(document).encode(), "application/json")
        assert status == 200, answer
        if task != "stereo":
            status, raw = post(url, inputs[0].read_bytes(), "image/png")
            assert status == 200, raw
            assert raw == answer
    assert answer["task"] == task
    check_against_predict(task, answer, model, inputs, out, options)
    return answer


def test_segmentation_server_answers_what_predict_writes(tiny_params, tmp_path):
    model, inputs = tiny_model("segmentation", tiny_params, tmp_path)
    answer = serve_and_check("segmentation", model, inputs, tmp_path / "predict")
    assert sum(c["pixels"] for c in answer["classes"]) == answer["height"] * answer["width"]


@pytest.mark.slow
@pytest.mark.parametrize("task", [t for t in task_names() if t != "segmentation"])
def test_every_family_server_answers_what_predict_writes(task, tiny_params, tmp_path):
    model, inputs = tiny_model(task, tiny_params, tmp_path)
    serve_and_check(task, model, inputs, tmp_path / "predict", {"detector": None} if task == "pose" else None)


def test_bad_requests_get_one_line_400s(tiny_params, tmp_path):
    family = get_task("stereo")  # two named inputs: every check runs before the model, so any module will do
    png = tmp_path / "x.png"
    write_png(png, np.zeros((8, 8, 3), np.uint8))
    with running(family, torch.nn.Identity()) as url:
        cases = {
            "missing 'right'": (json.dumps({"left": b64(png)}).encode(), "application/json"),
            "not an image": (json.dumps({"left": b64(png), "right": base64.b64encode(b"hello").decode()}).encode(),
                             "application/json"),
            "not JSON": (b"{", "application/json"),
            "takes 2 images": (png.read_bytes(), "image/png"),
            "Content-Type": (b"abc", "text/plain"),
            "not base64": (json.dumps({"left": "%%%", "right": b64(png)}).encode(), "application/json"),
        }
        for expected, (body, content_type) in cases.items():
            status, answer = post(url, body, content_type)
            assert status == 400 and expected in answer["error"], (expected, answer)
            assert "Traceback" not in answer["error"] and "\n" not in answer["error"]
    with running(get_task("segmentation"), torch.nn.Identity()) as url:
        status, answer = post(url, b"GIF89a not a png", "image/png")
        assert status == 400 and answer["error"].startswith("body: not an image"), answer
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{url}/nowhere", timeout=30)


def test_serve_command_names_a_bad_task_or_option(project_env, tmp_path):
    for args, expected in ((["--task", "segmentaton"], "--task"),
                           (["--task", "detection", "--detector", "none"], "--detector")):
        result = subprocess.run([str(BIN / "visionflow"), "serve", *args, "--port", "0"], cwd=tmp_path,
                                env=project_env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and expected in result.stderr, result.stderr


@pytest.mark.slow
def test_serve_command_answers_for_a_trained_checkpoint(tmp_path, project_env):
    """``visionflow serve`` as a user starts it: a checkpoint alone, any free port, then a PNG."""
    from test_predict_standalone import train_tiny

    checkpoint = train_tiny("segmentation", tmp_path / "project")
    image = sorted((tmp_path / "project").rglob("*.png"))[0]
    with serve_command(["--task", "segmentation", "--model", str(checkpoint)], tmp_path, project_env) as url:
        status, answer = post(url, image.read_bytes(), "image/png")
        assert status == 200 and answer["task"] == "segmentation", answer
        assert sum(c["pixels"] for c in answer["classes"]) == answer["height"] * answer["width"]
