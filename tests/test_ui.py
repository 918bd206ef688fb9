"""`make ui`: whichever server exits first, the other is stopped too (issue 28, finding 8)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import BIN, REPO

pytestmark = pytest.mark.skipif(not (Path("/proc/self/environ").exists() and shutil.which("make")),
                                reason="needs make and /proc to find the servers' processes")


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds ``marker`` (every process the ui command started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass  # gone, or not ours
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_make_ui_stops_prefect_when_mlflow_cannot_start(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    marker = f"VISIONFLOW_UI_TEST={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    prefect_port = free_port()
    try:
        with socket.socket() as taken, open(tmp_path / "ui.log", "w") as log:
            taken.bind(("127.0.0.1", 0))  # MLflow's port is taken: MLflow exits first
            taken.listen()
            # Output to a file: an orphaned server would hold a pipe open and hang the test.
            result = subprocess.run(
                ["make", "-o", "install", "ui", f"VENV={BIN.parent}", f"PREFECT_PORT={prefect_port}",
                 f"MLFLOW_PORT={taken.getsockname()[1]}"],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
        output = (tmp_path / "ui.log").read_text()
        assert result.returncode != 0, output
        assert processes_with(marker) == [], output
        assert not listening(prefect_port), output
    finally:
        for pid in processes_with(marker):  # only what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
