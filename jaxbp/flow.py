"""Gradient flow: the backward walk over a ``serial`` network's levels, exposing every level's gradients.

Level ``n`` (0-based, as in ``serial``'s error messages) maps ``x^n`` to ``x^{n+1}``; ``x^0`` is the
network's input. The manual backward computes dL/dx^n and dL/dω^n at every level anyway;
here they are kept (as norms) instead of thrown away. The same walk locates where values
first become non-finite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core import Array, Layer, Loss, Params, State, apply, is_stateful, layer_name


def levels(net: Layer) -> tuple[Layer, ...]:
    """The levels of ``net``: its ``layers`` for a ``serial`` network, else ``(net,)``."""
    return net.layers or (net,)


def _per_level(net: Layer, tree) -> tuple:
    return tree if net.layers else (tree,)


def norm(tree) -> Array:
    """The Euclidean norm of all leaves of ``tree`` together, at least float32 (0 for an empty tree)."""
    squares = [
        jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))) for x in jax.tree.leaves(tree)
    ]
    return jnp.sqrt(sum(squares, jnp.float32(0)))


def backward_with_flow(net: Layer, params: Params, res, g: Array) -> tuple[Params, Array, Array]:
    """``net.backward`` walked level by level, recording each level's gradient norms.

    Args:
      net: a ``serial`` network (any other layer counts as one level).
      params: its params.
      res: the residuals from its forward.
      g: dL/dy, the cotangent of the network's output.

    Returns:
      ``(grads, dx_norms, dparam_norms)``: ``grads`` as from ``net.backward``; ``dx_norms[n]`` is
      ‖dL/dx^n‖ (the gradient level n hands down, ``n = 0`` the input's), ``dparam_norms[n]``
      is ‖dL/dω^n‖ (0 for levels without params). Both have shape ``(N,)``.
    """
    ls = levels(net)
    ps, rs = _per_level(net, params), _per_level(net, res)
    grads, dx_norms, dp_norms = [None] * len(ls), [None] * len(ls), [None] * len(ls)
    for n in reversed(range(len(ls))):
        # (dω^n, dx^n) = backward^n(ω^n, res^n, dx^{n+1});  record ‖dx^n‖, ‖dω^n‖
        grads[n], g = ls[n].backward(ps[n], rs[n], g)
        dx_norms[n], dp_norms[n] = norm(g), norm(grads[n])
    grads = tuple(grads) if net.layers else grads[0]
    return grads, jnp.stack(dx_norms), jnp.stack(dp_norms)


def flow_norms(
    net: Layer, loss: Loss, params: Params, state: State, key: Array, x: Array, target: Array
) -> tuple[Array, Array]:
    """``(dx_norms, dparam_norms)`` of one train-mode forward and backward on ``(x, target)``; jit-able."""
    y, res, _ = apply(net, params, x, state=state, key=key, train=True)
    _, loss_res = loss.forward(y, target)
    _, dx_norms, dp_norms = backward_with_flow(net, params, res, loss.backward(loss_res))
    return dx_norms, dp_norms


class NonFinite(NamedTuple):
    """Where non-finite values start: ``phase`` is "forward", "loss", "backward" or "update"."""

    phase: str
    level: int | None
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
    ``key`` is split across levels exactly as ``serial`` does, so a step is reproduced bit for bit.

    Returns:
      A :class:`NonFinite`, or None when forward and backward are finite throughout.
    """
    ls = levels(net)
    ps = _per_level(net, params)
    ss = _per_level(net, state) if is_stateful(net) else ((),) * len(ls)
    res = []
    for n, (layer, p, s) in enumerate(zip(ls, ps, ss, strict=True)):
        k = jax.random.fold_in(key, n) if key is not None and net.layers else key  # as serial does
        x, r, _ = apply(layer, p, x, state=s, key=k, train=train)
        res.append(r)
        if not _finite(x):
            return NonFinite("forward", n, layer_name(layer))
    value, loss_res = loss.forward(x, target)
    if not _finite(value):
        return NonFinite("loss", None, loss.name)
    g = loss.backward(loss_res)
    for n in reversed(range(len(ls))):
        dp, g = ls[n].backward(ps[n], res[n], g)
        if not (_finite(g) and _finite(dp)):
            return NonFinite("backward", n, layer_name(ls[n]))
    return None
