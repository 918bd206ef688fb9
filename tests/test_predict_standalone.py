"""A checkpoint is all ``visionflow predict`` needs (issue 28, finding 5).

Each family trains one tiny epoch in a throwaway project; only ``best.ckpt`` is copied into
an empty folder, where ``visionflow predict`` runs as a user would: no params file, no
dataset. Two inputs share a file stem (``a/x.png``, ``b/x.png``) and must not overwrite each
other's outputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, tiny_params_dict
from visionflow.config import parse_params
from visionflow.paths import TaskPaths
from visionflow.stages import synthesize, train

# Outputs per input (or per stereo pair) and per call, by family.
PER_INPUT = {"segmentation": 2, "detection": 1, "instance_segmentation": 1, "pose": 2, "stereo": 2, "selfsup": 0}
PER_CALL = {"segmentation": 0, "detection": 2, "instance_segmentation": 2, "pose": 0, "stereo": 0, "selfsup": 1}


def train_tiny(task: str, project: Path) -> Path:
    """Synthesize and train ``task`` for one tiny epoch; the best checkpoint."""
    params = parse_params(tiny_params_dict(tasks=[task]))
    synthesize.run(params, task, project, progress=False)
    train.run(params, task, project)
    return TaskPaths(task, project).best_checkpoint


def same_stem_inputs(task: str, project: Path, folder: Path) -> list[Path]:
    """Two different inputs with one file stem: ``a/x.png``, ``b/x.png`` (stereo: two pairs,
    ``a/im0.png a/im1.png b/im0.png b/im1.png``, as Middlebury names them)."""
    synthetic = TaskPaths(task, project).synthetic
    if task == "stereo":
        scenes = sorted(p for p in synthetic.glob("*/*") if (p / "im0.png").is_file())[:2]
        sources = [(scene / name, f"{sub}/{name}") for scene, sub in zip(scenes, "ab")
                   for name in ("im0.png", "im1.png")]
    else:
        images = sorted(p for p in synthetic.rglob("*.png"))[:2]
        sources = [(images[0], "a/x.png"), (images[1], "b/x.png")]
    inputs = []
    for source, name in sources:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / name)
        inputs.append(Path(name))
    return inputs


def predict_in_empty_folder(task: str, checkpoint: Path, inputs_from: Path, folder: Path,
                            env: dict[str, str]) -> dict:
    folder.mkdir()
    shutil.copy(checkpoint, folder / "best.ckpt")
    inputs = same_stem_inputs(task, inputs_from, folder)
    result = subprocess.run([str(BIN / "visionflow"), "predict", "--task", task, "--model", "best.ckpt",
                             *map(str, inputs)], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    written = [folder / p for p in json.loads(result.stdout)["written"]]
    per_input = len(inputs) // 2 if task == "stereo" else len(inputs)
    assert len(written) == PER_INPUT[task] * per_input + PER_CALL[task], written
    assert len(set(written)) == len(written), "two inputs wrote the same file"
    assert all(p.is_file() and p.stat().st_size for p in written), written
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == sorted(p.name for p in written)
    return {"written": written, "stderr": result.stderr}


def test_segmentation_predicts_from_the_checkpoint_alone(tmp_path, project_env):
    checkpoint = train_tiny("segmentation", tmp_path / "project")
    out = predict_in_empty_folder("segmentation", checkpoint, tmp_path / "project", tmp_path / "empty",
                                  project_env)
    assert {p.name for p in out["written"]} == {"a__x_labels.png", "a__x_overlay.png", "b__x_labels.png",
                                                "b__x_overlay.png"}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "instance_segmentation", "pose", "stereo", "selfsup"])
def test_every_family_predicts_from_the_checkpoint_alone(task, tmp_path, project_env):
    checkpoint = train_tiny(task, tmp_path / "project")
    out = predict_in_empty_folder(task, checkpoint, tmp_path / "project", tmp_path / "empty", project_env)
    if task == "selfsup":
        rows = (out["written"][0]).read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["a/x.png", "b/x.png"]
    if task in ("detection", "instance_segmentation"):
        images = json.loads((tmp_path / "empty/predictions/images.json").read_text())
        assert [image["file_name"] for image in images] == ["a/x.png", "b/x.png"]
