"""A teammate's fresh clone gets the pipeline's outputs from a DVC remote, with nothing recomputed.

The remote is a local folder: `dvc push` / `dvc pull` go through the same DVC code path as
for S3, GCS or SSH; only the filesystem behind the remote URL differs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO

UP_TO_DATE = "Data and pipelines are up to date"


def run(cwd: Path, env: dict, *command: str) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def dvc(cwd: Path, env: dict, *args: str) -> str:
    return run(cwd, env, str(BIN / "dvc"), *args)


def push_and_commit(project: Path, env: dict) -> None:
    """What the teammate who ran the pipeline does: push the cached outputs to the remote, then
    commit what git holds (dvc.lock, .dvc/config with the remote, the cache: false outputs)."""
    dvc(project, env, "push")
    run(project, env, "git", "add", "-A")
    run(project, env, "git", "commit", "-q", "-m", "pipeline results")


def clone_and_pull(project: Path, env: dict, clone: Path) -> tuple[Path, float]:
    """What a newcomer does: clone (no DVC cache, no outputs), then `dvc pull`; the clone and the
    seconds `dvc pull` took."""
    run(project.parent, env, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / ".dvc" / "cache").exists()
    start = time.perf_counter()
    dvc(clone, env, "pull")
    return clone, time.perf_counter() - start


def add_remote(project: Path, env: dict, remote: Path) -> None:
    remote.mkdir()
    dvc(project, env, "remote", "add", "-d", "team", str(remote))
    assert "team" in (project / ".dvc" / "config").read_text()


def test_pull_into_a_clone_of_a_one_stage_repo(tiny_project: Path, project_env: dict, tmp_path: Path):
    """Fast: one stage writing one cached output, pushed, pulled into a clone, nothing rerun."""
    (tiny_project / "dvc.yaml").write_text(
        "stages:\n"
        "  count:\n"
        "    cmd: python -c \"open('counted.txt', 'w').write('1 2 3')\"\n"
        "    outs:\n"
        "      - counted.txt\n")
    add_remote(tiny_project, project_env, tmp_path / "remote")
    dvc(tiny_project, project_env, "repro")
    push_and_commit(tiny_project, project_env)
    assert any((tmp_path / "remote").rglob("*")), "dvc push wrote nothing to the remote"

    clone, _ = clone_and_pull(tiny_project, project_env, tmp_path / "clone")
    assert (clone / "counted.txt").read_text() == "1 2 3"
    # dvc.yaml's code deps live under src/, a symlink to the real package; git keeps it as one.
    assert (clone / "src").is_symlink() and (clone / "src").resolve() == (REPO / "src").resolve()
    assert UP_TO_DATE in dvc(clone, project_env, "status")
    assert "Running stage" not in dvc(clone, project_env, "repro")


@pytest.mark.slow
def test_fresh_clone_pulls_trained_models_and_metrics(tiny_project: Path, project_env: dict, tmp_path: Path):
    """The segmentation family trained, pushed and pulled: the clone is up to date, shows the
    metrics and predicts with the pulled checkpoint, without running a stage."""
    test_start = time.perf_counter()
    # The project's own .gitignore keeps the embedded MLflow store (mlflow.db) out of git.
    shutil.copy(REPO / ".gitignore", tiny_project / ".gitignore")
    add_remote(tiny_project, project_env, tmp_path / "remote")
    run(tiny_project, project_env, "git", "add", "-A")
    run(tiny_project, project_env, "git", "commit", "-q", "-m", "tiny project with a DVC remote")
    dvc(tiny_project, project_env, "repro")
    push_and_commit(tiny_project, project_env)

    clone, pull_seconds = clone_and_pull(tiny_project, project_env, tmp_path / "clone")
    assert (clone / "src").is_symlink() and (clone / "src").resolve() == (REPO / "src").resolve()
    assert (clone / "models/segmentation/best.ckpt").read_bytes() == (
        tiny_project / "models/segmentation/best.ckpt").read_bytes()
    assert UP_TO_DATE in dvc(clone, project_env, "status")
    assert "mIoU" in dvc(clone, project_env, "metrics", "show")

    image = clone / "data/synthetic/segmentation/images/test/000000.png"
    run(clone, project_env, str(BIN / "visionflow"), "predict", "--task", "segmentation", "--model",
        "models/segmentation/best.ckpt", "--out", "predicted", str(image))
    assert (clone / "predicted/000000_labels.png").is_file()

    assert "Running stage" not in dvc(clone, project_env, "repro")
    print(f"dvc pull: {pull_seconds:.1f} s, whole test: {time.perf_counter() - test_start:.1f} s")
