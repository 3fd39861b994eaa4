"""``python -m jaxbp train``: every flag's range, every flag's effect, errors before the first step.

The fast tests run :func:`jaxbp.cli.main` in-process with ``fit`` replaced by a recorder, so all
that happens before training (parsing, checks, data, checkpoint comparison, model and optimizer)
is real and nothing compiles; the optimizer a flag builds is then applied by hand to a gradient.
The slow tests train for real (tiny data, 1-2 steps) and compare trajectories.
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp import cli
from jaxbp.combinators import leaf_layers as levels
from jaxbp.errors import DataError
from jaxbp.train import checkpoint
from jaxbp.train import cli as train_cli
from jaxbp.train.epoch import make_epoch, make_epoch_loop
from jaxbp.train.fit import FitResult


@pytest.fixture
def npz(tmp_path):
    """A tiny 3-class data set: 48 train / 12 test vectors of 4 features."""
    return _write_npz(tmp_path / "d.npz", seed=0)


def _write_npz(path, seed=0, n_train=48):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 4))
    y = rng.integers(0, 3, n_train + 12)
    x = (centres[y] + 0.5 * rng.normal(size=(len(y), 4))).astype(np.float32)
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return path


class Recorder:
    """Stands in for ``fit``: records its arguments, returns a result without training."""

    def __init__(self):
        self.calls = []

    def __call__(self, net, data, optimizer, **kw):
        self.calls.append(dict(net=net, data=data, optimizer=optimizer, **kw))
        nan = float("nan")
        return FitResult(None, {"epoch": []}, nan, nan, 0, 0.0, 0.0)

    @property
    def last(self):
        return self.calls[-1]


@pytest.fixture
def fake_fit(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(train_cli, "fit", rec)
    return rec


def train(npz_path, *flags):
    return cli.main(
        [
            "train",
            "--dataset",
            "npz",
            "--data-dir",
            str(npz_path),
            "--widths",
            "8",
            "--batch-size",
            "16",
            *flags,
        ]
    )


# --- the parser refuses out-of-range flags (argparse: usage line + one error line, exit 2) ---

BAD_FLAGS = [
    (["--batch-size", "0"], "argument --batch-size: 0 is out of range: must be >= 1"),
    (["--batch-size", "-4"], "argument --batch-size: -4 is out of range"),
    (["--batch-size", "abc"], "argument --batch-size: expected an integer, got 'abc'"),
    (["--batch-size", "3.5"], "argument --batch-size: expected an integer"),
    (["--widths", "0"], "argument --widths: 0 is out of range: must be >= 1"),
    (["--widths", "abc"], "argument --widths: expected an integer, got 'abc'"),
    (["--widths", "8,,4"], "argument --widths: expected comma-separated integers >= 1, got '8,,4'"),
    (["--widths", ""], "argument --widths: expected comma-separated integers >= 1"),
    (["--widths", "8,-2"], "argument --widths: -2 is out of range"),
    (["--seed", "1e20"], "argument --seed: expected an integer, got '1e20'"),
    (["--seed", str(10**20)], f"argument --seed: {10**20} is out of range: must be in [0, 2147483647]"),
    (["--seed", "-1"], "argument --seed: -1 is out of range"),
    (["--momentum", "-1"], "argument --momentum: -1 is out of range: must be in [0, 1)"),
    (["--momentum", "1"], "argument --momentum: 1 is out of range: must be in [0, 1)"),
    (["--momentum", "nan"], "argument --momentum: expected a finite number, got 'nan'"),
    (["--epochs", "0"], "argument --epochs: 0 is out of range: must be >= 1"),
    (["--epochs", "-3"], "argument --epochs: -3 is out of range"),
    (["--epochs", "1.5"], "argument --epochs: expected an integer"),
    (["--lr", "0"], "argument --lr: 0 is out of range: must be > 0"),
    (["--lr", "-0.1"], "argument --lr: -0.1 is out of range"),
    (["--lr", "inf"], "argument --lr: expected a finite number, got 'inf'"),
    (["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["--weight-decay", "-0.001"], "argument --weight-decay: -0.001 is out of range: must be >= 0"),
    (["--weight-decay", "inf"], "argument --weight-decay: expected a finite number"),
    (["--dropout", "1"], "argument --dropout: 1 is out of range: must be in [0, 1)"),
    (["--dropout", "-0.5"], "argument --dropout: -0.5 is out of range"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--schedule", "step"], "argument --schedule: invalid choice: 'step'"),
    (["--loop", "fast"], "argument --loop: invalid choice: 'fast'"),
    (["--model", "resnet"], "argument --model: invalid choice: 'resnet'"),
    (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    (["--lrr", "0.1"], "jaxbp: error: unrecognized arguments: --lrr 0.1"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_parser_refuses_bad_flag_values(flags, message, capsys, fake_fit):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: jaxbp") and err[-1].startswith("jaxbp")
    assert message in err[-1] and not fake_fit.calls


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "usage: jaxbp" in err and "{train,check,bench}" in err and "choose a command: train" in err


# --- errors found before the first step: one line "jaxbp train: ...", exit 2, fit never called ---


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxbp train: "), err
    return err[0]


def test_output_paths_and_flag_combinations_fail_before_training(tmp_path, npz, capsys, fake_fit):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--checkpoint-dir", str(a_file)], f"--checkpoint-dir {a_file}: exists and is not a directory"),
        (
            ["--checkpoint-dir", str(a_file / "sub")],
            f"--checkpoint-dir {a_file / 'sub'}: cannot create it, {a_file} is not a directory",
        ),
        (["--plot", str(tmp_path / "no" / "p.png")], f"directory {tmp_path / 'no'} does not exist"),
        (["--plot", str(tmp_path / "p.txt")], "unknown image format '.txt'; use one of .png"),
        (["--plot", str(tmp_path / "p")], "unknown image format ''"),
        (["--plot", str(a_file / "p.png")], f"directory {a_file} does not exist"),
        (["--resume"], "--resume needs --checkpoint-dir"),
        (["--overwrite"], "--overwrite needs --checkpoint-dir"),
        (["--resume", "--overwrite", "--checkpoint-dir", str(tmp_path / "c")], "contradict each other"),
        (["--batch-size", "49"], "--batch-size 49 is larger than the training set (48 examples)"),
        (["--model", "cnn", "--widths", "8"], "cnn: widths needs at least one conv width and a dense width"),
    ]
    for flags, message in cases:
        assert train(npz, *flags) == 2, flags
        assert message in _one_line_error(capsys)
    (tmp_path / "pdir.png").mkdir()
    assert train(npz, "--plot", str(tmp_path / "pdir.png")) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert cli.main(["train", "--data-dir", str(npz)]) == 2
    assert "--data-dir is for --dataset mnist, fashion-mnist or npz" in _one_line_error(capsys)
    assert not fake_fit.calls


def test_data_errors_fail_before_training(tmp_path, capsys, fake_fit):
    (tmp_path / "empty.npz").write_bytes(b"")
    np.savez(
        tmp_path / "s.npz",
        x_train=np.full((4, 2), "a"),
        y_train=np.arange(4) % 2,
        x_test=np.ones((2, 2)),
        y_test=[0, 1],
    )
    cases = [
        (tmp_path / "missing.npz", "npz: no file"),
        (tmp_path / "empty.npz", "empty.npz: cannot read as .npz without pickle (EOFError"),
        (tmp_path / "s.npz", "s.npz: x_train must hold real numbers, got dtype <U1"),
    ]
    for path, message in cases:
        assert train(path, "--checkpoint-dir", str(tmp_path / "ck")) == 2
        assert message in _one_line_error(capsys)
        assert not (tmp_path / "ck").exists()  # nothing created before the error
    assert cli.main(["train", "--dataset", "mnist"]) == 2
    assert "mnist: no --data-dir given" in _one_line_error(capsys)
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "directory" in _one_line_error(capsys)
    assert not fake_fit.calls


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(DataError, match="npz: no file"):
        cli.main(["--debug", "train", "--dataset", "npz", "--data-dir", str(tmp_path / "missing.npz")])


def test_process_prints_one_line_without_traceback(tmp_path):
    """The real ``python -m jaxbp``: exit code 2 and exactly one line on stderr."""
    run = subprocess.run(
        [sys.executable, "-m", "jaxbp", "train", "--dataset", "npz", "--data-dir", str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"jaxbp train: npz: no file {tmp_path / 'x.npz'} (pass --data-dir PATH/TO/FILE.npz)"
    ]


# --- checkpoints: never silently replaced; resume compares the configuration and the data ---


def _save_checkpoint_of(rec: Recorder, directory, epoch=1):
    """A checkpoint like ``fit`` saves, for the configuration of the recorded call."""
    levels_ = [layer.name for layer in levels(rec.last["net"])]
    history = {k: [0.5] * epoch for k in ("epoch", "train_loss", "test_accuracy", "seconds")}
    history.update(levels=levels_, dx_norms=[], dparam_norms=[])
    checkpoint.save(
        directory, {"w": jnp.zeros(2)}, {"epoch": epoch, "history": history, "config": rec.last["config"]}
    )


def test_checkpoint_refusals_and_overwrite(tmp_path, npz, capsys, fake_fit):
    ck = tmp_path / "ck"
    assert train(npz, "--checkpoint-dir", str(ck)) == 0  # nothing there yet: a fresh run
    cfg = fake_fit.last["config"]
    assert cfg["data"]["source"] == str(npz.resolve()) and len(cfg["data"]["fingerprint"]) == 16
    _save_checkpoint_of(fake_fit, ck)
    capsys.readouterr()

    assert train(npz, "--checkpoint-dir", str(ck)) == 2  # another run's checkpoint is never replaced silently
    assert "already holds a checkpoint; pass --resume to continue it or --overwrite" in _one_line_error(
        capsys
    )
    assert train(npz, "--checkpoint-dir", str(ck), "--overwrite") == 0
    assert fake_fit.last["resume"] is False and fake_fit.last["checkpoint_dir"] == str(ck)

    assert train(npz, "--checkpoint-dir", str(ck), "--resume") == 0  # same flags, same data
    assert fake_fit.last["resume"] is True and len(fake_fit.calls) == 3
    capsys.readouterr()
    assert train(npz, "--checkpoint-dir", str(ck), "--resume", "--lr", "0.1") == 2
    assert "saved by another run configuration (lr: saved 0.05, now 0.1)" in _one_line_error(capsys)

    other = _write_npz(tmp_path / "other.npz", seed=1)  # other data at another path
    assert train(other, "--checkpoint-dir", str(ck), "--resume") == 2
    line = _one_line_error(capsys)
    assert (
        "data.fingerprint: saved" in line
        and f"data.source: saved {npz.resolve()}, now {other.resolve()}" in line
    )
    npz.write_bytes(other.read_bytes())  # other data at the same path: the fingerprint tells
    assert train(npz, "--checkpoint-dir", str(ck), "--resume") == 2
    line = _one_line_error(capsys)
    assert "data.fingerprint: saved" in line and "data.source" not in line
    assert len(fake_fit.calls) == 3


def test_resume_refuses_corrupt_checkpoint_and_cleans_stale_files(tmp_path, npz, capsys, fake_fit):
    ck = tmp_path / "ck"
    assert train(npz, "--checkpoint-dir", str(ck)) == 0
    _save_checkpoint_of(fake_fit, ck)
    stale = ck / ".checkpoint-x1y2.npz.tmp"
    stale.write_bytes(b"PK half a save")
    capsys.readouterr()
    assert train(npz, "--checkpoint-dir", str(ck), "--resume") == 0
    assert not stale.exists() and "removed 1 stale temporary file(s)" in capsys.readouterr().out

    path = checkpoint.path_in(ck)
    raw = path.read_bytes()
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        del meta["history"]
        np.savez(
            tmp_path / "no_history.npz", **{k: f[k] for k in f.files if k != "meta"}, meta=json.dumps(meta)
        )
    for data, message in (
        (raw[: len(raw) // 2], "unreadable checkpoint (BadZipFile"),
        (b"", "unreadable checkpoint (EOFError"),
        ((tmp_path / "no_history.npz").read_bytes(), "malformed metadata: 'history' is None"),
    ):
        path.write_bytes(data)
        assert train(npz, "--checkpoint-dir", str(ck), "--resume") == 2
        assert f"jaxbp train: {path}: {message}" in _one_line_error(capsys)
    assert len(fake_fit.calls) == 2


# --- every flag's effect on what is trained (fit's arguments; the optimizer applied by hand) ---


def _updates(opt, grads_seq, params):
    """The optimizer's successive updates for the given gradients (params held fixed)."""
    state, out = opt.init(params), []
    for g in grads_seq:
        u, state = opt.update(g, state, params)
        out.append(u)
    return out


