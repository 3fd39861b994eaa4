"""The checkpoint directory of a run: one run at a time, proven writable, faults reported in one line.

A second ``jaxbp train`` in a directory another run holds is refused before it touches anything
(the running run's temporary file stays); a directory that cannot take a checkpoint (a dangling
symbolic link, a full disk) is refused before the first step; a save that fails later keeps the
previous checkpoint; checkpoints follow the umask; a checkpoint of NaN weights or with unpadded
leaf names is judged for what it is.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from harness import one_line_error, tiny_data, tiny_npz

import jaxbp
from jaxbp import cli
from jaxbp.errors import CheckpointError
from jaxbp.train import checkpoint, rundir
from jaxbp.train.fit import fit, make_optimizer


def _npz(tmp_path):
    return tiny_npz(tmp_path / "d.npz")


def _train(npz, *flags):
    return cli.main(
        ["train", "--dataset", "npz", "--data-dir", str(npz), "--widths", "8", "--batch-size", "16", *flags]
    )


HOLDER = textwrap.dedent(
    """
    import sys, time
    from jaxbp.train import rundir
    with rundir.locked(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()  # hold the lock until the test closes our stdin
    """
)


def test_a_second_run_is_refused_naming_the_holder_and_deletes_nothing(tmp_path, capsys):
    npz, ck = _npz(tmp_path), tmp_path / "ck"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ck)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        in_flight = ck / ".checkpoint-inflight.npz.tmp"  # the running run's save, half written
        in_flight.write_bytes(b"PK half a save")
        for flags in ((), ("--overwrite",), ("--resume",)):
            assert _train(npz, "--checkpoint-dir", str(ck), "--epochs", "1", *flags) == 2
            line = one_line_error(capsys)
            assert f"{ck} is in use by another training run (pid {holder.pid} on " in line, line
            assert in_flight.exists()  # clean_stale never ran: the lock comes first
        assert not checkpoint.exists(ck)
    finally:
        holder.communicate("\n", timeout=60)
    # the holder ended: the directory is free again, and the stale file of its "interrupted" save goes
    assert _train(npz, "--checkpoint-dir", str(ck), "--epochs", "1") == 0
    assert not in_flight.exists() and checkpoint.exists(ck)
    assert "removed 1 stale temporary file(s)" in capsys.readouterr().out


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    d = tmp_path / "ck"
    with rundir.locked(d):
        with rundir.locked(d):  # the command line holds it, then fit takes it again
            pass
        info = json.loads((d / rundir.LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
    with rundir.locked(d):  # released: taken again
        pass


def test_dangling_symlink_and_unwritable_directories_fail_before_the_first_step(
    tmp_path, capsys, monkeypatch
):
    npz = _npz(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    assert _train(npz, "--checkpoint-dir", str(link), "--epochs", "1") == 2
    assert f"{link}: a symbolic link to {tmp_path / 'gone'}, which does not exist" in one_line_error(capsys)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.tempfile, "mkstemp", full)  # the probe write fails as on a full disk
    assert _train(npz, "--checkpoint-dir", str(tmp_path / "ck"), "--epochs", "1") == 2
    assert "cannot write a checkpoint there (OSError: No space left on device)" in one_line_error(capsys)


def test_too_little_space_is_refused_before_training(tmp_path, monkeypatch):
    free = type("Usage", (), {"free": 1000})()
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: free)
    net = jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(3))
    with pytest.raises(
        CheckpointError, match=r"0\.0 MiB free on its disk, a checkpoint of this run needs about"
    ):
        fit(
            net,
            tiny_data(),
            make_optimizer(0.1),
            epochs=1,
            batch_size=16,
            log=None,
            checkpoint_dir=str(tmp_path),
        )
    assert not checkpoint.exists(tmp_path)


def test_a_failed_save_keeps_the_previous_checkpoint_in_one_line(tmp_path, capsys, monkeypatch):
    npz, ck = _npz(tmp_path), tmp_path / "ck"
    assert _train(npz, "--checkpoint-dir", str(ck), "--epochs", "1") == 0
    good = checkpoint.path_in(ck).read_bytes()
    capsys.readouterr()

    def disk_full(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.np, "savez", disk_full)
    assert _train(npz, "--checkpoint-dir", str(ck), "--epochs", "1", "--overwrite") == 2
    line = one_line_error(capsys)
    assert (
        "could not save the checkpoint (OSError: No space left on device); the previous checkpoint is kept"
        in line
    )
    assert checkpoint.path_in(ck).read_bytes() == good
    assert sorted(p.name for p in ck.iterdir()) == [rundir.LOCK_NAME, "checkpoint.npz"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        checkpoint.save(tmp_path, {"w": jnp.zeros(2)}, {"epoch": 0})
    finally:
        os.umask(old)
    assert checkpoint.path_in(tmp_path).stat().st_mode & 0o777 == 0o666 & ~umask


def test_nan_weights_are_refused_on_load_not_blamed_on_a_level(tmp_path, capsys):
    npz, ck = _npz(tmp_path), tmp_path / "ck"
    assert _train(npz, "--checkpoint-dir", str(ck), "--epochs", "1") == 0
    path = checkpoint.path_in(ck)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["leaf_00000"] = np.full_like(arrays["leaf_00000"], np.nan)  # valid CRCs, NaN weights
    np.savez(path, **arrays)
    capsys.readouterr()
    assert _train(npz, "--checkpoint-dir", str(ck), "--epochs", "1", "--resume") == 2
    line = one_line_error(capsys)
    assert f"{path}: params[1]['W'] holds" in line and "NaN or infinite value(s)" in line
    assert "level" not in line  # not a NonFiniteError at a level


def test_unpadded_leaf_names_load_in_numeric_order(tmp_path):
    tree = {f"k{i:02d}": jnp.full((i + 1,), float(i)) for i in range(12)}  # 12 leaves of distinct shapes
    path = checkpoint.save(tmp_path, tree, {"epoch": 0})
    with np.load(path) as f:
        arrays = {(k if k == "meta" else f"leaf_{int(k[5:])}"): f[k] for k in f.files}
    np.savez(path, **arrays)  # leaf_0 ... leaf_11, as a hand-written tool would name them
    back, _ = checkpoint.load(tmp_path, tree)
    assert all(np.array_equal(back[k], tree[k]) for k in tree)
    arrays["leaf_12"] = arrays.pop("leaf_11")  # a gap in the numbers: malformed, said so
    np.savez(path, **arrays)
    with pytest.raises(
        CheckpointError, match=r"malformed checkpoint: its arrays must be named leaf_0 \.\.\. leaf_11"
    ):
        checkpoint.load(tmp_path, tree)
