"""An exclusive lock on a folder that one process writes, such as a training run's.

The lock is an advisory ``flock`` (``msvcrt.locking`` on Windows) on a ``.lock`` file in the
folder, which also holds the owner's process id and host. The operating system drops it when
the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from utils.errors import UserError

LOCK_NAME = ".lock"


@functools.cache
def _prctl():
    """libc's ``prctl``, loaded once (loaded before a fork, a child only makes the call)."""
    import ctypes

    return ctypes.CDLL(None).prctl


def end_with_parent(*_: object, sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """In a child process (Linux; nothing elsewhere): ``sig`` when its parent ends
    (``PR_SET_PDEATHSIG``). A data-loader worker inherits its trainer's open lock file, so
    without this a killed trainer's folder stays locked until its workers notice, seconds
    later; a study's worker would train on, holding its run's lock. Takes and ignores
    positional arguments, so it serves as a ``DataLoader`` ``worker_init_fn``; ``parent``:
    the parent's pid, to see that it ended before the call took effect (default: the child
    was reparented to init)."""
    if not sys.platform.startswith("linux"):
        return
    _prctl()(1, sig)  # PR_SET_PDEATHSIG
    ended = os.getppid() != parent if parent is not None else os.getppid() == 1
    if ended:  # the parent ended before the call took effect
        os.kill(os.getpid(), sig)


def child_ends_with_this_process(sig: int) -> Callable[[], None] | None:
    """A ``subprocess.Popen`` ``preexec_fn`` (Linux; None elsewhere) that makes the child get
    ``sig`` when this process ends, however it ends. libc is loaded here, in the parent."""
    if not sys.platform.startswith("linux"):
        return None
    _prctl()
    return functools.partial(end_with_parent, sig=sig, parent=os.getpid())


class FolderLockedError(UserError, RuntimeError):
    """Another live process holds the folder's lock; ``str(err)`` names the folder and it.
    Exit 2: the command was asked to write where another is writing."""


def _try_lock(handle) -> bool:
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class FolderLock:
    """Holds ``folder``'s lock from ``acquire`` until ``release`` (or the process ends).

    Raises (``acquire``):
        FolderLockedError: another process holds it; the message names the folder, the
            process id and host it recorded, and what to do.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._handle = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open while the lock lives
        if not _try_lock(handle):
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise FolderLockedError(
                f"{self.path.parent}: this {self.what} is being written by {owner}; wait for "
                "it to end or stop it, then try again"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()  # closing drops the flock
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