def _call(rec, npz, *flags):
    """What ``jaxbp train`` hands ``fit`` for these flags (batch 48 = 1 step per epoch)."""
    assert train(npz, "--batch-size", "48", *flags) == 0
    return rec.last


P = {"w": jnp.array([1.0, -2.0, 0.5])}
G1, G2 = {"w": jnp.array([0.3, -0.1, 2.0])}, {"w": jnp.array([-0.2, 0.4, 1.0])}


def _close(u, v):
    np.testing.assert_allclose(u["w"], v, rtol=1e-6, atol=1e-9)


def test_lr_momentum_weight_decay_schedule_optimizer_flags(npz, fake_fit):
    plain = ("--schedule", "constant", "--momentum", "0", "--weight-decay", "0")
    for lr in (0.1, 0.4):  # --lr: the first update is exactly -lr * g
        u1, u2 = _updates(_call(fake_fit, npz, "--lr", str(lr), *plain)["optimizer"], [G1, G2], P)
        _close(u1, -lr * G1["w"])
        _close(u2, -lr * G2["w"])  # --momentum 0: plain SGD, no memory of G1
    mom = ("--schedule", "constant", "--weight-decay", "0", "--lr", "0.1")
    u1, u2 = _updates(_call(fake_fit, npz, *mom, "--momentum", "0.9")["optimizer"], [G1, G2], P)
    _close(u1, -0.1 * G1["w"])
    _close(u2, -0.1 * (G2["w"] + 0.9 * G1["w"]))
    (u1,) = _updates(
        _call(fake_fit, npz, *plain, "--lr", "0.1", "--weight-decay", "0.01")["optimizer"], [G1], P
    )
    _close(u1, -0.1 * (G1["w"] + 0.01 * P["w"]))
    # --schedule: cosine over 2 epochs of 1 step halves the second step; constant keeps it
    cos = ("--momentum", "0", "--weight-decay", "0", "--lr", "0.2", "--epochs", "2")
    _, u2 = _updates(_call(fake_fit, npz, *cos, "--schedule", "cosine")["optimizer"], [G1, G2], P)
    _close(u2, -0.5 * 0.2 * G2["w"])
    _, u2 = _updates(_call(fake_fit, npz, *cos, "--schedule", "constant")["optimizer"], [G1, G2], P)
    _close(u2, -0.2 * G2["w"])
    # --optimizer adam: the first step is lr * g / (|g| + eps) (bias-corrected), not lr * g
    (u1,) = _updates(_call(fake_fit, npz, *plain, "--lr", "0.1", "--optimizer", "adam")["optimizer"], [G1], P)
    _close(u1, -0.1 * G1["w"] / (np.abs(G1["w"]) + 1e-8))
    # defaults for an npz data set: SGD, lr 0.05, momentum 0.9, no decay, cosine
    call = _call(fake_fit, npz, "--epochs", "2")
    assert {k: call["config"][k] for k in ("lr", "momentum", "weight_decay", "schedule", "optimizer")} == {
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "optimizer": "sgd",
    }
    u1, u2 = _updates(call["optimizer"], [G1, G2], P)
    _close(u2, -0.05 * 0.5 * (G2["w"] + 0.9 * G1["w"]))


