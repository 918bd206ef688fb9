"""Lineage: what register records about a model, and how `visionflow lineage` reads it back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from visionflow.lineage import DATA_TAG_PREFIX, describe, git_state, locked_data, provenance


def _lock(root: Path, stage: str, deps: dict[str, str]) -> None:
    entry = {"cmd": "visionflow train --task toy",
             "deps": [{"path": "src/visionflow/training.py", "md5": "c0de"},
                      *({"path": p, "md5": md5} for p, md5 in deps.items())]}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {stage: entry}}))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_locked_data_keeps_data_deps_and_drops_code(tmp_path):
    _lock(tmp_path, "train-toy", {"data/synthetic/toy.json": "aa11", "data/raw": "bb22.dir"})
    assert locked_data(tmp_path, "train-toy") == {"data/synthetic/toy.json": "aa11", "data/raw": "bb22.dir"}
    assert locked_data(tmp_path, "train-other") == {}
    assert locked_data(tmp_path / "nowhere", "train-toy") == {}


def test_git_state_sees_uncommitted_code_and_params_not_pipeline_outputs(tmp_path):
    assert git_state(tmp_path) == ("unknown", None)
    _git(tmp_path, "init", "-q")
    for name in ("params.yaml", "dvc.lock", "metrics.json"):
        (tmp_path / name).write_text("1")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "a")
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "dvc.lock").write_text("2")  # what dvc repro rewrites before register runs
    (tmp_path / "metrics.json").write_text("2")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "params.yaml").write_text("2")
    assert git_state(tmp_path) == (commit, True)


def test_provenance_and_describe_name_commit_params_and_data(tmp_path):
    _lock(tmp_path, "train-toy", {"data/synthetic/toy.json": "aa11"})
    record = provenance(tmp_path, "train-toy", "p4r4m5", None, "run123")
    assert record["params_hash"] == "p4r4m5" and record["backbone"] == "random init"
    assert record[DATA_TAG_PREFIX + "data/synthetic/toy.json"] == "aa11"
    version = {"name": "visionflow-toy", "version": "3", "aliases": ["champion"], "run_id": "run123",
               "tags": {**record, "family": "toy", "commit": "abc123", "commit_dirty": "false"}}
    text = describe(version, tmp_path)
    assert "models:/visionflow-toy/3 (@champion)" in text
    assert "commit   abc123\n" in text and "hash p4r4m5" in text
    assert "data/synthetic/toy.json  md5 aa11  (as in dvc.lock now)" in text
    assert "dvc repro register-toy" in text
    _lock(tmp_path, "train-toy", {"data/synthetic/toy.json": "ff99"})  # the data changed since
    assert "md5 aa11  (dvc.lock now has ff99)" in describe(version, tmp_path)
