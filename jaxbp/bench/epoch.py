"""One training epoch on the digits MLP: per-step dispatch, the compiled epoch, and PyTorch eager.

PyTorch is an optional dependency: without it the torch column is skipped.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax import lax

from jaxbp.bench.models import mlp
from jaxbp.step import init_train_state, make_train_step, train_step_fn


def digits_batches(batch: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(steps, batch, 64)`` float32 in [0, 1] and ``(steps, batch)`` int32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    steps = len(x) // batch if limit is None else min(limit, len(x) // batch)
    n = steps * batch
    return x[:n].reshape(steps, batch, -1), y[:n].reshape(steps, batch)


def _torch_epoch_fn(params, lr: float):
    """``(epoch(xs, ys, threads), version)``: a PyTorch eager epoch over the same MLP and initial
    params, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    layers = []
    for i, p in enumerate(params):
        if "W" in p:
            lin = torch.nn.Linear(*p["W"].shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.asarray(p["W"]).T.copy()))
                lin.bias.copy_(torch.from_numpy(np.asarray(p["b"]).copy()))
            layers.append(lin)
        elif i:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def epoch(xs, ys, threads):
        torch.set_num_threads(threads)
        for x, y in zip(xs, ys, strict=True):
            opt.zero_grad(set_to_none=True)
            value = torch.nn.functional.cross_entropy(model(x), y)
            value.backward()
            opt.step()
        return value.item()

    return epoch, torch.__version__


def _calls_per_block(fn: Callable, min_block_s: float) -> int:
    """Calls of ``fn`` (one epoch each) that last about ``min_block_s``: a block of several epochs
    amortises the first one after a switch, which shares the cores with the previous method's
    worker threads still spinning (PyTorch's OpenMP pool, XLA's)."""
    start = time.perf_counter()
    fn()
    return max(1, math.ceil(min_block_s / max(time.perf_counter() - start, 1e-7)))


def epoch_benchmark(
    batch: int = 32,
    repeats: int = 5,
    threads: tuple[int, ...] = (2, 1),
    limit: int | None = None,
    min_block_s: float = 0.05,
) -> dict:
    """Seconds per digits epoch for per-step dispatch, the compiled epoch and PyTorch eager (medians).

    The compiled epoch is timed two ways: ``compiled`` reads its last loss on the host after every
    epoch (as PyTorch's ``.item()`` does, and as a loop that logs every epoch would), ``pipelined``
    dispatches epoch after epoch and reads once per timed block (a run that logs less often).

    Args:
      batch: the batch size (the last partial batch is dropped).
      repeats: timed epochs of each method, interleaved, after one warm-up epoch each.
      threads: PyTorch intra-op thread counts to time; the first should match the cores XLA uses.
      limit: at most this many steps per epoch (for quick runs).
      min_block_s: each timed sample is a block of consecutive epochs of one method lasting about
        this long (its mean per epoch); the methods alternate block by block.

    Returns:
      A dict with ``steps``, ``per_step_s``, ``compiled_s``, ``pipelined_s``, ``torch_s``
      (``{threads: seconds}``, empty without torch), the last losses and the speed-ups of the
      compiled epoch.
    """
    xb, yb = digits_batches(batch, limit)
    model = mlp("digits", (64, 128, 10), batch)
    optimizer = optax.sgd(0.1)
    _, ts0 = init_train_state(model.net, optimizer, jax.random.PRNGKey(0), (batch, 64))

    step = make_train_step(model.net, model.loss, optimizer)
    body = train_step_fn(model.net, model.loss, optimizer)
    compiled_epoch = jax.jit(
        lambda ts, xs, ys: lax.scan(lambda t, b: body(t, *b), ts, (xs, ys)), donate_argnums=0
    )

    xs_dev, ys_dev = jax.device_put(xb), jax.device_put(yb)
    x_list, y_list = list(xs_dev), list(ys_dev)
    state: dict[str, Any] = {"dispatch": jax.tree.map(lambda a: a.copy(), ts0), "scan": ts0}

    def run_dispatch():
        ts = state["dispatch"]
        for x, y in zip(x_list, y_list, strict=True):
            ts, value = step(ts, x, y)
        state["dispatch"] = ts
        return value.item()

    def run_compiled():
        state["scan"], values = compiled_epoch(state["scan"], xs_dev, ys_dev)
        return float(values[-1])

    def run_pipelined():  # no host read: the next epoch is dispatched while this one runs
        state["scan"], state["values"] = compiled_epoch(state["scan"], xs_dev, ys_dev)

    def finish_pipelined():
        return float(state["values"][-1])

    methods = {"per_step": run_dispatch, "compiled": run_compiled, "pipelined": run_pipelined}
    finish = {"pipelined": finish_pipelined}
    torch_version = None
    torch_fn = _torch_epoch_fn(ts0.params, 0.1)  # same initial params
    if torch_fn is not None:
        import torch

        epoch, torch_version = torch_fn
        tx, ty = torch.from_numpy(xb), torch.from_numpy(yb.astype(np.int64))
        for n in threads:
            methods[f"torch_{n}"] = lambda n=n: epoch(tx, ty, n)

    times: dict[str, list[float]] = {k: [] for k in methods}
    last: dict[str, float] = {}

    def block(k: str, n: int) -> None:
        for _ in range(n):
            last[k] = methods[k]()
        if k in finish:
            last[k] = finish[k]()  # one host read closes the block

    for k in methods:  # warm-up (and compilation)
        block(k, 1)
    calls = {k: _calls_per_block(lambda k=k: block(k, 1), min_block_s) for k in methods}
    for r in range(repeats):
        for k in methods if r % 2 == 0 else reversed(list(methods)):
            start = time.perf_counter()
            block(k, calls[k])
            times[k].append((time.perf_counter() - start) / calls[k])
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_threads = [n for n in threads if f"torch_{n}" in med]
    out = {
        "batch": batch,
        "steps": int(xb.shape[0]),
        "per_step_s": med["per_step"],
        "compiled_s": med["compiled"],
        "pipelined_s": med["pipelined"],
        "torch_s": {n: med[f"torch_{n}"] for n in torch_threads},
        "torch_version": torch_version,
        "last_loss": last,
        "compiled_vs_per_step": med["per_step"] / med["compiled"],
        "compiled_vs_torch": {n: med[f"torch_{n}"] / med["compiled"] for n in torch_threads},
        "pipelined_vs_torch": {n: med[f"torch_{n}"] / med["pipelined"] for n in torch_threads},
    }
    return out
