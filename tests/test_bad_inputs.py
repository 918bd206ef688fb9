"""Every bad input of issue 28 through the real CLI: one clear line, nothing written.

Each row builds one bad input in a tiny project, runs ``visionflow`` as a subprocess and
checks what a user sees: exit code 1 (a bad file) or 2 (bad params), exactly one line on
stderr that names the file and the key or member at fault, no traceback, and the output
folders and ``dvc.lock`` byte-identical to before. ``run_case`` holds the whole check so
further tables (models, checkpoints, data formats) reuse it: append a list of ``Case`` and
a test parametrised over it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, tree_hashes
from test_acquire import tar_bytes, zip_bytes

OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "reports", "predictions")

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cf"
    "c000000301010018dd8db00000000049454e44ae426082")
COCO = {"images": [{"id": 1, "file_name": "images/a.png", "width": 1, "height": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}]}


@dataclass(frozen=True)
class Case:
    """One bad input: ``build(project)`` writes it and returns the CLI arguments; the
    stderr line must contain every string of ``names`` (the file, key or member at fault)."""

    id: str
    build: Callable[[Path], list[str]]
    names: tuple[str, ...]
    exit_code: int = 1


def snapshot(project: Path) -> dict[str, dict[str, str]]:
    """Hashes of the output folders and dvc.lock, to show a failed command wrote nothing."""
    state = {}
    for name in (*OUTPUT_FOLDERS, "dvc.lock"):
        path = project / name
        if path.is_dir():
            state[name] = tree_hashes(path)
        elif path.is_file():
            state[name] = {name: hashlib.sha256(path.read_bytes()).hexdigest()}
        else:
            state[name] = {}
    return state


def assert_one_clear_line(result: subprocess.CompletedProcess, names: tuple[str, ...], exit_code: int,
                          before: dict[str, dict[str, str]], project: Path) -> None:
    """The user-facing contract for a bad input (see the module docstring)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("visionflow: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert snapshot(project) == before, "a failed command changed an output folder or dvc.lock"


def run_case(case: Case, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = case.build(project)
    before = snapshot(project)
    result = subprocess.run([str(BIN / "visionflow"), *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=120)
    assert_one_clear_line(result, case.names, case.exit_code, before, project)
    return result


@pytest.fixture
def bad_project(tiny_project: Path) -> Path:
    """The tiny project with a committed-looking dvc.lock and a previously acquired dataset."""
    (tiny_project / "dvc.lock").write_bytes((REPO / "dvc.lock").read_bytes())
    previous = tiny_project / "data" / "raw" / "shapes"
    (previous / "images").mkdir(parents=True)
    (previous / "train.json").write_text(json.dumps(COCO))
    (previous / "images" / "a.png").write_bytes(PNG_1x1)
    (tiny_project / "data" / "raw" / "manifest.json").write_text(
        json.dumps({"shapes": {"format": "coco", "images": 1, "annotations": 0}}) + "\n")
    return tiny_project


# --- builders -----------------------------------------------------------------------------


def edit_params(project: Path, edit: Callable[[str], str]) -> None:
    path = project / "params.yaml"
    path.write_text(edit(path.read_text()))


def set_key(dotted: str, value_yaml: str) -> Callable[[Path], list[str]]:
    """Set a params key to a raw YAML scalar (``.inf``, ``true``) as a user would type it."""

    def build(project: Path) -> list[str]:
        params = yaml.safe_load((project / "params.yaml").read_text())
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = "__VALUE__"
        (project / "params.yaml").write_text(
            yaml.safe_dump(params, sort_keys=False).replace(": __VALUE__\n", f": {value_yaml}\n"))
        return ["synthesize", "--task", "segmentation"]

    return build


def duplicate_key(project: Path) -> list[str]:
    # A second `epochs:` under segmentation.train: YAML says last wins, DVC calls the file corrupt.
    text = (project / "params.yaml").read_text()
    head, tail = text.split("\nsegmentation:\n", 1)
    section, rest = tail.split("\n  train:\n", 1)
    (project / "params.yaml").write_text(
        f"{head}\nsegmentation:\n{section}\n  train:\n    epochs: 3\n{rest}")
    return ["synthesize", "--task", "segmentation"]


def acquire_from(archive_name: str, data: bytes) -> Callable[[Path], list[str]]:
    """Declare dataset ``shapes`` from a local archive (it replaces the previous good copy)."""

    def build(project: Path) -> list[str]:
        (project / "downloads").mkdir(exist_ok=True)
        (project / "downloads" / archive_name).write_bytes(data)
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["acquire"]["datasets"] = {"shapes": {"path": f"downloads/{archive_name}", "format": "coco"}}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return ["acquire", "--no-progress"]

    return build


def tgz(members: dict[str, bytes]) -> bytes:
    return tar_bytes(members, top="")


# Big enough that cutting it in half loses whole blocks, not just the trailer.
NOISE = bytes(range(256)) * 400
GOOD_MEMBERS = {"train.json": json.dumps(COCO).encode(), "images/a.png": PNG_1x1, "images/noise.bin": NOISE}
TRUNCATED_TGZ = tgz(GOOD_MEMBERS)[: len(tgz(GOOD_MEMBERS)) // 2]
TRUNCATED_ZIP = zip_bytes(GOOD_MEMBERS)[: len(zip_bytes(GOOD_MEMBERS)) // 2]
MISSING_IMAGE = tgz({"train.json": json.dumps(COCO).encode()})


# --- finding 3 (acquire) and finding 7 (params) -------------------------------------------

CASES = [
    Case("params-lr-inf", set_key("segmentation.train.lr", ".inf"),
         ("params.yaml", "segmentation.train.lr", "finite"), exit_code=2),
    Case("params-lr-nan", set_key("segmentation.train.lr", ".nan"),
         ("params.yaml", "segmentation.train.lr", "finite"), exit_code=2),
    Case("params-epochs-bool", set_key("segmentation.train.epochs", "true"),
         ("params.yaml", "segmentation.train.epochs"), exit_code=2),
    Case("params-unknown-key", set_key("segmentation.train.lrr", "0.1"),
         ("params.yaml", "segmentation.train", "lrr"), exit_code=2),
    Case("params-duplicate-key", duplicate_key, ("params.yaml", "epochs", "duplicate", "line"), exit_code=2),
    Case("acquire-truncated-tgz", acquire_from("shapes.tgz", TRUNCATED_TGZ),
         ("dataset shapes", "downloads/shapes.tgz")),
    Case("acquire-truncated-zip", acquire_from("shapes.zip", TRUNCATED_ZIP),
         ("dataset shapes", "downloads/shapes.zip")),
    Case("acquire-missing-image", acquire_from("shapes.tgz", MISSING_IMAGE),
         ("dataset shapes", "downloads/shapes.tgz", "train.json", "images/a.png")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_clear_line(case: Case, bad_project: Path, project_env: dict[str, str]):
    run_case(case, bad_project, project_env)


# --- findings 5 to 7 (models, COCO and stereo data, coco-eval) ------------------------------


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def coco_eval(gt: dict, results) -> Callable[[Path], list[str]]:
    def build(project: Path) -> list[str]:
        write_json(project / "eval" / "gt.json", gt)
        write_json(project / "eval" / "results.json", results)  # NaN is written as the bare token
        return ["coco-eval", "eval/gt.json", "eval/results.json"]

    return build


def train_segmentation_on(train: dict, val: dict) -> Callable[[Path], list[str]]:
    """Train segmentation on the acquired ``shapes`` dataset, its train.json and val.json replaced."""

    def build(project: Path) -> list[str]:
        write_json(project / "data/raw/shapes/train.json", train)
        write_json(project / "data/raw/shapes/val.json", val)
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["segmentation"]["data"]["source"] = "shapes"
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return ["train", "--task", "segmentation"]

    return build


def with_annotation(**fields) -> dict:
    annotation = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}
    return {**COCO, "annotations": [{**annotation, **fields}]}


def train_stereo_on_kitti(second_disparity_bits: int = 16, all_invalid: bool = False
                          ) -> Callable[[Path], list[str]]:
    """Train stereo on an acquired KITTI-layout dataset of two pairs per split; the second
    training pair's disparity PNG is ``second_disparity_bits`` deep; ``all_invalid``: every
    disparity is 0 (KITTI's "no value")."""

    def build(project: Path) -> list[str]:
        import cv2
        import numpy as np

        rng = np.random.default_rng(0)
        for split in ("train", "val"):
            for index in range(2):
                name = f"{index:06d}_10.png"
                for view in ("image_2", "image_3"):
                    (project / f"data/raw/kitti/{split}/{view}").mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(project / f"data/raw/kitti/{split}/{view}/{name}"),
                                rng.integers(0, 255, (40, 64, 3), dtype=np.uint8))
                disparity = np.full((40, 64), 0 if all_invalid else 4 * 256, np.uint16)
                if split == "train" and index == 1 and second_disparity_bits == 8:
                    disparity = np.full((40, 64), 4, np.uint8)
                (project / f"data/raw/kitti/{split}/disp_occ_0").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(project / f"data/raw/kitti/{split}/disp_occ_0/{name}"), disparity)
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["tasks"] = ["stereo"]
        params["stereo"]["data"]["source"] = "kitti"
        params["stereo"]["train"]["batch_size"] = 1
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return ["train", "--task", "stereo"]

    return build


def predict_with(checkpoint: Callable[[Path], None], task: str = "detection") -> Callable[[Path], list[str]]:
    def build(project: Path) -> list[str]:
        from visionflow.data.images import write_png
        import numpy as np

        checkpoint(project / "model.ckpt")
        write_png(project / "x.png", np.zeros((64, 64, 3), np.uint8))
        return ["predict", "--task", task, "--model", "model.ckpt", "x.png"]

    return build


def segmentation_checkpoint(path: Path) -> None:
    from test_checkpoints import _module_checkpoint

    _module_checkpoint("segmentation", path)


def truncated_checkpoint(path: Path) -> None:
    from test_checkpoints import _module_checkpoint

    data = _module_checkpoint("detection", path).read_bytes()
    path.write_bytes(data[: len(data) // 2])


RESULT = {"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 1, 1]}
GT = {**COCO, "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1,
                               "iscrowd": 0}]}
OTHER_CATEGORIES = {**COCO, "categories": [{"id": 1, "name": "other"}]}

DATA_CASES = [
    Case("coco-eval-result-not-object", coco_eval(GT, [RESULT, 3]), ("eval/results.json", "result 1", "object")),
    Case("coco-eval-bbox-3-numbers", coco_eval(GT, [{**RESULT, "bbox": [0, 0, 1]}]),
         ("eval/results.json", "result 0", "'bbox'")),
    Case("coco-eval-bbox-nan", coco_eval(GT, [{**RESULT, "bbox": [float("nan"), 0, 1, 1]}]),
         ("eval/results.json", "result 0", "'bbox'", "finite")),
    Case("coco-eval-gt-without-categories", coco_eval({k: v for k, v in GT.items() if k != "categories"},
                                                      [RESULT]), ("eval/gt.json", "'categories'")),
    Case("train-corrupt-rle-counts",
         train_segmentation_on(with_annotation(segmentation={"size": [1, 1], "counts": "zz"}), COCO),
         ("data/raw/shapes/train.json", "annotation id 7", "counts")),
    Case("train-val-categories-differ", train_segmentation_on(COCO, OTHER_CATEGORIES),
         ("data/raw/shapes/val.json", "data/raw/shapes/train.json", "categories")),
    Case("train-category-not-object", train_segmentation_on({**COCO, "categories": ["thing"]}, COCO),
         ("data/raw/shapes/train.json", "category", "object")),
    Case("train-stereo-8-bit-kitti-second-pair", train_stereo_on_kitti(second_disparity_bits=8),
         ("data/raw/kitti/train/disp_occ_0/000001_10.png", "16-bit")),
    Case("train-stereo-no-valid-disparity", train_stereo_on_kitti(all_invalid=True),
         ("data/raw/kitti/", "disp_occ_0", "no valid disparity")),
    Case("predict-other-family-checkpoint", predict_with(segmentation_checkpoint),
         ("model.ckpt", "segmentation checkpoint, not detection")),
    Case("predict-truncated-checkpoint", predict_with(truncated_checkpoint), ("model.ckpt", "not a readable")),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[case.id for case in DATA_CASES])
def test_bad_model_or_data_gives_one_clear_line(case: Case, bad_project: Path, project_env: dict[str, str]):
    run_case(case, bad_project, project_env)
