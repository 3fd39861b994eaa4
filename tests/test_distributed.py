"""Data-parallel training on 1, 2 and 4 forced CPU devices equals one-device training.

XLA_FLAGS must be set before JAX starts, and this test process has already started JAX
with one device, so everything multi-device runs once in a subprocess (:func:`child`)
that writes its results to a directory; the tests below read and check them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import assert_trees_close

DEVICE_COUNTS = (1, 2, 4)
STEPS, BATCH, FEATURES, CLASSES = 3, 8, 6, 3
RTOL = 2e-5  # float32: the shards' partial sums are added in another order


def nets():
    """name -> (parallel net, the same net for one-device training)."""
    from jaxbp.combinators import serial
    from jaxbp.distributed import AXIS
    from jaxbp.layers.activations import Relu
    from jaxbp.layers.dense import Dense
    from jaxbp.layers.norm import BatchNorm

    return {
        "mlp": (serial(Dense(8), Relu(), Dense(CLASSES)),) * 2,
        # no bias before BatchNorm: its exact gradient is 0, so its value would be pure rounding noise
        "batchnorm": tuple(
            serial(Dense(8, use_bias=False), BatchNorm(axis_name=axis), Relu(), Dense(CLASSES))
            for axis in (AXIS, None)
        ),
    }


def child(out: str) -> None:
    """Train every net for STEPS steps on each device count; save params, HLO and errors to ``out``."""
    import jax
    import optax

    from jaxbp.core import LayerError
    from jaxbp.distributed import (
        make_mesh,
        make_parallel_train_step,
        replicate,
        shard_batch,
        train_step_fn_for,
    )
    from jaxbp.losses import SoftmaxCrossEntropy
    from jaxbp.step import init_train_state, make_train_step

    loss, opt = SoftmaxCrossEntropy(), optax.sgd(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(STEPS, BATCH, FEATURES)).astype(np.float32)
    ts_ = rng.integers(0, CLASSES, size=(STEPS, BATCH))
    report = {"device_count": jax.device_count()}

    def save(tag, ts):
        leaves = jax.tree.leaves((ts.params, ts.state))
        np.savez(f"{out}/{tag}.npz", *[np.asarray(a) for a in leaves])

    for name, (pnet, net) in nets().items():
        _, ts = init_train_state(net, opt, jax.random.PRNGKey(0), (BATCH, FEATURES))
        step = make_train_step(net, loss, opt)
        for k in range(STEPS):
            ts, _ = step(ts, xs[k], ts_[k])
        save(f"{name}-ref", ts)
        for n in DEVICE_COUNTS:
            mesh = make_mesh(n)
            _, ts = init_train_state(pnet, opt, jax.random.PRNGKey(0), (BATCH, FEATURES))
            ts = replicate(mesh, ts)
            pstep = make_parallel_train_step(pnet, loss, opt, mesh)
            for k in range(STEPS):
                ts, _ = pstep(ts, *shard_batch(mesh, xs[k], ts_[k]))
            save(f"{name}-{n}", ts)
            if n == 4:
                x, t = shard_batch(mesh, xs[0], ts_[0])
                Path(f"{out}/{name}.hlo").write_text(pstep.lower(ts, x, t).compile().as_text())
                report[f"{name}-grad-shapes"] = [list(a.shape) for a in jax.tree.leaves(ts.params)]
                if name == "mlp":
                    try:
                        pstep(ts, xs[0][:6], ts_[0][:6])
                    except LayerError as e:
                        report["step-error"] = str(e)
                    ts, _ = pstep(ts, x, t)  # the state was not donated by the failed call
                    report["after-error-ok"] = bool(np.isfinite(ts.params[0]["W"]).all())
                    try:
                        shard_batch(mesh, xs[0][:7])
                    except LayerError as e:
                        report["shard-error"] = str(e)

    # a compiled epoch as a training program builds it: lax.scan of the step over a replicated data set
    pnet = nets()["mlp"][0]
    step_fn, mesh = train_step_fn_for(pnet, loss, opt, 4)
    _, ts = init_train_state(pnet, opt, jax.random.PRNGKey(0), (BATCH, FEATURES))
    epoch = jax.jit(lambda ts, xs, ys: jax.lax.scan(lambda ts, b: step_fn(ts, *b), ts, (xs, ys)))
    ts, _ = epoch(*replicate(mesh, (ts, xs, ts_)))
    save("mlp-scan", ts)
    Path(f"{out}/report.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    code = f"import test_distributed; test_distributed.child({str(out)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "report.json").read_text())


def load(out, tag):
    with np.load(out / f"{tag}.npz") as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow  # runs in subprocesses with forced devices
@pytest.mark.parametrize("name", ["mlp", "batchnorm"])
@pytest.mark.parametrize("n", DEVICE_COUNTS)
def test_same_params_as_one_device_training(results, name, n):
    out, report = results
    assert report["device_count"] == 4
    assert_trees_close(load(out, f"{name}-{n}"), load(out, f"{name}-ref"), RTOL, f"{name} on {n} devices")


@pytest.mark.slow  # runs in subprocesses with forced devices
def test_distributed_step_inside_a_compiled_epoch(results):
    out, _ = results
    assert_trees_close(load(out, "mlp-scan"), load(out, "mlp-ref"), RTOL, "lax.scan epoch on 4 devices")


@pytest.mark.slow  # runs in subprocesses with forced devices
def test_batch_not_divisible_by_device_count_is_a_clear_error(results):
    _, report = results
    assert "batch size 6" in report["step-error"] and "device count 4" in report["step-error"]
    assert "batch size 7" in report["shard-error"] and "device count 4" in report["shard-error"]
    assert report["after-error-ok"]


def all_reduce_shapes(hlo: str) -> list[tuple[int, ...]]:
    """The shapes of all values all-reduced by the compiled program (a fused all-reduce lists several)."""
    shapes = []
    for line in hlo.splitlines():
        m = re.search(r"=\s*(\(.*?\)|\S+)\s+all-reduce(?:-start)?\(", line)
        if m:
            for dims in re.findall(r"\[([\d,]*)\]", m[1]):
                shapes.append(tuple(int(d) for d in dims.split(",") if d))
    return shapes


@pytest.mark.slow  # runs in subprocesses with forced devices
def test_one_all_reduce_per_gradient_leaf(results):
    out, report = results
    got = all_reduce_shapes((out / "mlp.hlo").read_text())
    want = [tuple(s) for s in report["mlp-grad-shapes"]] + [()]  # every gradient leaf and the loss
    assert sorted(got) == sorted(want), f"all-reduced {got}, expected {want}"


def test_asking_for_more_devices_than_exist_is_a_clear_error():
    from jaxbp.core import LayerError
    from jaxbp.distributed import make_mesh

    with pytest.raises(LayerError, match=r"asked for 3 devices, 1 available.*device_count=3"):
        make_mesh(3)


@pytest.mark.slow  # runs in subprocesses with forced devices
def test_train_command_devices_flag(tmp_path):
    """`python -m jaxbp train --devices 2` trains like `--devices 1` (CNN preset: synced BatchNorm).

    (Indivisible batches are refused: see the divisibility checks in the 4-device child above.)
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    runs = {}
    for n in (1, 2):
        cmd = [
            sys.executable,
            "-m",
            "jaxbp",
            "train",
            "--model",
            "cnn",
            "--widths",
            "4,8",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--json",
            "--no-progress",
            "--devices",
            str(n),
        ]
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(runs[2]["train_loss"], runs[1]["train_loss"], rtol=1e-4)
    assert abs(runs[2]["test_accuracy"] - runs[1]["test_accuracy"]) <= 2 / 364


@pytest.mark.slow
def test_train_command_mlp_preset_on_two_devices_equals_one_device(tmp_path):
    """The MLP preset (no state, no dropout) for 5 epochs: the one step, so the same key sequence,
    shuffles and updates on 1 and 2 devices; accuracy equal and loss equal to float32 rounding.
    (Before the step was shared, 2 devices split the key every step and 1 device did not.)"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    runs = {}
    for n in (1, 2):
        cmd = [
            sys.executable,
            "-m",
            "jaxbp",
            "train",
            "--epochs",
            "5",
            "--json",
            "--no-progress",
            "--devices",
            str(n),
        ]
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs[2]["test_accuracy"] == runs[1]["test_accuracy"]
    np.testing.assert_allclose(runs[2]["train_loss"], runs[1]["train_loss"], rtol=1e-5)
