"""Checkpoints without pickle, saved atomically.

One ``checkpoint.npz`` per directory holds the flattened leaves of a pytree (params,
optimizer state, network state, RNG key, step) as ``leaf_00000 ...`` plus a JSON string
``meta`` (epoch, history, run config). It is written to a temporary file in the same
directory, flushed to disk and then moved over the old one with ``os.replace``, so a
crash during a save leaves the previous checkpoint intact. Loading uses
``allow_pickle=False``: an untrusted checkpoint cannot run code. A corrupt file (empty,
truncated, bit-flipped: every member's CRC is checked, a ``.npy`` renamed, malformed metadata)
raises :class:`CheckpointError` naming the file and the problem, and so does a checkpoint whose
params hold NaN or infinity (:func:`refuse_nonfinite`). A failed save (a full disk) is one
``CheckpointError`` that says the previous checkpoint is kept. The file's permissions follow the
umask, as any file the user writes.

The directory a run saves into (its lock, the probe write, stale temporary files) is
:mod:`jaxbp.train.rundir`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbp.errors import CheckpointError

FILENAME = "checkpoint.npz"
TMP_GLOB = ".checkpoint-*.npz.tmp"  # what :func:`save` writes before the atomic rename
# What a training run's metadata holds (see :func:`validate_run_meta`).
RUN_HISTORY_KEYS = ("epoch", "train_loss", "test_accuracy", "seconds", "levels", "dx_norms", "dparam_norms")


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

    Raises:
      CheckpointError: the file could not be written (a full disk, a vanished directory); the
        previous checkpoint, if any, is left as it was.
    """
    directory = Path(directory)
    leaves = jax.tree_util.tree_leaves(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)}
    arrays["meta"] = np.asarray(json.dumps(meta))
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp's 0600 -> what the user's umask allows
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path_in(directory))  # the atomic step: readers see the old or the new file
    except OSError as e:
        _unlink(tmp)
        kept = "the previous checkpoint is kept" if exists(directory) else "no checkpoint was written"
        raise CheckpointError(
            f"{path_in(directory)}: could not save the checkpoint ({os_error(e)}); {kept}"
        ) from e
    except BaseException:
        _unlink(tmp)
        raise
    return path_in(directory)


def _unlink(tmp: str | None) -> None:
    if tmp is not None:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)  # read it (there is no getter) and put it back
    os.umask(mask)
    return mask


def os_error(e: OSError) -> str:
    """``OSError: No space left on device: <file>``: an OS error in one line."""
    return f"{type(e).__name__}: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")


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
    with _opened(path) as f:
        meta = _meta(path, f)
        try:
            saved = [f[k] for k in _leaf_names(path, f.files)]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
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


def _leaf_names(path: Path, names: list[str]) -> list[str]:
    """The ``leaf_<i>`` entries in leaf order (by number: ``leaf_10`` after ``leaf_9``, padded or not)."""
    leaves = [n for n in names if n.startswith("leaf_")]
    numbers = [n[len("leaf_") :] for n in leaves]
    if not all(s.isdigit() for s in numbers) or sorted(map(int, numbers)) != list(range(len(leaves))):
        shown = ", ".join(sorted(leaves)[:4]) + (", ..." if len(leaves) > 4 else "")
        raise CheckpointError(
            f"{path}: malformed checkpoint: its arrays must be named leaf_0 ... leaf_{len(leaves) - 1}"
            f" (one per number), got {shown}"
        )
    return [n for _, n in sorted(zip(map(int, numbers), leaves, strict=True))]


def refuse_nonfinite(
    directory: str | os.PathLike, tree: Any, *, name: str = "", nan_only: bool = False
) -> None:
    """Refuse a loaded checkpoint whose floating-point leaves hold NaN (or infinity, unless ``nan_only``).

    A run that diverged can save non-finite weights with valid CRCs; resuming from them would
    fail at the first step and be blamed on a level. Call it on what was loaded, before training;
    ``name`` prefixes the leaf paths in the message (e.g. ``params[1]['W']``).

    Raises:
      CheckpointError: naming the file and the first bad leaf.
    """
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.inexact):
            continue
        bad = np.isnan(a) if nan_only else ~np.isfinite(a)
        if bad.any():
            raise CheckpointError(
                f"{path_in(directory)}: {name}{jax.tree_util.keystr(kp)} holds {int(bad.sum())} NaN or"
                f" infinite value(s) of {a.size} (saved by a run that diverged?); it cannot be resumed:"
                " start afresh (--overwrite) or restore an earlier checkpoint"
            )


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The checkpoint at ``path`` as an open ``NpzFile``; failing to open it is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint {path} to resume from")
    with open(path, "rb") as fh:  # our own handle: closed even when np.load fails half-way
        try:
            f = np.load(fh, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, not a zip
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: unreadable checkpoint (a single array, not an .npz archive)")
        yield f


def _meta(path: Path, f) -> dict:
    try:
        meta = json.loads(str(f["meta"]))
    except KeyError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint (no 'meta' entry)") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # Bad CRC-32, bad JSON, pickled
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        kind = type(meta).__name__
        raise CheckpointError(f"{path}: malformed metadata (a JSON {kind}, expected an object)")
    return meta


def read_meta(directory: str | os.PathLike) -> dict:
    """The checkpoint's metadata, after checking every member of the file (CRC) is intact.

    Raises:
      CheckpointError: no checkpoint, or a corrupt one (naming the file and the problem).
    """
    path = path_in(directory)
    with _opened(path) as f:
        meta = _meta(path, f)
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (entry {bad!r} fails its CRC check)")
    return meta


def validate_run_meta(directory: str | os.PathLike, meta: dict) -> None:
    """Check a training run's metadata: ``epoch`` (int >= 0), ``config`` and a consistent ``history``.

    Raises:
      CheckpointError: a missing or malformed entry, named with the file.
    """
    path = path_in(directory)
    epoch, history = meta.get("epoch"), meta.get("history")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f"{path}: malformed metadata: 'epoch' is {epoch!r}, expected an int >= 0")
    if "config" not in meta:
        raise CheckpointError(f"{path}: malformed metadata: no 'config' (the run's configuration)")
    if not isinstance(history, dict):
        raise CheckpointError(f"{path}: malformed metadata: 'history' is {history!r}, expected an object")
    for k in RUN_HISTORY_KEYS:
        if not isinstance(history.get(k), list):
            raise CheckpointError(f"{path}: malformed metadata: history has no list {k!r}")
    for k in ("epoch", "train_loss", "test_accuracy", "seconds"):
        if len(history[k]) != epoch:
            raise CheckpointError(
                f"{path}: malformed metadata: history[{k!r}] has {len(history[k])} entries for epoch {epoch}"
            )


def config_difference(saved: dict | None, now: dict) -> str:
    """The entries that differ between two run configurations, e.g. ``lr: saved 0.05, now 0.1``."""
    if not isinstance(saved, dict):
        return f"saved configuration {saved!r}"
    flat_saved, flat_now = _flatten(saved), _flatten(now)
    keys = sorted(set(flat_saved) | set(flat_now))
    missing = "(none)"
    return "; ".join(
        f"{k}: saved {flat_saved.get(k, missing)}, now {flat_now.get(k, missing)}"
        for k in keys
        if flat_saved.get(k, missing) != flat_now.get(k, missing)
    )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def clean_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files a killed :func:`save` left in ``directory``; returns their paths.

    Call it at the start of a run, holding the directory's lock (:func:`jaxbp.train.rundir.locked`),
    so that no other process is saving into ``directory``.
    """
    stale = sorted(Path(directory).glob(TMP_GLOB)) if Path(directory).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