def test_model_loop_seed_resume_flags(tmp_path, npz, fake_fit):
    assert (
        train(
            npz, "--widths", "6,5", "--dropout", "0.25", "--epochs", "3", "--batch-size", "7", "--seed", "11"
        )
        == 0
    )
    call = fake_fit.last
    names = [layer.name for layer in levels(call["net"])]
    assert names == [
        "Flatten",
        "Dense(6)",
        "Relu",
        "Dropout(0.25)",
        "Dense(5)",
        "Relu",
        "Dropout(0.25)",
        "Dense(3)",
    ]
    assert (call["epochs"], call["batch_size"], call["seed"], call["resume"]) == (3, 7, 11, False)
    # --dropout changes training-mode outputs (and only those)
    drop = levels(call["net"])[3]
    x = jnp.ones((4, 6))
    y_train = drop.forward((), x, state=(), key=jax.random.PRNGKey(0), train=True)[0]
    y_eval = drop.forward((), x, state=(), key=None, train=False)[0]
    assert not np.array_equal(y_train, x) and np.array_equal(y_eval, x)
    assert set(np.unique(np.asarray(y_train))) <= {0.0, 1 / 0.75}
    assert train(npz) == 0 and not any("Dropout" in layer.name for layer in levels(fake_fit.last["net"]))
    # --loop: which epoch builder fit gets
    for loop, builder in (("scan", make_epoch), ("python", make_epoch_loop), ("auto", make_epoch)):
        assert train(npz, "--loop", loop) == 0
        assert fake_fit.last["epoch_builder"].func is builder and fake_fit.last["config"]["loop"] == loop
    # --seed: fit initialises from it (params from seed 0 and 1 differ, from one seed are equal)
    from jaxbp.step import init_train_state

    inits = {}
    for seed in (0, 1, 0):
        assert train(npz, "--seed", str(seed)) == 0
        c = fake_fit.last
        _, ts = init_train_state(c["net"], c["optimizer"], jax.random.PRNGKey(c["seed"]), (16, 4))
        inits.setdefault(seed, []).append(jax.tree.leaves(ts.params))
    assert all(np.array_equal(a, b) for a, b in zip(*inits[0], strict=True))
    assert not np.array_equal(inits[0][0][0], inits[1][0][0])
    # --resume with an empty directory: fit resumes (from nothing: a fresh start)
    assert train(npz, "--resume", "--checkpoint-dir", str(tmp_path / "ck")) == 0
    assert fake_fit.last["resume"] is True and fake_fit.last["checkpoint_dir"] == str(tmp_path / "ck")
    # --no-standardize: the data is handed over as loaded; by default standardised
    assert train(npz, "--no-standardize") == 0
    raw = fake_fit.last["data"].x_train
    assert train(npz) == 0
    std = fake_fit.last["data"].x_train
    assert (
        abs(float(std.mean())) < 1e-5
        and abs(float(std.std()) - 1) < 1e-4
        and float(raw.std()) != pytest.approx(1, abs=1e-3)
    )


