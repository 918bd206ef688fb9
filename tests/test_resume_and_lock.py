"""A killed training resumes to an uninterrupted run's bytes, leaves the previous outputs as they
were, and a run folder belongs to one process (issue 28, findings 1 and 2)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, tree_hashes
from visionflow.config import parse_params
from visionflow.paths import TaskPaths
from visionflow.runfolder import RunFolderBusyError, hold_run_folder, lock_file
from visionflow.tasks import get_task
from visionflow.training import AtomicCheckpointIO, train_task

HOLD = ("import sys; from pathlib import Path; from visionflow.runfolder import hold_run_folder\n"
        "with hold_run_folder(Path(sys.argv[1])):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


def wait_for(condition, what: str, process: subprocess.Popen | None = None, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_second_process_gets_one_line_naming_the_folder_and_holder(tmp_path):
    folder = tmp_path / ".cache" / "train" / "segmentation" / "abc123"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderBusyError) as busy:
            with hold_run_folder(folder):
                pass
        message = str(busy.value)
        assert "\n" not in message
        assert str(folder) in message and f"pid {holder.pid} on {socket.gethostname()}" in message
    finally:
        holder.communicate("", timeout=30)  # closes its stdin: it lets go and exits
    assert holder.returncode == 0 and not lock_file(folder).exists()
    with hold_run_folder(folder) as lock:  # free again
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    assert not lock.exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file(folder).write_text(f"{int(dead.stdout)} {socket.gethostname()}\n")
    with hold_run_folder(folder) as lock:
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_a_run_folder_is_held_once_in_one_process(tmp_path):
    # Record locks belong to the process: a second holder in it would be let in by the kernel.
    with hold_run_folder(tmp_path / "run"):
        with pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()} "):
            with hold_run_folder(tmp_path / "run"):
                pass


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, path)
    before = path.read_bytes()

    def killed_while_writing(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class Interrupt(RuntimeError):
    pass


def outputs(root: Path) -> dict[str, str]:
    """Hashes of everything the train stage writes (models/, plots/, reports/)."""
    return {f"{folder}/{name}": digest for folder in ("models", "plots", "reports")
            for name, digest in tree_hashes(root / folder).items()}


def test_an_interrupted_run_leaves_the_previous_outputs(tiny_params, tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    class StopInSecondEpoch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise Interrupt("killed in epoch 2")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    family, paths = get_task("segmentation"), TaskPaths("segmentation", tmp_path)
    params = tiny_params.segmentation
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 2})})
    family.synthesize(params, paths.synthetic, progress=False)
    train_task(family, params, tiny_params.trainer, tiny_params.tracking, paths)
    previous = outputs(tmp_path)
    assert {"models/segmentation/best.ckpt", "plots/segmentation/train.csv",
            "reports/segmentation/curves.png", "models/segmentation/train.json"} <= set(previous)
    # Another seed is another run: it trains from scratch, and is stopped in its second epoch.
    reseeded = params.model_copy(update={"train": params.train.model_copy(update={"seed": 1})})
    with pytest.raises(Interrupt):
        train_task(family, reseeded, tiny_params.trainer, tiny_params.tracking, paths,
                   extra_callbacks=[StopInSecondEpoch()])
    assert outputs(tmp_path) == previous
    assert not list(paths.train_scratch.glob("*.lock"))  # let go on the way out


# Through the real CLI, killed with SIGKILL as soon as the first epoch's last.ckpt appears: in
# the second of 3 epochs of 8 batches (0.1-1 s each).
KILL_PARAMS = {"synth": {"splits": {"train": 64, "val": 8, "test": 4}}, "train": {"epochs": 3}}


def cli_project(tiny_project: Path, num_workers: int = 0) -> Path:
    params_file = tiny_project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    for section, values in KILL_PARAMS.items():
        params["segmentation"][section].update(values)
    params["trainer"]["num_workers"] = num_workers
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    parsed = parse_params(params)
    get_task("segmentation").synthesize(parsed.segmentation, TaskPaths("segmentation", tiny_project).synthetic,
                                        progress=False)
    return tiny_project


def train_command(project: Path, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "visionflow"), "train", "--task", "segmentation"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def train(project: Path, env: dict) -> None:
    process = train_command(project, env)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def scratch_checkpoints(project: Path) -> list[Path]:
    return list((project / ".cache/train/segmentation").glob("*/checkpoints/last.ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_killed_mid_epoch_resumes_to_the_uninterrupted_bytes(tiny_project, project_env, num_workers):
    project = cli_project(tiny_project, num_workers)
    models = project / "models/segmentation"
    train(project, project_env)
    uninterrupted = outputs(project)

    run = train_command(project, project_env)
    wait_for(lambda: scratch_checkpoints(project), "the first epoch's checkpoint", run)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    [killed_at] = scratch_checkpoints(project)
    # Killed in epoch 2 (or, were this process starved for a whole epoch, in epoch 3).
    assert torch.load(killed_at, map_location="cpu", weights_only=True)["epoch"] in (0, 1)
    assert outputs(project) == uninterrupted  # train.csv, curves, summary, checkpoints: untouched

    train(project, project_env)
    summary = yaml.safe_load((models / "train.json").read_text())
    assert summary["resumed_from"] == str(killed_at) and summary["epochs"] == 3
    resumed = outputs(project)
    for name in ("models/segmentation/best.ckpt", "models/segmentation/last.ckpt", "plots/segmentation/train.csv",
                 "reports/segmentation/curves.png"):
        assert resumed[name] == uninterrupted[name], name


@pytest.mark.slow
def test_a_second_trainer_in_the_run_folder_gets_one_line(tiny_project, project_env):
    project = cli_project(tiny_project)
    first = train_command(project, project_env)
    scratch = project / ".cache/train/segmentation"
    try:
        # Past its first epoch, where a second run used to "resume" from the live run's last.ckpt.
        wait_for(lambda: scratch_checkpoints(project), "the first epoch's checkpoint", first)
        first.send_signal(signal.SIGSTOP)  # holds the folder for as long as the second one needs
        locks = list(scratch.glob("*.lock"))
        second = train_command(project, project_env)
        _, stderr = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, stderr[-3000:]
    [lock] = locks
    assert stderr.splitlines() == [
        f"visionflow: {lock.with_suffix('')}: another training of this run is in progress (pid {first.pid} on "
        f"{socket.gethostname()}; lock {lock}); wait for it to finish or stop it, then run again"]
    _, first_stderr = first.communicate(timeout=600)
    assert first.returncode == 0, first_stderr[-3000:]
    assert sorted(p.name for p in (project / "models/segmentation").iterdir()) == \
        ["best.ckpt", "last.ckpt", "train.json"]
    assert not scratch.exists() or not any(scratch.iterdir())  # its folder and lock are gone
