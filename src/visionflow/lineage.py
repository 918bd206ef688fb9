"""Where a registered model came from: commit, data hashes, params hash, backbone, and how to rebuild it.

``register`` stores a :func:`provenance` record on the model version (as tags) and in
``models/<task>/registered.json``; ``visionflow lineage models:/<name>@<alias>`` reads it back
from the registry and prints the chain from the version to the data, next to what the
working tree's ``dvc.lock`` holds now.

The data hashes are DVC's own (``dvc.lock``'s md5 of each data dependency of the training
stage, ``.dir`` hashes for folders), so ``dvc pull`` at the recorded commit fetches exactly
those files.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from visionflow.dag import stage_name

DVC_LOCK = Path("dvc.lock")
DATA_TAG_PREFIX = "data:"  # version tag "data:data/synthetic/segmentation.json" = its DVC md5
CODE_DIR = "src/"
# What decides a result: code, params, the pipeline and pinned packages. Not dvc.lock or the
# stages' outputs, which `dvc repro` itself rewrites before register runs.
SOURCE_PATHS = ("src", "pipelines", "params.yaml", "params.gpu.yaml", "dvc.yaml", "pyproject.toml",
                "constraints.txt")


def git_state(root: Path) -> tuple[str, bool | None]:
    """The checked-out commit and whether the code, params or pipeline files differ from it
    (:data:`SOURCE_PATHS`; None: not a git repository)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown", None
        status = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", None
    return head.stdout.strip(), bool(status.stdout.strip())


def locked_data(root: Path, stage: str) -> dict[str, str]:
    """``{path: md5}`` of the data (non-code) dependencies ``dvc.lock`` records for ``stage``.

    Empty when the stage has not run under DVC (e.g. ``visionflow train`` run by hand).
    """
    lock_file = root / DVC_LOCK
    if not lock_file.is_file():
        return {}
    entry = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).get(stage, {})
    return {dep["path"]: dep.get("md5", "?") for dep in entry.get("deps", [])
            if not dep["path"].startswith(CODE_DIR)}


def provenance(root: Path, train_stage: str, params_hash: str, backbone: str | None,
               train_run_id: str) -> dict[str, str]:
    """The version tags ``register`` sets: commit, dirty flag, params hash, backbone, run, data md5s."""
    commit, dirty = git_state(root)
    record = {"commit": commit, "commit_dirty": "unknown" if dirty is None else str(dirty).lower(),
              "params_hash": params_hash, "backbone": backbone or "random init",
              "train_run_id": train_run_id, "train_stage": train_stage}
    record.update({DATA_TAG_PREFIX + path: md5 for path, md5 in locked_data(root, train_stage).items()})
    return record


def describe(version: dict[str, Any], root: Path) -> str:
    """Lines from a model version (name, version, run, tags) back to its data and rebuild commands.

    ``version``: ``{"name", "version", "aliases", "run_id", "tags"}`` as
    :func:`visionflow.tracking.model_version` returns it.
    """
    tags = version["tags"]
    stage = tags.get("train_stage", "?")
    aliases = f" (@{', @'.join(version['aliases'])})" if version.get("aliases") else ""
    dirty = {"true": " with uncommitted changes", "false": "", "unknown": " (dirty state unknown)"}
    lines = [f"models:/{version['name']}/{version['version']}{aliases}",
             f"  trained by MLflow run {version['run_id']} ({stage})",
             f"  commit   {tags.get('commit', 'unknown')}{dirty.get(tags.get('commit_dirty', 'unknown'), '')}",
             f"  params   hash {tags.get('params_hash', 'unknown')}",
             f"  backbone {tags.get('backbone', 'unknown')}"]
    data = {k[len(DATA_TAG_PREFIX):]: v for k, v in tags.items() if k.startswith(DATA_TAG_PREFIX)}
    now = locked_data(root, stage)
    for path, md5 in sorted(data.items()):
        state = "as in dvc.lock now" if now.get(path) == md5 else (
            f"dvc.lock now has {now[path]}" if path in now else "not in dvc.lock now")
        lines.append(f"  data     {path}  md5 {md5}  ({state})")
    if not data:
        lines.append("  data     none recorded (registered outside dvc repro)")
    register_stage = stage_name("register", tags["family"]) if "family" in tags else "<register stage>"
    lines += ["rebuild:", f"  git checkout {tags.get('commit', '<commit>')}",
              f"  dvc pull --with-deps {register_stage}   # fetch it all by hash",
              f"  dvc repro {register_stage}              # or rebuild it"]
    return "\n".join(lines)
