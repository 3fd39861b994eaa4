"""Evidence for a proposed MaxPool change: the CNN preset's compiled memory and time, as is and with it.

As written, ``MaxPool.forward`` builds its int8 ``arg`` residual from a chain of compares and
selects. XLA fuses that cheap chain into the backward's loop fusion instead of storing ``arg``,
so the full-resolution f32 conv output stays live through the whole backward (12.8 MB for the
first block at batch 128). Computing ``arg`` with ``jnp.argmax`` (a reduce, which XLA
materialises) lets that buffer die after the forward. This script patches the layer in memory
only, and compares in one process, alternately:

- ``new_manual``: the manual value-and-grad with the proposed MaxPool forward;
- ``manual``: the manual value-and-grad as it is;
- ``jax``: ``jax.value_and_grad`` of the forward as it is (the benchmark's baseline).

``python benchmarks/maxpool_probe.py [--repeats 9]``
"""

from __future__ import annotations

import argparse
import itertools
import sys

import jax
import jax.numpy as jnp
import optax
from jax import lax

import jaxbp.layers.pool as pool
from jaxbp.backprop import forward_backward
from jaxbp.bench.models import build
from jaxbp.bench.timing import autodiff_forward_backward, compile_stats, time_alternating
from jaxbp.core import Static
from jaxbp.step import init_train_state

_MaxPool = pool.MaxPool


def ArgmaxMaxPool(window_shape, strides=None, padding="VALID"):
    """MaxPool with the proposed forward: ``arg`` from ``jnp.argmax`` over the stacked window offsets."""
    layer = _MaxPool(window_shape, strides, padding)
    ws, st, geometry = pool._window(layer.name, window_shape, strides, padding)
    offsets = list(itertools.product(*(range(w) for w in ws)))

    def forward(params, x):
        pads, out = geometry(x.shape)
        fill = jnp.array(-jnp.inf, x.dtype)
        xp = lax.pad(x, fill, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
        windows = jnp.stack([pool._offset_slice(xp, a, out, st) for a in offsets], axis=-1)
        arg = jnp.argmax(windows, axis=-1).astype(jnp.int8)  # the first max, as before
        return windows.max(-1), (arg, Static(x.shape))

    return layer._replace(forward=forward)


def main(argv: list[str] | None = None) -> int:
    """Print compiled temp bytes and alternating timings of the three variants."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    model = build("cnn")
    pool.MaxPool = ArgmaxMaxPool
    try:
        patched = build("cnn")
    finally:
        pool.MaxPool = _MaxPool
    key = jax.random.PRNGKey(0)
    _, ts = init_train_state(model.net, optax.sgd(0.1), key, model.x_shape)
    x = jax.random.normal(key, model.x_shape, jnp.float32)
    t = jax.random.randint(key, model.x_shape[:1], 0, 10)
    args = (ts.params, x, t, ts.state, key)
    fns = {}
    for name, m, fb in (
        ("new_manual", patched, forward_backward),
        ("jax", model, autodiff_forward_backward),
        ("manual", model, forward_backward),
    ):
        compiled, stats = compile_stats(
            lambda p, x, t, s, k, m=m, fb=fb: fb(m.net, m.loss, p, x, t, state=s, key=k), *args
        )
        fns[name] = (compiled, args)
        print(f"{name}: temp {stats['temp_bytes'] / 2**20:.2f} MiB, compile {stats['compile_s']:.2f} s")
    (v0, g0, _), (v1, g1, _) = fns["new_manual"][0](*args), fns["manual"][0](*args)
    same = all(
        jnp.allclose(u, w, rtol=1e-5, atol=1e-6)
        for u, w in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True)
    )
    print(f"same loss and grads as the current layer: {bool(jnp.allclose(v0, v1)) and same}")
    times = time_alternating(fns, repeats=a.repeats, min_block_s=0.3)
    print({k: round(v * 1e3, 2) for k, v in times.items() if k.endswith("_s")}, "ms")
    print(
        f"new_manual / jax = {times['new_manual_s'] / times['jax_s']:.3f},"
        f" manual / jax = {times['manual_s'] / times['jax_s']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
