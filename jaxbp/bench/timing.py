"""Measurement helpers for the benchmark: alternating timings, compile statistics, GEMM throughput.

This is benchmark code, so the ``jax.value_and_grad`` baseline (the oracle) lives here.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp import xla
from jaxbp.core import Array, Layer, Loss, Params, State, apply


def autodiff_forward_backward(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State = (),
    key: Array | None = None,
    train: bool = True,
) -> tuple[Array, Params, State]:
    """The baseline: ``jax.value_and_grad`` of the same forward and loss functions, same signature
    and results as :func:`jaxbp.backprop.forward_backward`."""

    def objective(p):
        y, _, new_state = apply(net, p, x, state=state, key=key, train=train)
        value, _ = loss.forward(y, target)
        return value, new_state

    (value, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return value, grads, new_state


def compile_stats(fn: Callable, *args: Any) -> tuple[Callable, dict[str, float]]:
    """Lower and compile ``jax.jit(fn)`` for ``args``; return the executable and its statistics.

    Both sides of every comparison compile with :func:`jaxbp.xla.compiler_options`, the options
    of jaxbp's own training programs, so a ratio compares the programs, not the settings.

    Returns:
      ``(compiled, stats)`` with ``compile_s`` (lowering + XLA compilation, seconds),
      ``temp_bytes``, ``argument_bytes``, ``output_bytes`` (from ``memory_analysis()``,
      None where the backend does not report them) and ``flops`` (XLA's cost analysis or None).
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=xla.compiler_options())
    stats: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    mem = compiled.memory_analysis()
    for field, attr in (
        ("temp_bytes", "temp_size_in_bytes"),
        ("argument_bytes", "argument_size_in_bytes"),
        ("output_bytes", "output_size_in_bytes"),
    ):
        stats[field] = None if mem is None else int(getattr(mem, attr))
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        stats["flops"] = float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # cost analysis is optional on some backends
        stats["flops"] = None
    return compiled, stats


def _block(fn: Callable, args: tuple, n: int) -> float:
    """Seconds per call of ``n`` back-to-back asynchronous calls, waiting for the last result."""
    start = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def time_alternating(
    fns: dict[str, tuple[Callable, tuple]], repeats: int = 15, min_block_s: float = 0.05, warmup: int = 2
) -> dict[str, Any]:
    """Time several functions in alternating blocks (ABAB..., order reversed on odd rounds).

    Args:
      fns: ``name -> (fn, args)``; the first entry is the numerator of the ratios.
      repeats: rounds; each round times one block of every function.
      min_block_s: each block runs enough calls to last about this long.
      warmup: untimed calls of each function first.

    Returns:
      ``{"<name>_s": median seconds per call, ..., "ratio": median over rounds of
      first/second, "ratios": {name: median over rounds of first/name}, "calls_per_block": n}``.
    """
    names = list(fns)
    for fn, args in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    once = max(_block(fn, args, 1) for fn, args in fns.values())
    n = max(1, math.ceil(min_block_s / max(once, 1e-7)))
    times: dict[str, list[float]] = {k: [] for k in names}
    ratios = []
    for r in range(repeats):
        for k in names if r % 2 == 0 else reversed(names):
            fn, args = fns[k]
            times[k].append(_block(fn, args, n))
        if len(names) > 1:
            ratios.append(times[names[0]][-1] / times[names[1]][-1])
    out: dict[str, Any] = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["ratio"] = statistics.median(ratios) if ratios else None
    out["ratios"] = {
        k: statistics.median(a / b for a, b in zip(times[names[0]], times[k], strict=True)) for k in names[1:]
    }
    out["calls_per_block"] = n
    return out


def make_gemm(n: int = 2048, dtype=jnp.float32) -> tuple[Callable, tuple, float]:
    """A compiled ``n x n @ n x n`` GEMM, its operands and its FLOPs (``2 n**3``)."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    compiled, _ = compile_stats(jnp.matmul, a, b)
    return compiled, (a, b), 2.0 * n**3


def gemm_throughput(n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """FLOP/s of an ``n x n`` float32 GEMM compiled by XLA (median of ``repeats`` blocks)."""
    fn, args, flops = make_gemm(n)
    t = time_alternating({"gemm": (fn, args)}, repeats=repeats, min_block_s=0.2)["gemm_s"]
    return {"n": n, "seconds": t, "flops_per_s": flops / t}


def mlp_step_flops(sizes: tuple[int, ...], batch: int) -> float:
    """Matmul FLOPs of one MLP value-and-grad: forward, dW at every level, dx at all but the bottom."""
    pairs = list(zip(sizes[:-1], sizes[1:], strict=False))
    per = [2.0 * batch * i * o for i, o in pairs]
    return 3 * sum(per) - per[0]