def test_json_summary_is_valid_json_even_with_nan(npz, capsys, fake_fit):
    assert train(npz, "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] is None and summary["train_loss"] is None and summary["epochs"] == 0


# --- the real thing: tiny runs, 1 step per epoch, trajectories compared ---


def _params_after(tmp_path, npz, name, *flags):
    d = tmp_path / name
    assert train(npz, "--batch-size", "48", "--no-standardize", "--checkpoint-dir", str(d), *flags) == 0
    with np.load(checkpoint.path_in(d)) as f:
        return [f[k] for k in sorted(f.files) if k.startswith("leaf_")]


@pytest.mark.slow
def test_flags_change_the_trained_params(tmp_path, npz, monkeypatch, capsys):
    run = lambda name, *flags: _params_after(tmp_path, npz, name, "--epochs", "2", *flags)  # noqa: E731
    base = run("base")
    assert all(np.array_equal(a, b) for a, b in zip(base, run("again"), strict=True))  # one seed: identical
    for flags in (
        ("--seed", "1"),
        ("--optimizer", "adam"),
        ("--lr", "0.2"),
        ("--momentum", "0"),
        ("--weight-decay", "0.1"),
        ("--schedule", "constant"),
        ("--dropout", "0.5"),
    ):
        other = run("-".join(flags), *flags)
        assert len(other) != len(base) or not all(
            np.array_equal(a, b) for a, b in zip(base, other, strict=True)
        ), flags
    loop = run("loop", "--loop", "python")  # the Python loop trains the same MLP as the scan
    for a, b in zip(base, loop, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)

    # --resume after an interruption (a SIGINT after epoch 1's checkpoint) continues bit-identically
    real_save = checkpoint.save

    def save_then_interrupt(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    with pytest.raises(AssertionError):  # run() asserts exit code 0; Ctrl-C gives 130 and one line
        run("resumed")
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("jaxbp train: interrupted")
    monkeypatch.setattr(checkpoint, "save", real_save)
    resumed = run("resumed", "--resume")
    assert all(np.array_equal(a, b) for a, b in zip(base, resumed, strict=True))


@pytest.mark.slow
def test_lr_scales_the_first_update_of_a_real_run(tmp_path, npz):
    """One SGD step on the whole training set: params1 - params0 is proportional to --lr."""
    plain = (
        "--epochs",
        "1",
        "--schedule",
        "constant",
        "--momentum",
        "0",
        "--weight-decay",
        "0",
        "--seed",
        "3",
    )
    p_a = _params_after(tmp_path, npz, "a", "--lr", "0.01", *plain)
    p_b = _params_after(tmp_path, npz, "b", "--lr", "0.03", *plain)
    p_0 = _params_after(tmp_path, npz, "zero", "--lr", str(math.ulp(0.0)), *plain)  # (almost) no step
    for a, b, z in zip(p_a[:4], p_b[:4], p_0[:4], strict=True):  # the four param leaves come first
        np.testing.assert_allclose(b - z, 3 * (a - z), rtol=1e-3, atol=1e-7)
        assert np.abs(a - z).max() > 1e-5


@pytest.mark.slow
def test_divergence_exits_3_with_epoch_batch_level_and_keeps_checkpoint(tmp_path, npz, capsys):
    """``--lr 1e6``: the run stops with exit code 3 on one line; the last good checkpoint stays."""
    ck = tmp_path / "ck"
    flags = ("--batch-size", "8", "--momentum", "0", "--schedule", "constant", "--checkpoint-dir", str(ck))
    assert train(npz, "--epochs", "1", "--lr", "0.01", *flags) == 0
    good = checkpoint.path_in(ck).read_bytes()
    capsys.readouterr()
    assert train(npz, "--epochs", "1", "--lr", "1e6", "--overwrite", *flags) == 3
    line = _one_line_error(capsys)
    assert "non-finite values at epoch 1, batch" in line and "level" in line
    assert checkpoint.path_in(ck).read_bytes() == good  # nothing replaced the last good checkpoint
