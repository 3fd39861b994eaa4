"""The witnesses a hand-written backward is compared against: raw values traced, statistics on the host.

For a function ``F(D) -> y`` (a layer's forward with everything but the differentiated
arguments ``D = (params, x)`` fixed), a hand-written ``hand = backward(g)`` and a
cotangent ``g``, :func:`witness_values` computes (jit-able, vmap-able) what the witnesses need
and :func:`witness_stats` turns it, in NumPy, into per-leaf statistics of

* ``vjp``: ``hand`` against ``jax.vjp(F, D)[1](g)``, element by element;
* ``dot``: the dot-product test ``<g, J v> = <J^T g, v>``, ``J v`` by ``jax.jvp``, one random
  tangent ``v`` per leaf (zero in the other leaves);
* ``fd``: ``<g, (F(D + h v) - F(D - h v)) / 2h>`` against ``<hand, v>`` (only in float64), with
  the one-sided differences that tell a kink from a bug, and a second pair of one-sided
  differences along the direction ``hand - reference``: if ``F`` is not differentiable along
  the very direction in which the two disagree, the point is a tie (ReLU at 0, max-pool
  ties), where hand-written and autodiff subgradients may legitimately differ.

Everything that needs the function is computed under one trace (``F`` is evaluated once, vmapped
over the perturbed points; ``jax.jvp`` once, vmapped over the tangents), so one compile per check.
The random tangents come in as an argument (drawn on the host) and the reductions to statistics run
in NumPy afterwards: a check runs its program once, so every fusion kept out of it is compile time
saved (XLA:CPU compiles each fusion to machine code; random draws and segment reductions were
two thirds of them).
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


def witness_values(F, D, hand, g, V=None, *, dot: bool = True, fd: bool = False) -> dict:
    """What the witnesses need, traced: flat float64 vectors for :func:`witness_stats`.

    Args:
      F: ``D -> y``; y any pytree of floating arrays.
      D: the differentiated arguments (a pytree of floating arrays of one dtype).
      hand: the hand-written ``J^T g``, structured like ``D``.
      g: the cotangent, structured like ``y``.
      V: a random tangent, flat, as long as ``D`` (needed with ``dot`` or ``fd``); leaf ``j`` is
        moved along its own segment of ``V`` (zero in the other leaves).
      dot: also compute ``J v_j`` for the dot-product test.
      fd: also evaluate ``F`` at the finite-difference and tie points (call with float64 ``D``).

    Returns:
      ``hand``, ``ref`` (n,) always; with ``dot`` or ``fd``: ``V`` (n,), ``g`` (m,); with ``dot``: ``Jv``
      (L, m); with ``fd``: ``Y`` (4L, m) at ``D +- h v_j`` and ``D +- t u_j``, ``y0`` (m,), ``h`` and
      ``t`` (L,).
    """
    theta, unravel, offsets, sizes = _segments(D)
    f = _flat_out(F, unravel)
    y, vjp = jax.vjp(f, theta)
    gf = ravel_pytree(g)[0]
    out = {"hand": _f64(ravel_pytree(hand)[0]), "ref": _f64(vjp(gf.astype(y.dtype))[0])}
    if not (dot or fd):
        return out
    M = _masks(theta.size, offsets, sizes)
    V = V[: theta.size]
    T = jnp.where(M, V[None].astype(theta.dtype), 0).astype(theta.dtype)  # (L, n): one tangent per leaf
    out.update(V=_f64(V), g=_f64(gf))
    if dot:
        out["Jv"] = _f64(jax.vmap(lambda t: jax.jvp(f, (theta,), (t,))[1])(T))  # (L, m)
    if fd:

        def seg_max(v):  # (n,) -> (L,) max of |v| over each leaf
            return jnp.max(jnp.where(M, jnp.abs(v)[None], 0.0), axis=1, initial=0.0)

        both = jnp.isfinite(out["hand"]) & jnp.isfinite(out["ref"])
        err = jnp.where(both, out["hand"] - out["ref"], 0.0)
        size = jnp.maximum(1.0, seg_max(theta))
        h, t = FD_STEP * size, TIE_STEP * size
        e = seg_max(err)
        U = jnp.where(M, err[None], 0.0) / jnp.where(e > 0, e, 1.0)[:, None]  # max-norm 1 per leaf
        steps = jnp.concatenate([h[:, None] * T, -h[:, None] * T, t[:, None] * U, -t[:, None] * U])
        out.update(Y=_f64(jax.vmap(f)(theta[None] + steps.astype(theta.dtype))), y0=_f64(y), h=h, t=t)
    return out


def witness_stats(raw: dict, sizes) -> dict:
    """Per-leaf witness statistics (NumPy), each of shape (S, L), from :func:`witness_values`.

    Args:
      raw: the output of :func:`witness_values` as NumPy arrays with a leading seeds axis ``S``.
      sizes: the number of elements of each of the ``L`` leaves of ``D``.

    Non-finite values: ``hand_nonfinite`` counts the elements where the hand-written value is
    non-finite and the reference finite, ``ref_nonfinite`` the reverse; elsewhere non-finite pairs
    are left out of the element-wise errors. The scalar witnesses (dot, fd) take the raw values,
    so a non-finite ``hand`` makes them NaN (a failure).

    Returns:
      A dict of (S, L) arrays: ``max_abs``, ``argmax``, ``scale``, ``cos``, ``hand_nonfinite``,
      ``ref_nonfinite`` (vjp); ``lhs``, ``rhs``,
      ``dscale`` (dot); ``fd``, ``fscale``, ``fatol``, ``kink``, ``tie``, ``tie_expected``, ``tatol`` (fd).
    """
    per_seed = [
        _stats_one({k: np.asarray(v[i]) for k, v in raw.items()}, sizes) for i in range(len(raw["hand"]))
    ]
    return {k: np.stack([s[k] for s in per_seed]) for k in per_seed[0]}


def _stats_one(r: dict, sizes) -> dict:
    """:func:`witness_stats` of one seed."""
    sizes = np.asarray(sizes, np.int64)
    offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
    idx = np.arange(len(r["hand"]))[None]
    M = (idx >= offsets[:, None]) & (idx < (offsets + sizes)[:, None])

    def seg_max(v):
        return np.max(np.where(M, np.abs(v)[None], 0.0), axis=1, initial=0.0)

    def seg_dot(a, b):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.sum(np.where(M, a * b, 0.0), axis=1)

    hd_raw, ref_raw = r["hand"], r["ref"]
    hand_ok, ref_ok = np.isfinite(hd_raw), np.isfinite(ref_raw)
    both = hand_ok & ref_ok
    hd, ref = np.where(both, hd_raw, 0.0), np.where(both, ref_raw, 0.0)
    err = hd - ref
    den = np.sqrt(seg_dot(hd, hd) * seg_dot(ref, ref))
    out = {
        "max_abs": seg_max(err),
        "argmax": np.argmax(np.where(M, np.abs(err)[None], -1.0), axis=1) - offsets,
        "scale": np.maximum(seg_max(ref), seg_max(hd)),
        "cos": np.where(
            den > 0, seg_dot(hd, ref) / np.where(den > 0, den, 1.0), np.where(seg_max(err) == 0, 1.0, 0.0)
        ),
        "hand_nonfinite": seg_dot((~hand_ok & ref_ok).astype(np.float64), 1.0),
        "ref_nonfinite": seg_dot((hand_ok & ~ref_ok).astype(np.float64), 1.0),
    }
    if "V" not in r:
        return out
    V, g = r["V"], r["g"]
    with np.errstate(invalid="ignore", over="ignore"):
        rhs = seg_dot(hd_raw, V)  # <hand, v_j>
        if "Jv" in r:
            Jv = r["Jv"]
            out.update(
                lhs=Jv @ g, rhs=rhs, dscale=np.abs(Jv) @ np.abs(g) + seg_dot(np.abs(hd_raw), np.abs(V))
            )
        if "Y" in r:
            h, t, y0 = r["h"], r["t"], r["y0"]
            Yp, Ym, Yup, Yum = np.split(r["Y"], 4)
            e = seg_max(err)
            U = np.where(M, err[None], 0.0) / np.where(e > 0, e, 1.0)[:, None]
            ag = np.abs(g)
            out.update(
                fd=(Yp - Ym) @ g / (2 * h),
                rhs=rhs,
                fscale=np.abs(Yp - Ym) @ ag / (2 * h) + np.abs(rhs),
                fatol=64 * EPS64 * (np.abs(y0) @ ag) / h,
                kink=np.abs(Yp + Ym - 2 * y0) @ ag / h,  # sum_k |g_k (D+ - D-)_k|: bounds the fd error
                tie=np.abs(Yup + Yum - 2 * y0) @ ag / t,  # at a kink
                tie_expected=np.abs(seg_dot(err, U)),
                tatol=64 * EPS64 * (np.abs(y0) @ ag) / t,
            )
    return out
