"""The PyTorch peer of the CNN preset: one SGD-momentum train step, timed against jaxbp's in one run.

The peer is what a user would pick instead: PyTorch eager, the same architecture as
``build_model("cnn", ...)`` (Conv3x3 -> MaxPool2 -> BatchNorm -> ReLU per conv width, then
Dense -> BatchNorm -> ReLU -> Dense), the same batch, loss (softmax cross-entropy) and
optimizer (SGD, lr 0.01, momentum 0.9). PyTorch is optional: without it the row is skipped.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.step import init_train_state, make_train_step


def torch_cnn_step(
    widths: tuple[int, ...],
    batch: int,
    side: int,
    channels: int,
    classes: int,
    threads: int,
    device: str = "cpu",
) -> tuple[Callable[[Any, Any], Any], Any, Any, str] | None:
    """``(step(x, y), x, y, version)`` for a PyTorch eager CNN train step, or None without torch.

    Args:
      widths: ``(c1, ..., ck, dense)`` as for the jaxbp ``cnn`` preset.
      batch: examples per step; ``side``: input height and width; ``channels``: input channels;
        ``classes``: outputs.
      threads: intra-op threads for PyTorch (``torch.set_num_threads``).
      device: "cpu" or "cuda".
    """
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    *conv, hidden = widths
    layers: list[nn.Module] = []
    c_in, s = channels, side
    for c in conv:
        layers += [
            nn.Conv2d(c_in, c, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        ]
        c_in, s = c, s // 2
    layers += [nn.Flatten(), nn.Linear(c_in * s * s, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(hidden, classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        value = nn.functional.cross_entropy(model(x), y)
        value.backward()
        opt.step()
        return value

    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, side, side, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return step, x, y, torch.__version__


def torch_sees_gpu() -> bool:
    """Whether PyTorch is installed and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def cnn_peer(
    model, repeats: int = 9, threads: int = 2, min_block_s: float = 0.1, device: str = "cpu"
) -> dict[str, Any] | None:
    """Seconds per CNN train step: jaxbp (compiled, donated) and PyTorch eager, alternating blocks.

    Args:
      model: a :class:`jaxbp.bench.models.Model` built by ``models.cnn`` (it names its ``widths``).
      repeats: alternating rounds (order reversed every other round).
      threads: PyTorch intra-op threads (match the cores XLA uses).
      min_block_s: each block runs enough steps to last about this long.
      device: "cpu", or "cuda" when PyTorch sees a GPU.

    Returns:
      ``{"jaxbp_s", "torch_s", "ratio" (median over rounds of jaxbp/torch), "torch_version",
      "threads", "device"}`` or None without torch.
    """
    batch, side, _, channels = model.x_shape
    peer = torch_cnn_step(model.widths, batch, side, channels, 10, threads, device)
    if peer is None:
        return None
    t_step, tx, ty, version = peer
    optimizer = optax.sgd(0.01, momentum=0.9)
    _, ts = init_train_state(model.net, optimizer, jax.random.PRNGKey(0), model.x_shape)
    x = jax.device_put(jnp.asarray(tx.cpu().numpy().transpose(0, 2, 3, 1)))
    y = jax.device_put(jnp.asarray(ty.cpu().numpy().astype(np.int32)))
    step = make_train_step(model.net, model.loss, optimizer)
    box = {"ts": ts}

    def run_jax(n):
        ts = box["ts"]
        for _ in range(n):
            ts, value = step(ts, x, y)
        box["ts"] = ts
        jax.block_until_ready(value)

    def run_torch(n):
        for _ in range(n):
            value = t_step(tx, ty)
        _sync(device)
        value.item()

    fns = {"jaxbp": run_jax, "torch": run_torch}
    for fn in fns.values():  # warm-up: compilation, allocator, oneDNN primitive caches
        fn(2)
    once = []
    for fn in fns.values():
        start = time.perf_counter()
        fn(1)
        once.append(time.perf_counter() - start)
    n = max(1, int(min_block_s / max(max(once), 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    ratios = []
    for r in range(repeats):
        for k in fns if r % 2 == 0 else reversed(list(fns)):
            start = time.perf_counter()
            fns[k](n)
            times[k].append((time.perf_counter() - start) / n)
        ratios.append(times["jaxbp"][-1] / times["torch"][-1])
    return {
        "jaxbp_s": statistics.median(times["jaxbp"]),
        "torch_s": statistics.median(times["torch"]),
        "ratio": statistics.median(ratios),
        "steps_per_block": n,
        "torch_version": version,
        "threads": threads,
        "device": device,
    }
