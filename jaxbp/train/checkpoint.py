"""Checkpoints without pickle, saved atomically.

One ``checkpoint.npz`` per directory holds the flattened leaves of a pytree (params,
optimizer state, network state, RNG key, step) as ``leaf_00000 ...`` plus a JSON string
``meta`` (epoch, history, run config). It is written to a temporary file in the same
directory, flushed to disk and then moved over the old one with ``os.replace``, so a
crash during a save leaves the previous checkpoint intact. Loading uses
``allow_pickle=False``: an untrusted checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbp.errors import CheckpointError

FILENAME = "checkpoint.npz"


def path_in(directory: str | os.PathLike) -> Path:
    """The checkpoint file inside ``directory``."""
    return Path(directory) / FILENAME


def save(directory: str | os.PathLike, tree: Any, meta: dict) -> Path:
    """Atomically write ``tree``'s leaves and the JSON-able ``meta`` to ``directory/checkpoint.npz``.

    Args:
      directory: created if missing.
      tree: a pytree of arrays (e.g. a ``TrainState``).
      meta: JSON-serialisable metadata (epoch, history, config).

    Returns:
      The checkpoint's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)}
    arrays["meta"] = np.asarray(json.dumps(meta))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path_in(directory))  # the atomic step: readers see the old or the new file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path_in(directory)


def exists(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a checkpoint."""
    return path_in(directory).is_file()


def load(directory: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Load the checkpoint in ``directory`` into the structure of ``like``.

    Args:
      directory: the checkpoint directory.
      like: a pytree with the expected structure, shapes and dtypes (e.g. a freshly initialised
        ``TrainState``); its values are not used.

    Returns:
      ``(tree, meta)``.

    Raises:
      CheckpointError: no checkpoint, unreadable file, or leaves that do not match ``like``.
    """
    path = path_in(directory)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {path} to resume from")
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            saved = [f[k] for k in sorted(k for k in f.files if k.startswith("leaf_"))]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from e
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    if len(saved) != len(paths_leaves):
        raise CheckpointError(
            f"{path}: holds {len(saved)} arrays, this run expects {len(paths_leaves)}"
            " (another model or optimizer?)"
        )
    for (kp, ref), got in zip(paths_leaves, saved, strict=True):
        if got.shape != np.shape(ref) or got.dtype != np.dtype(ref.dtype):
            raise CheckpointError(
                f"{path}: {jax.tree_util.keystr(kp)} has shape {got.shape} {got.dtype},"
                f" this run expects {np.shape(ref)} {np.dtype(ref.dtype)} (another model?)"
            )
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(a) for a in saved]), meta
