"""``value_grad_and(net, loss, *names)``: the loss, its gradient and more from the same backward."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxbp.core import Array, Layer, Loss, Params, State, apply
from jaxbp.errors import UsageError
from jaxbp.quantities.engine import (
    FIRST_ORDER,
    check_names,
    curvature_walk,
    first_order_leaf,
    join_kron,
    loss_sqrt,
    pick,
    walk_bundles,
)


def _residual_columns(S_loss, residuals: dict):
    """diag_hessian's columns: the loss's, then for each residual r its positive and negative parts.

    A residual ``r = g ⊙ f''(x)`` (B, ...) is the diagonal matrix ``diag(r_n)`` per example; it is
    ``sum_j sqrt(r+)_j e_j (.)ᵀ - sum_j sqrt(r-)_j e_j (.)ᵀ``: 2 D columns (D = size per example) of
    weight +1 and -1, injected at the leaf's input. Returns (top columns, weights, inject).
    """
    blocks = [(path, r) for path, r in residuals.items() if r is not None]
    sizes = [2 * (r.size // r.shape[0]) for _, r in blocks]
    K0, K = S_loss.shape[0], S_loss.shape[0] + sum(sizes)
    dtype = S_loss.dtype
    top = jnp.concatenate([S_loss, jnp.zeros((K - K0, *S_loss.shape[1:]), dtype)])
    weights, inject, start = [jnp.ones(K0, dtype)], {}, K0
    for (path, r), size in zip(blocks, sizes, strict=True):
        D = size // 2
        eye = jnp.eye(D, dtype=dtype).reshape(D, 1, *r.shape[1:])
        cols = jnp.concatenate(
            [eye * jnp.sqrt(jnp.maximum(r, 0))[None], eye * jnp.sqrt(jnp.maximum(-r, 0))[None]]
        )
        pad = ((start, K - start - size),) + ((0, 0),) * r.ndim
        inject[path] = jnp.pad(cols.astype(dtype), pad)
        weights += [jnp.ones(D, dtype), -jnp.ones(D, dtype)]
        start += size
    return top, jnp.concatenate(weights), inject


def value_grad_and(net: Layer, loss: Loss, *names: str, mc_samples: int = 1, train: bool = False) -> Callable:
    """The loss, its gradient and the requested quantities in one program.

    Args:
      net: the network (every parameterised leaf must provide the extras its quantities need).
      loss: a mean-reduced loss (its ``sqrt_hessian`` extras give the second-order quantities).
      *names: any of ``batch_grad``, ``batch_l2``, ``sum_grad_squared``, ``variance``, ``diag_ggn``,
        ``diag_ggn_mc``, ``kfac``, ``kflr``, ``diag_hessian`` (see :mod:`jaxbp.quantities`).
      mc_samples: samples of the loss Hessian's factor for ``diag_ggn_mc`` and ``kfac``.
      train: the mode of stateful layers (default eval: BatchNorm uses its running statistics,
        Dropout is the identity; train-mode BatchNorm couples the examples and is refused).

    Returns:
      ``f(params, x, target, *, state=(), key=None) -> (value, grads, q)`` with ``q[name]`` in the
      params' tree structure (``kfac``/``kflr``: per param ``(A, G)``, or ``(G,)`` for a bias).
      ``key`` is needed by ``diag_ggn_mc`` and ``kfac`` (and by Dropout in train mode). Errors for
      unsupported layers are raised at trace time and name the level, the layer and the quantity.
    """
    names = check_names(names)
    first = tuple(n for n in names if n in FIRST_ORDER)
    if mc_samples < 1:
        raise UsageError(f"value_grad_and: mc_samples must be >= 1, got {mc_samples}")

    def f(params: Params, x: Array, target: Array, *, state: State = (), key: Array | None = None):
        sampled = {"diag_ggn_mc", "kfac"} & set(names)
        if sampled and key is None:
            raise UsageError(f"value_grad_and: {sorted(sampled)} sample the loss Hessian and need key=")
        fkey, mkey = jax.random.split(key) if key is not None else (None, None)
        y, res, _ = apply(net, params, x, state=state, key=fkey, train=train)
        value, lres = loss.forward(y, target)
        g = loss.backward(lres)
        residuals = {} if "diag_hessian" in names else None
        kron = next((n for n in ("kflr", "kfac") if n in names), None)
        tree, _ = walk_bundles(net, params, res, g, first_order_leaf(first, x.shape[0], residuals, kron))
        q = {n: pick(tree, n) for n in first}
        exact = [n for n in ("diag_ggn", "kflr") if n in names]
        if exact:
            S = loss_sqrt(loss, "sqrt_hessian", exact[0])(lres)
            d, k = curvature_walk(
                net, params, res, S, diag="diag_ggn" in names, kron="kflr" in names, quantity=exact[0]
            )
            q.update({"diag_ggn": d} if d is not None else {}, **({"kflr": k} if k is not None else {}))
            if k is not None:
                q["kflr"] = join_kron(pick(tree, "kronA"), k)
        mc = [n for n in ("diag_ggn_mc", "kfac") if n in names]
        if mc:
            S = loss_sqrt(loss, "sqrt_hessian_mc", mc[0])(lres, mkey, mc_samples)
            d, k = curvature_walk(
                net, params, res, S, diag="diag_ggn_mc" in names, kron="kfac" in names, quantity=mc[0]
            )
            q.update({"diag_ggn_mc": d} if d is not None else {}, **({"kfac": k} if k is not None else {}))
            if k is not None:
                q["kfac"] = join_kron(pick(tree, "kronA"), k)
        if "diag_hessian" in names:
            S = loss_sqrt(loss, "sqrt_hessian", "diag_hessian")(lres)
            top, w, inject = _residual_columns(S, residuals)
            q["diag_hessian"], _ = curvature_walk(
                net,
                params,
                res,
                top,
                diag=True,
                kron=False,
                quantity="diag_hessian",
                weights=w,
                inject=inject,
            )
        return value, pick(tree, "grad"), {n: q[n] for n in names}

    return f
