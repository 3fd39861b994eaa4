"""The directory a training run saves into: one run at a time, proven writable before the first step.

:func:`locked` holds an exclusive lock (``flock`` on ``.jaxbp-train.lock``) there for the whole
run, so a second run in the same ``--checkpoint-dir`` is refused with a message naming the
process that holds it -- before it removes anything (the stale temporary files of an interrupted
save are cleaned only under the lock) and before two runs could replace each other's
checkpoints. :func:`prepare` creates the directory and writes a probe file; :func:`check_space`
refuses a disk that cannot hold one more checkpoint. Each failure is one ``CheckpointError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbp.errors import CheckpointError
from jaxbp.train.checkpoint import os_error

LOCK_NAME = ".jaxbp-train.lock"  # the directory's lock file (see :func:`locked`)
_HELD: dict[Path, list] = {}  # directories this process holds the lock of: resolved path -> [fd, depth]


def prepare(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and prove a file can be written there; before the first step.

    Raises:
      CheckpointError: a dangling symbolic link, a path under a file, no permission, a full disk...
    """
    d = Path(directory)
    if d.is_symlink() and not d.exists():
        raise CheckpointError(f"{d}: a symbolic link to {os.readlink(d)}, which does not exist")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"jaxbp probe")
                f.flush()
                os.fsync(f.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as e:
        raise CheckpointError(f"{d}: cannot write a checkpoint there ({os_error(e)})") from e
    return d


def check_space(directory: str | os.PathLike, tree: Any, slack: int = 1 << 20) -> None:
    """Refuse to start when the disk cannot hold one more checkpoint of ``tree`` (the save's temporary
    file sits beside the previous checkpoint until the rename).

    Raises:
      CheckpointError: naming the free and the needed bytes.
    """
    need = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)) + slack
    free = shutil.disk_usage(directory).free
    if free < need:
        raise CheckpointError(
            f"{directory}: {free / 2**20:.1f} MiB free on its disk, a checkpoint of this run needs"
            f" about {need / 2**20:.1f} MiB; free some space or choose another --checkpoint-dir"
        )


@contextlib.contextmanager
def locked(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold ``directory``'s lock while the block runs: one training run per checkpoint directory.

    The directory is created (and probed, :func:`prepare`) first. The lock is ``flock`` on
    :data:`LOCK_NAME`, so it is released when the process ends, however it ends. Re-entrant within
    one process (the command line takes it, then :func:`~jaxbp.train.fit.fit` again).

    Raises:
      CheckpointError: another process holds it (its pid, host and command are named).
    """
    d = prepare(directory)
    key = d.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield d
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked
        yield d
        return
    fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _describe_holder(fd)
        os.close(fd)
        raise CheckpointError(
            f"{d} is in use by another training run ({holder}); wait for it to end,"
            " or choose another --checkpoint-dir"
        ) from None
    os.ftruncate(fd, 0)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.write(fd, json.dumps({**info, "command": " ".join(sys.argv)}).encode())
    _HELD[key] = [fd, 1]
    try:
        yield d
    finally:
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "a process that holds its lock"
    host, since, command = (info.get(k, "?") for k in ("host", "since", "command"))
    return f"pid {info['pid']} on {host}, since {since}: {command}"
