"""The benchmark runs end to end on tiny sizes; the bottom level's dx is never computed (HLO proof).

No timing assertions here: the benchmark prints figures, the README records them.
"""

import json
import math
import re

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp.backprop import value_and_grad
from jaxbp.bench.models import ModelUnavailableError, _need
from jaxbp.cli import main

B, D_IN, WIDTHS = 4, 7, (6, 5, 3)  # distinct sizes, so each dot's shape names the level it belongs to


def _mlp():
    levels = []
    for w in WIDTHS[:-1]:
        levels += [jaxbp.Dense(w), jaxbp.Relu()]
    net = jaxbp.serial(*levels, jaxbp.Dense(WIDTHS[-1]))
    _, params = net.init(jax.random.PRNGKey(0), (B, D_IN))
    x = jax.random.normal(jax.random.PRNGKey(1), (B, D_IN), jnp.float32)
    return net, params, x, jnp.array([0, 1, 2, 1])


def _dot_shapes(hlo: str) -> list[str]:
    """Result shapes of the dot instructions in an optimised HLO module (fused computations included)."""
    return re.findall(r"= (\w+\[[\d,]*\])(?:\{[\d,]*\})? dot\(", hlo)


def test_bottom_level_dx_is_dead_code_in_the_compiled_backward():
    net, params, x, t = _mlp()
    n = len(WIDTHS)
    f = value_and_grad(net, jaxbp.SoftmaxCrossEntropy())
    traced = str(jax.make_jaxpr(f)(params, x, t)).count("dot_general")
    assert traced == 3 * n  # the trace has every level's dx, the bottom one included
    dots = _dot_shapes(jax.jit(f).lower(params, x, t).compile().as_text())
    # N forward dots + N dW + (N - 1) dx = 3N - 1: XLA dropped exactly one dot ...
    assert len(dots) == 3 * n - 1, dots
    # ... and it is the bottom dx, the only dot whose result has the input's shape (B, D_IN).
    assert f"f32[{B},{D_IN}]" not in dots, dots
    assert dots.count(f"f32[{D_IN},{WIDTHS[0]}]") == 1  # the bottom dW is still there


def test_bench_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--quick",
        "--models",
        "mlp_small",
        "--repeats",
        "1",
        "--min-block",
        "0",
        "--gemm-n",
        "64",
        "--json",
        str(out),
        "--silent",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| MLP 16-24-10, batch 8 |" in table and "GEMM 64x64" in table and "Digits MLP" in table
    res = json.loads(out.read_text())
    assert res["machine"]["backend"] == jax.default_backend()
    (row,) = res["models"]
    assert row["grad_max_rel_err"] < 1e-5 and row["loss_abs_diff"] < 1e-5  # manual and jax.grad agree
    for kind in ("vg", "step"):
        r = row[kind]
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("manual_s", "jax_s", "ratio"))
        assert r["manual_temp_bytes"] is None or r["manual_temp_bytes"] >= 0
        assert r["manual_compile_s"] > 0 and r["jax_compile_s"] > 0
    assert math.isfinite(row["vg"]["null_ratio"]) and row["vg"]["null_ratio"] > 0  # the null test ran
    assert "null test" in table
    assert row["matmul_flops"] == 3 * 2 * 8 * (16 * 24 + 24 * 10) - 2 * 8 * 16 * 24
    assert row["step_pct_of_gemm"] > 0
    e = res["epoch"]
    assert e["steps"] == 4 and e["compiled_s"] > 0 and e["pipelined_s"] > 0 and e["per_step_s"] > 0
    losses = e["last_loss"]
    assert all(math.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_cnn_peer_row_against_pytorch():
    from jaxbp.bench.models import build
    from jaxbp.bench.peer import cnn_peer
    from jaxbp.bench.run import format_table, machine_info

    peer = cnn_peer(build("cnn", quick=True), repeats=1, threads=1, min_block_s=0)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert peer is None
        return
    assert peer["device"] == "cpu" and peer["threads"] == 1
    assert all(math.isfinite(peer[k]) and peer[k] > 0 for k in ("jaxbp_s", "torch_s", "ratio"))
    table = format_table({"machine": machine_info(), "models": [], "skipped": {}, "peer": [peer]})
    assert "| CNN train step (SGD momentum) |" in table and "on cpu, 1 thread(s)" in table
    assert "No PyTorch peer on cpu" in format_table(
        {"machine": machine_info(), "models": [], "skipped": {}, "peer": []}
    )


def test_bench_rejects_unknown_models(capsys):
    assert main(["bench", "--models", "mlp_small,nope"]) == 2
    assert "unknown model(s) nope" in capsys.readouterr().err


def test_missing_layers_skip_the_model_with_a_reason():
    with pytest.raises(ModelUnavailableError, match="no NoSuchLayer"):
        _need("jaxbp.layers.dense", "Dense", "NoSuchLayer")
    with pytest.raises(ModelUnavailableError, match="not available"):
        _need("jaxbp.layers.no_such_module", "X")
