"""Gradient flow: the backward walk over a network's levels, exposing every level's gradients.

A *level* is a leaf of the network (a layer that is not a combinator), named by its path:
``"3"`` for level 3 of a ``serial``, ``"3/branch/1"`` for level 1 inside the residual branch
of level 3 (see :func:`jaxbp.combinators.leaves`). Level ``n`` in path order maps its input
``x^n`` to its output; the manual backward computes dL/dx^n and dL/dω^n at every level anyway;
here they are kept (as norms) instead of thrown away. The same walk locates where values first
become non-finite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.combinators import path_order, walk_backward, walk_forward
from jaxbp.contract import backprop, path_str
from jaxbp.core import Array, Layer, Loss, Params, State, apply, layer_name


def norm(tree) -> Array:
    """The Euclidean norm of all leaves of ``tree`` together, at least float32 (0 for an empty tree)."""
    squares = [
        jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))) for x in jax.tree.leaves(tree)
    ]
    return jnp.sqrt(sum(squares, jnp.float32(0)))


def backward_with_flow(net: Layer, params: Params, res, g: Array) -> tuple[Params, Array, Array]:
    """``net.backward`` walked level by level (:func:`~jaxbp.combinators.walk_backward`), recording norms.

    Args:
      net: any network (a single layer is one level).
      params: its params.
      res: the residuals from its forward.
      g: dL/dy, the cotangent of the network's output.

    Returns:
      ``(grads, dx_norms, dparam_norms)``: ``grads`` as from ``net.backward``; for the N levels in
      path order (:func:`~jaxbp.combinators.path_order`, the forward order), ``dx_norms[n]`` is
      ‖dL/dx^n‖ (the gradient level n hands down, ``n = 0`` the input's for a ``serial``),
      ``dparam_norms[n]`` is ‖dL/dω^n‖ (0 for levels without params). Both have shape ``(N,)``.
    """
    seen = {}

    def leaf(path, layer, p, r, gg, spec):
        # (dω^n, dx^n) = backward^n(ω^n, res^n, dx^{n+1});  record ‖dx^n‖, ‖dω^n‖
        dp, dx = backprop(path, layer, p, r, gg, spec)
        seen[path_str(path)] = (norm(dx), norm(dp))
        return dp, dx

    grads, _ = walk_backward(net, params, res, g, leaf)
    order = sorted(seen, key=path_order)
    return grads, jnp.stack([seen[p][0] for p in order]), jnp.stack([seen[p][1] for p in order])


def flow_norms(
    net: Layer, loss: Loss, params: Params, state: State, key: Array, x: Array, target: Array
) -> tuple[Array, Array]:
    """``(dx_norms, dparam_norms)`` of one train-mode forward and backward on ``(x, target)``; jit-able."""
    y, res, _ = apply(net, params, x, state=state, key=key, train=True)
    _, loss_res = loss.forward(y, target)
    _, dx_norms, dp_norms = backward_with_flow(net, params, res, loss.backward(loss_res))
    return dx_norms, dp_norms


class NonFinite(NamedTuple):
    """Where non-finite values start: ``phase`` is "forward", "loss", "backward" or "update".

    ``level`` is the level's path (``"2"``, ``"3/branch/1"``), None for the loss and the update.
    """

    phase: str
    level: str | None
    name: str

    def describe(self) -> str:
        """A one-line human description."""
        if self.level is None:
            return {
                "loss": f"the loss ({self.name}) is non-finite although the network's output is finite",
                "update": "losses and gradients are finite, but the optimizer update made params non-finite"
                " (learning rate too high?)",
            }.get(self.phase, self.phase)
        what = "output" if self.phase == "forward" else "gradient (dL/dx or dL/dω)"
        return f"{self.phase} pass: level {self.level} ({self.name}) is the first whose {what} is non-finite"


def _finite(tree) -> bool:
    return all(bool(jnp.isfinite(x).all()) for x in jax.tree_util.tree_leaves(tree))


def locate_nonfinite(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State = (),
    key: Array | None = None,
    train: bool = True,
) -> NonFinite | None:
    """Re-run one step level by level (eagerly) and say where values first become non-finite.

    Forward: the first level whose output is non-finite. Otherwise the loss. Otherwise, walking down
    from the top level, the first level whose gradient (dL/dx^n or dL/dω^n) is non-finite.
    The walk (:func:`~jaxbp.combinators.walk_forward`) folds ``key`` exactly as the network does,
    so a step is reproduced bit for bit.

    Returns:
      A :class:`NonFinite`, or None when forward and backward are finite throughout.
    """
    found: list[NonFinite] = []

    def forward_leaf(path, layer, p, xx, *, state, key, train):
        out = apply(layer, p, xx, state=state, key=key, train=train)
        if not found and not _finite(out[0]):
            found.append(NonFinite("forward", path_str(path), layer_name(layer)))
        return out

    y, res, _ = walk_forward(net, params, x, forward_leaf, state=state, key=key, train=train)
    if found:
        return found[0]
    value, loss_res = loss.forward(y, target)
    if not _finite(value):
        return NonFinite("loss", None, loss.name)

    def backward_leaf(path, layer, p, r, g, spec):
        dp, dx = backprop(path, layer, p, r, g, spec)
        if not found and not (_finite(dx) and _finite(dp)):
            found.append(NonFinite("backward", path_str(path), layer_name(layer)))
        return dp, dx

    walk_backward(net, params, res, loss.backward(loss_res), backward_leaf)
    return found[0] if found else None
