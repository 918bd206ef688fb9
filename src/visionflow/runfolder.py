"""A training run's folder belongs to one process; its outputs change by atomic renames.

``hold_run_folder`` locks ``<folder>.lock`` (beside the folder, which the run clears and
removes) with a POSIX record lock (``fcntl.lockf``). The kernel drops the lock when its holder
exits, however it exits (``kill -9`` included), so a lock file a dead process left behind is
taken over. Record locks, unlike ``flock``, are not inherited by forked children: DataLoader
processes that outlive a killed trainer for a few seconds do not keep its folder locked. The
file names the holder's pid and host, for the error the next process shows.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from visionflow.config import ConfigError

# A holder writes its pid right after locking: a process that finds the lock held but no live
# holder named in it (an empty file, or the dead pid of a lock being taken over) looks again
# for this long before it reports what it read.
HOLDER_WRITE_GRACE_S = 2.0

_held_here: set[Path] = set()  # record locks are per process: a second lock here would succeed


class RunFolderBusyError(ConfigError):
    """Another process trains in this run folder; the message names it (pid and host)."""


def lock_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


def _holder(fd: int) -> tuple[int | None, str]:
    """(pid, host) written in a lock file; (None, "") when it holds neither yet."""
    fields = os.pread(fd, 256, 0).decode(errors="replace").split()
    if len(fields) == 2 and fields[0].isdigit():
        return int(fields[0]), fields[1]
    return None, ""


def _alive_here(pid: int | None, host: str) -> bool:
    """Whether ``pid`` is a live process on this host (unknown hosts count as alive)."""
    if pid is None:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _busy(folder: Path, lock: Path, pid: int | None, host: str) -> RunFolderBusyError:
    holder = f"pid {pid} on {host}" if pid is not None else "a process that has not written its pid yet"
    return RunFolderBusyError(f"{folder}: another training of this run is in progress ({holder}; lock "
                              f"{lock}); wait for it to finish or stop it, then run again")


def _acquire(folder: Path, lock: Path) -> int:
    deadline = time.monotonic() + HOLDER_WRITE_GRACE_S
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid, host = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            if _alive_here(pid, host) or time.monotonic() > deadline:
                raise _busy(folder, lock, pid, host) from None
            time.sleep(0.05)
            continue
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder removed that file as it let go: lock the file now at the path


@contextmanager
def hold_run_folder(folder: Path) -> Iterator[Path]:
    """Hold ``folder`` (which need not exist) for this process; yields the lock file.

    Raises :class:`RunFolderBusyError` naming the holder when another process, or another
    caller in this one, holds it.
    """
    lock = lock_file(folder)
    key = lock.resolve()
    if key in _held_here:
        raise _busy(folder, lock, os.getpid(), socket.gethostname())
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(folder, lock)
    _held_here.add(key)
    try:
        yield lock
    finally:
        # Removed while still locked: a process that opened it meanwhile finds, once it gets the
        # lock, that the path no longer names its file, and starts over (``_acquire``).
        lock.unlink(missing_ok=True)
        _held_here.discard(key)
        os.close(fd)


def replace_atomically(destination: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``destination`` through a temporary file beside it, then rename it into place:
    a reader, or the next run after a killed one, finds the old file or the new one, never a part."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def publish(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` atomically (:func:`replace_atomically`)."""
    with open(source, "rb") as f:
        replace_atomically(destination, lambda out: shutil.copyfileobj(f, out))
