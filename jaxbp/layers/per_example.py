"""Helpers for the :class:`~jaxbp.core.PerExample` hooks layers define next to their backwards.

Each hook takes the leaf's own ``(params, res, g)`` (see :class:`jaxbp.core.PerExample` for what
each returns); a loss provides ``sqrt_hessian``/``sqrt_hessian_mc`` (:class:`jaxbp.core.Loss`).
These helpers are shared by several constructors; none calls autodiff.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp.core import Kron as Kron
from jaxbp.core import PerExample, linear_residual


def per_example_backward(backward, params, res, g):
    """The per-example dparams: ``backward`` vmapped over examples (every array in ``res`` and ``g``
    has the batch axis first). This is ``jax.vmap`` of a hand-written backward, not autodiff."""

    def one(r, gg):
        dparams, _ = backward(params, jax.tree.map(lambda a: a[None], r), gg[None])
        return dparams

    return jax.vmap(one)(res, g)


def squared_norms(per_example) -> Any:
    """Per leaf, the squared norm of each example's slice: (B, ...) -> (B,)."""
    return jax.tree.map(lambda a: jnp.sum(a.reshape(a.shape[0], -1) ** 2, 1), per_example)


def sum_squares(per_example) -> Any:
    """Per leaf, the sum over the batch of the squared per-example values: (B, ...) -> (...)."""
    return jax.tree.map(lambda a: jnp.sum(a * a, 0), per_example)


def as_sequence(a):
    """(B, ..., F) -> (B, T, F) with T the product of the middle axes (T = 1 for (B, F))."""
    return a.reshape(a.shape[0], -1, a.shape[-1])


def outer_l2(x, g):
    """||x_nᵀ g_n||_F² per example for x (B, T, I) and g (B, T, O), the cheaper way by size.

    Gram ("ghost") form ``sum_{t,t'} (x_t·x_t')(g_t·g_t')`` costs ~T²(I + O) per example, the
    materialised ``x_nᵀ g_n`` ~T I O; the first is taken when ``T (I + O) <= I O``.
    """
    _, T, I = x.shape
    O = g.shape[-1]
    if T == 1:
        return jnp.sum(x[:, 0] ** 2, -1) * jnp.sum(g[:, 0] ** 2, -1)
    if T * (I + O) <= I * O:
        return jnp.einsum("bts,bts->b", jnp.einsum("bti,bsi->bts", x, x), jnp.einsum("bto,bso->bts", g, g))
    return jnp.sum(jnp.einsum("bti,bto->bio", x, g) ** 2, (1, 2))


def mean_outer(x, n: int):
    """``sum_{b,t} x_bt x_btᵀ / n`` for x (B, T, I): the input factor A of KFAC."""
    return jnp.einsum("bti,btj->ij", x, x) / n


def summed_outer(g):
    """``sum_b (sum_t g_bt)(sum_t g_bt)ᵀ`` for g (B, T, O): the output factor G of one column."""
    s = g.sum(1)
    return s.T @ s


def batch_size_of(res_leaf) -> int:
    """The leading (batch) axis of an array."""
    return int(res_leaf.shape[0])


def prod(shape) -> int:
    """``math.prod`` of a shape as a Python int."""
    return int(math.prod(shape))


def vector_kron(per_example) -> Any:
    """Kronecker blocks of vector params (scales, biases) from one column's per-example grads:
    the exact GGN block of each ``(C,)`` leaf, ``G = sum_n d_n d_nᵀ`` (no input factor)."""
    return jax.tree.map(lambda d: Kron(None, d.T @ d), per_example)


def dense_hooks(use_bias: bool, weight: str = "W", bias: str = "b") -> PerExample:
    """The per-example hooks of ``y = x @ W (+ b)`` with residual ``x`` (Dense; BinaryDense, whose
    gradient goes straight through to W): per example n over its positions t (T = 1 for (B, in)),
    ``dW_n = sum_t x_nt g_ntᵀ``, ``db_n = sum_t g_nt``; ``||dW_n||² = ||x_n||²||g_n||²`` (T = 1) or
    the Gram form; KFAC's ``A = sum x xᵀ / N``, ``G = sum_n (sum_t g)(sum_t g)ᵀ``."""

    def with_bias(out, gs, f):
        return out | ({bias: f(gs.sum(1))} if use_bias else {})

    def batch_grad(params, x, g):
        xs, gs = as_sequence(x), as_sequence(g)
        # T = 1: an outer product per example, a broadcast rather than a batched matmul
        single = xs.shape[1] == 1
        dW = xs[:, 0, :, None] * gs[:, 0, None, :] if single else jnp.einsum("bti,bto->bio", xs, gs)
        return with_bias({weight: dW}, gs, lambda a: a)

    def batch_l2(params, x, g):
        xs, gs = as_sequence(x), as_sequence(g)
        return with_bias({weight: outer_l2(xs, gs)}, gs, lambda a: jnp.sum(a**2, -1))

    def sum_grad_squared(params, x, g):
        # T = 1: sum_n dW_n² = (x²)ᵀ(g²); else the per-example dW_n squared and summed
        xs, gs = as_sequence(x), as_sequence(g)
        if xs.shape[1] == 1:
            dW2 = (xs[:, 0] ** 2).T @ (gs[:, 0] ** 2)
        else:
            dW2 = sum_squares(jnp.einsum("bti,bto->bio", xs, gs))
        return with_bias({weight: dW2}, gs, lambda a: jnp.sum(a**2, 0))

    def kron(params, x, g):
        # A = sum_{n,t} x xᵀ / N;  G = sum_n (sum_t g)(sum_t g)ᵀ for this column g
        xs, gs = as_sequence(x), as_sequence(g)
        G = summed_outer(gs)
        return with_bias({weight: Kron(mean_outer(xs, xs.shape[0]), G)}, gs, lambda a: Kron(None, G))

    return PerExample(batch_grad, batch_l2, sum_grad_squared, kron, hessian_residual=linear_residual)
