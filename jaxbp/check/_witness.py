"""The witnesses a hand-written backward is compared against, as one jit-able, vmap-able function.

For a function ``F(D) -> y`` (a layer's forward with everything but the differentiated
arguments ``D = (params, x)`` fixed), a hand-written ``hand = backward(g)`` and a
cotangent ``g``, :func:`witness_stats` returns per-leaf statistics of

* ``vjp``: ``hand`` against ``jax.vjp(F, D)[1](g)``, element by element;
* ``dot``: the dot-product test ``<g, J v> = <J^T g, v>``, ``J v`` by ``jax.jvp``, one random
  tangent ``v`` per leaf (zero in the other leaves);
* ``fd``: ``<g, (F(D + h v) - F(D - h v)) / 2h>`` against ``<hand, v>`` (only in float64), with
  the one-sided differences that tell a kink from a bug, and a second pair of one-sided
  differences along the direction ``hand - reference``: if ``F`` is not differentiable along
  the very direction in which the two disagree, the point is a tie (ReLU at 0, max-pool
  ties), where hand-written and autodiff subgradients may legitimately differ.

Everything is computed under one trace (``F`` is evaluated once, vmapped over the
perturbed points; ``jax.jvp`` once, vmapped over the tangents), so one compile per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

EPS64 = float(jnp.finfo(jnp.float64).eps)
FD_STEP = EPS64 ** (1 / 3)  # central differences: truncation h^2 ~ rounding eps / h
TIE_STEP = 1e-7  # one-sided differences along the discrepancy: any step sees an exact tie


def is_float(a) -> bool:
    """True for floating arrays (and tracers)."""
    return jnp.issubdtype(a.dtype, jnp.floating)


def cast(tree, dtype):
    """Cast the floating leaves of ``tree`` to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if is_float(a) else a, tree)


def _f64(a):
    return jnp.asarray(a).astype(jnp.float64)


