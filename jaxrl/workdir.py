"""One run per workdir: an exclusive lock on `workdir/.lock`, released when the run ends.

Two runs in one workdir would interleave checkpoints and overwrite each other's metrics.
The lock is `fcntl.flock`, so the kernel drops it when its process dies, even by SIGKILL:
a stale lock file never blocks the next run. The file holds the owner's pid and host, for
the error the second run shows.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from typing import Iterator


class WorkdirInUseError(RuntimeError):
    """Another process holds the workdir's lock."""


def lock_path(workdir: str | os.PathLike, process_index: int = 0) -> str:
    """`workdir/.lock` for process 0, `workdir/.lock.<i>` for process i of a multi-host run
    (its processes share the workdir, so each locks its own file)."""
    name = ".lock" if process_index == 0 else f".lock.{process_index}"
    return os.path.join(os.fspath(workdir), name)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, process_index: int = 0) -> Iterator[str]:
    """Holds the workdir's lock for the `with` block (creating the workdir); yields the
    lock file's path. Raises WorkdirInUseError naming the holder's pid and host when another
    process holds it. Local and NFS paths only: flock means nothing on gs:// and the like."""
    os.makedirs(workdir, exist_ok=True)
    path = lock_path(workdir, process_index)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUseError(
                f"workdir {os.fspath(workdir)} is in use by {_owner(fd)} (lock file {path}); "
                "wait for that run to end or stop it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield path
    finally:
        os.close(fd)  # drops the lock


def _owner(fd: int) -> str:
    """'process PID on host HOST' from the lock file, as its holder wrote it."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0))
        return f"process {owner['pid']} on host {owner['host']}"
    except (ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "another process"
