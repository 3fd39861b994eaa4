"""Checkpoints: exact round trip, atomic save (a crash mid-save keeps the old one), no pickle, mismatches."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp.train import checkpoint
from jaxbp.train.checkpoint import CheckpointError


def tree(v):
    return {"params": ({"W": jnp.full((3, 2), v, jnp.float32)}, ()), "key": jnp.array([v, 7], jnp.uint32)}


def test_round_trip_is_exact(tmp_path):
    t = {"a": jnp.array([1.0, np.nextafter(np.float32(1), np.float32(2))], jnp.float32), "s": jnp.int32(5)}
    checkpoint.save(tmp_path, t, {"epoch": 3, "history": {"loss": [0.5]}})
    back, meta = checkpoint.load(tmp_path, t)
    assert meta == {"epoch": 3, "history": {"loss": [0.5]}}
    for x, y in zip(back.values(), t.values(), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, tree(1), {"epoch": 1})
    real_replace = os.replace
    written = []

    def crash(src, dst):  # the new file is fully written, the process dies before the rename
        written.append(os.path.getsize(src))
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, tree(2), {"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert written and written[0] > 0
    back, meta = checkpoint.load(tmp_path, tree(0))
    assert meta["epoch"] == 1 and float(back["params"][0]["W"][0, 0]) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]  # no temp file left behind


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, tree(1), {"epoch": 1})

    def half_write(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_write)
    with pytest.raises(
        CheckpointError, match=r"could not save the checkpoint \(OSError: disk full\); the previous"
    ):
        checkpoint.save(tmp_path, tree(2), {"epoch": 2})
    monkeypatch.undo()
    assert checkpoint.load(tmp_path, tree(0))[1]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]  # the half-written file is gone


def test_no_pickle_and_mismatches(tmp_path):
    np.savez(tmp_path / "checkpoint.npz", leaf_00000=np.array([object()], dtype=object), meta=json.dumps({}))
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path, {"a": jnp.zeros(1)})
    checkpoint.save(tmp_path, tree(1), {"epoch": 1})
    with pytest.raises(CheckpointError, match="holds 2 arrays, this run expects 1"):
        checkpoint.load(tmp_path, {"a": jnp.zeros(1)})
    other = {"params": ({"W": jnp.zeros((4, 2))}, ()), "key": jnp.zeros(2, jnp.uint32)}
    with pytest.raises(CheckpointError, match=r"\['W'\] has shape \(3, 2\) float32, this run expects \(4, 2"):
        checkpoint.load(tmp_path, other)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "empty", tree(0))
