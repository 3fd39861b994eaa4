"""Minimal reproduction: XLA:CPU convolutions inside a loop body (``lax.scan``) against top level.

Plain JAX, no jaxbp. For a 32->64 channel 3x3 convolution on 14x14, batch 128 (the second
convolution of the Fashion-MNIST CNN) it times, per convolution, ``STEPS`` calls at top level
(one compiled call each) against one compiled ``lax.scan`` of ``STEPS`` iterations, for the
forward, the input gradient dx, the weight gradient dW as XLA emits it for ``jax.vjp``, and the
weight gradient as one im2col matmul (the workaround). It prints the HLO instruction that does
the work in each case (the loop body's ``convolution`` versus the top level's fusion).

``python benchmarks/loop_conv_repro.py [--steps 4] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

N, H, C, F = 128, 14, 32, 64
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def dw_xla(x, g):
    return jax.vjp(lambda w: conv(x, w), jnp.zeros((3, 3, C, F), x.dtype))[1](g)[0]


def dx_xla(w, g):
    return jax.vjp(lambda x: conv(x, w), jnp.zeros((N, H, H, C), g.dtype))[1](g)[0]


def dw_im2col(x, g):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [xp[:, i : i + H, j : j + H, :] for i in range(3) for j in range(3)]
    p = jnp.stack(cols, axis=3).reshape(-1, 9 * C)
    return (p.T @ g.reshape(-1, F)).reshape(3, 3, C, F)


def dx_canonical(w, g):
    """dx as a convolution already in the forward's canonical form (NHWC, HWIO, NHWC)."""
    return conv(g, lax.rev(w, (0, 1)).swapaxes(2, 3))


def dw_canonical(x, g):
    """dW as a canonical convolution: x as (C, H, W, N), g as an (H, W, N, F) kernel."""
    out = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN
    )
    return out.transpose(1, 2, 0, 3)


def fwd(x, w):
    return conv(x, w)


def looped(fn, steps):
    """``steps`` calls of ``fn(a, b + i)`` inside one ``lax.scan`` (the carry keeps them live)."""

    def run(a, b):
        def body(acc, i):
            return acc + fn(a, b + i.astype(b.dtype)).sum(), None

        return lax.scan(body, jnp.float32(0), jnp.arange(steps))[0]

    return jax.jit(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (N, H, H, C))
    w = jax.random.normal(kw, (3, 3, C, F))
    g = jax.random.normal(kg, (N, H, H, F))
    cases = {
        "forward": (fwd, x, w),
        "dx (vjp)": (dx_xla, w, g),
        "dx (canon.)": (dx_canonical, w, g),
        "dW (vjp)": (dw_xla, x, g),
        "dW (canon.)": (dw_canonical, x, g),
        "dW (im2col)": (dw_im2col, x, g),
    }
    for name, (fn, u, v) in cases.items():  # every variant computes the same numbers
        ref = (dx_xla if name.startswith("dx") else dw_xla if name.startswith("dW") else fwd)(u, v)
        assert jnp.allclose(fn(u, v), ref, rtol=1e-4, atol=1e-4 * jnp.abs(ref).max()), name
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; conv {C}->{F}, {H}x{H}, batch {N}")
    print(f"{'op':12} {'top level ms':>13} {'in scan ms':>11} {'scan/top':>9}   loop-program convolutions")
    for name, (fn, u, v) in cases.items():
        top = jax.jit(lambda u, v, fn=fn: fn(u, v).sum())
        loop = looped(fn, a.steps)
        jax.block_until_ready((top(u, v), loop(u, v)))
        tt, tl = [], []
        for _ in range(a.rounds):
            s = time.perf_counter()
            for i in range(a.steps):
                out = top(u, v + i)
            jax.block_until_ready(out)
            tt.append((time.perf_counter() - s) / a.steps)
            s = time.perf_counter()
            jax.block_until_ready(loop(u, v))
            tl.append((time.perf_counter() - s) / a.steps)
        hlo = loop.lower(u, v).compile().as_text()
        labels = sorted(set(re.findall(r"dim_labels=([\w>-]+)", hlo))) or ["none (a dot)"]
        t, lp = statistics.median(tt), statistics.median(tl)
        print(f"{name:12} {1e3 * t:13.1f} {1e3 * lp:11.1f} {lp / t:9.1f}   {', '.join(labels)}")


if __name__ == "__main__":
    main()