def inner(a, b):
    """<a, b> over all leaves of two pytrees of one structure, accumulated in float64."""
    return sum(
        (jnp.sum(_f64(u) * _f64(v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)),
        jnp.zeros((), jnp.float64),
    )


def _segments(D):
    """Flatten ``D`` to one vector; the leaves' offsets and sizes (NumPy) and the unravel function."""
    flat, unravel = ravel_pytree(D)
    sizes = np.asarray([a.size for a in jax.tree.leaves(D)], np.int64)
    offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    return flat, unravel, offsets, sizes


def _masks(n: int, offsets, sizes):
    """(L, n) booleans: element k belongs to leaf j. Built from an iota in the program, never a
    constant: a captured (L, n) constant of a large layer would be copied into the program."""
    idx = jax.lax.iota(jnp.int32 if n < 2**31 else jnp.int64, n)[None]
    lo, hi = jnp.asarray(offsets)[:, None], jnp.asarray(offsets + sizes)[:, None]
    return (idx >= lo) & (idx < hi)


def _flat_out(F, unravel):
    return lambda v: ravel_pytree(F(unravel(v)))[0]


def witness_stats(F, D, hand, g, key, *, dot: bool = True, fd: bool = False) -> dict:
    """Per-leaf witness statistics, each an array of shape (L,) for the L leaves of ``D``.

    Args:
      F: ``D -> y``; y any pytree of floating arrays.
      D: the differentiated arguments (a pytree of floating arrays of one dtype).
      hand: the hand-written ``J^T g``, structured like ``D``.
      g: the cotangent, structured like ``y``.
      key: PRNG key for the random tangents.
      dot: also run the dot-product test.
      fd: also run finite differences and the kink/tie probes (call with float64 ``D``).

    Non-finite values: ``hand_nonfinite`` counts the elements where the hand-written value is
    non-finite and the reference finite, ``ref_nonfinite`` the reverse; elsewhere non-finite pairs
    are left out of the element-wise errors. The scalar witnesses (dot, fd) take the raw values,
    so a non-finite ``hand`` makes them NaN (a failure).

    Returns:
      A dict of (L,) arrays: ``max_abs``, ``argmax``, ``scale``, ``cos``, ``hand_nonfinite``,
      ``ref_nonfinite`` (vjp); ``lhs``, ``rhs``,
      ``dscale`` (dot); ``fd``, ``fscale``, ``fatol``, ``kink``, ``tie``, ``tie_expected``, ``tatol`` (fd).
    """
    theta, unravel, offsets, sizes = _segments(D)
    M = _masks(theta.size, offsets, sizes)
    f = _flat_out(F, unravel)
    y, vjp = jax.vjp(f, theta)
    gf = ravel_pytree(g)[0]
    ref_raw = _f64(vjp(gf.astype(y.dtype))[0])
    hd_raw = _f64(ravel_pytree(hand)[0])
    hand_ok, ref_ok = jnp.isfinite(hd_raw), jnp.isfinite(ref_raw)
    # non-finite values are compared by where they are, finite ones by value
    hd, ref = jnp.where(hand_ok & ref_ok, hd_raw, 0.0), jnp.where(hand_ok & ref_ok, ref_raw, 0.0)
    err = hd - ref

    def seg_max(v):  # (n,) -> (L,) max over each leaf
        return jnp.max(jnp.where(M, jnp.abs(v)[None], 0.0), axis=1, initial=0.0)

    def seg_dot(a, b):  # (n,) x (n,) or (L, n) -> (L,)
        return jnp.sum(jnp.where(M, a * b, 0.0), axis=1)

    den = jnp.sqrt(seg_dot(hd, hd) * seg_dot(ref, ref))
    out = {
        "max_abs": seg_max(err),
        "argmax": jnp.argmax(jnp.where(M, jnp.abs(err)[None], -1.0), axis=1) - jnp.asarray(offsets),
        "scale": jnp.maximum(seg_max(ref), seg_max(hd)),
        "cos": jnp.where(
            den > 0, seg_dot(hd, ref) / jnp.where(den > 0, den, 1.0), jnp.where(seg_max(err) == 0, 1.0, 0.0)
        ),
        "hand_nonfinite": seg_dot((~hand_ok & ref_ok).astype(jnp.float64), 1.0),
        "ref_nonfinite": seg_dot((hand_ok & ~ref_ok).astype(jnp.float64), 1.0),
    }
    if not (dot or fd):
        return out

    V = jax.random.normal(key, theta.shape, theta.dtype)
    T = jnp.where(M, V[None], 0).astype(theta.dtype)  # (L, n): one random tangent per leaf
    rhs = seg_dot(hd_raw, _f64(V))  # <hand, v_j>
    g64 = _f64(gf)
    if dot:
        Jv = _f64(jax.vmap(lambda t: jax.jvp(f, (theta,), (t,))[1])(T))  # (L, m)
        out.update(
            lhs=Jv @ g64,
            rhs=rhs,
            dscale=jnp.abs(Jv) @ jnp.abs(g64) + seg_dot(jnp.abs(hd_raw), jnp.abs(_f64(V))),
        )
    if fd:
        size = jnp.maximum(1.0, seg_max(theta))
        h, t = FD_STEP * size, TIE_STEP * size
        U = (
            jnp.where(M, err[None], 0.0) / jnp.where(seg_max(err) > 0, seg_max(err), 1.0)[:, None]
        )  # max-norm 1
        steps = jnp.concatenate([h[:, None] * T, -h[:, None] * T, t[:, None] * U, -t[:, None] * U])
        Y = _f64(jax.vmap(f)(theta[None] + steps.astype(theta.dtype)))  # (4L, m)
        y0 = _f64(y)
        Yp, Ym, Yup, Yum = jnp.split(Y, 4)
        out.update(
            fd=(Yp - Ym) @ g64 / (2 * h),
            rhs=rhs,
            fscale=jnp.abs(Yp - Ym) @ jnp.abs(g64) / (2 * h) + jnp.abs(rhs),
            fatol=64 * EPS64 * (jnp.abs(y0) @ jnp.abs(g64)) / h,
            kink=jnp.abs(Yp + Ym - 2 * y0) @ jnp.abs(g64) / h,  # sum_k |g_k (D+ - D-)_k|: bounds the fd error
            tie=jnp.abs(Yup + Yum - 2 * y0) @ jnp.abs(g64) / t,  # at a kink
            tie_expected=jnp.abs(seg_dot(err, U)),
            tatol=64 * EPS64 * (jnp.abs(y0) @ jnp.abs(g64)) / t,
        )
    return out
