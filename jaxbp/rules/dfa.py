"""Direct feedback alignment (Nøkland 2016): the output error, sent straight down to every weight level.

With e = dL/dy at the network's output, every weight level above the bottom one (the first in
forward order) hands down ``dx^n = e · B_n`` instead of ``g Wᵀ``; ``B_n`` is a fixed random array
of shape ``(*x^n.shape[1:], *y.shape[1:])`` (axis 0 is the batch), drawn N(0, 1/size(x^n)) by
``init_state``. Every level's own dω is backprop's on the cotangent that arrives, so the top
level's gradient is exact, and the levels between (activations, pooling, normalisation) keep their
own backward. The rule is not local (every level needs e): the rule net carries one
``check_forward`` for the whole network, and :func:`~jaxbp.rules.check_rule` checks it level by level.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.combinators import leaves, walk_forward, walk_params
from jaxbp.contract import path_str
from jaxbp.core import Array, Layer, apply, layer_name, linear_residual
from jaxbp.errors import UsageError
from jaxbp.rules.net import is_weight_level, make
from jaxbp.rules.registry import RULES, Rule, register


def project(e: Array, B: Array) -> Array:
    """``e · B``: (batch, *out) with B (*x, *out) -> (batch, *x), contracting the output axes."""
    out_axes = tuple(range(1, e.ndim))
    b_axes = tuple(range(B.ndim - len(out_axes), B.ndim))
    return lax.dot_general(e, B.astype(e.dtype), ((out_axes, b_axes), ((), ())))


def _init(leaf, key, out):
    # B_n ~ N(0, 1 / size(x^n)) of shape (*x^n[1:], *y[1:])
    if not hasattr(out, "shape"):
        raise UsageError("dfa: needs a network with one output array to send its error down")
    xs = tuple(leaf.x_shape[1:])
    std = 1.0 / math.sqrt(max(math.prod(xs), 1))
    return std * jax.random.normal(key, (*xs, *out.shape[1:]))


def _like(net: Layer, params, input_shape):
    """B_n = the top level's transposed Jacobian: exact when the network is [bottom weight level, ...,
    top weight level] with nothing after the top and the top linear in its input."""
    if input_shape is None:
        raise UsageError("feedback_like: dfa's feedback is shaped by the activations; pass input_shape=")
    found = leaves(net, input_shape)
    weights = [lf for lf in found if is_weight_level(lf.layer)]
    if len(weights) != 2:
        raise UsageError(
            f"feedback_like: no feedback turns dfa on {len(weights)} weight levels into backprop"
            " (only a network with one hidden layer has one)"
        )
    top = weights[-1]
    if found[-1].path != top.path:
        after = found[-1]
        raise UsageError(
            "feedback_like: no feedback turns dfa into backprop:"
            f" level {after.path} ({layer_name(after.layer)}) follows the top weight level {top.path},"
            " so e is not the cotangent the top level receives"
        )
    if top.layer.per_example is None or top.layer.per_example.hessian_residual is not linear_residual:
        raise UsageError(f"feedback_like: the top weight level {top.path} is not linear in its input")
    p_top = _params_at(net, params, top.path)
    x = jnp.zeros((1, *top.x_shape[1:]), top.x.dtype)
    y, res = top.layer.forward(p_top, x)
    eye = jnp.eye(math.prod(y.shape[1:]), dtype=y.dtype).reshape(-1, 1, *y.shape[1:])
    # row k of the transposed Jacobian: the level's own backward of the unit cotangent e_k (no autodiff)
    rows = jax.vmap(lambda gk: top.layer.backward(p_top, res, gk)[1][0])(eye)  # (K, *x[1:])
    return {weights[1].path: jnp.moveaxis(rows, 0, -1).reshape(*x.shape[1:], *y.shape[1:])}


def _params_at(net: Layer, params, path: str):
    found = []
    walk_params(net, params, lambda p, layer, pp: found.append(pp) if path_str(p) == path else None)
    return found[0]


def _check_forward(net: Layer):
    def check_forward(params, x, *, state, key, train):
        # value y; each fed-back level sees sg(x^n) and adds x^n · B_n - sg(x^n · B_n) to y: VJP at e is DFA
        net_state, fb = state
        extra = []

        def leaf(path, layer, p, xx, *, state, key, train):
            B = fb.get(path_str(path))
            if B is None:
                return apply(layer, p, xx, state=state, key=key, train=train)
            y, r, s = apply(layer, p, lax.stop_gradient(xx), state=state, key=key, train=train)
            t = jnp.tensordot(xx, lax.stop_gradient(B).astype(xx.dtype), axes=xx.ndim - 1)
            extra.append(t - lax.stop_gradient(t))
            return y, (r, B), s

        y, res, net_state = walk_forward(net, params, x, leaf, state=net_state, key=key, train=train)
        for t in extra:
            y = y + t.astype(y.dtype)
        return y, res, (net_state, fb)

    return check_forward


DFA = register(
    Rule(
        "dfa",
        "direct feedback alignment: every weight level above the bottom hands down e · B_n, e = dL/dy",
        init=_init,
        step=lambda c: (c.stored, c.stored),
        dx=lambda layer, params, res, g, B, e: project(e, B),
        fed=lambda index: index > 0,
        like=_like,
        local=False,
        reference="dfa_grads",
        make=lambda net, *, key=0: make(net, RULES["dfa"], key=key, check_forward=_check_forward(net)),
        requires="at least two weight levels (the bottom one gets no feedback)",
    )
)


def direct_feedback_alignment(net: Layer, *, key: Array | int = 0) -> Layer:
    """Direct feedback alignment: weight levels above the bottom hand down e · B_n, e = dL/dy at the output.

    Args:
      net: any network whose leading axis is the batch; it needs two weight levels or more.
      key: the key (or int seed) each B_n is drawn from by ``init_state``.

    Returns:
      A stateful network with ``net``'s init, params, forward and paths; state ``(net_state, {path: B_n})``.
    """
    return DFA.make(net, key=key)


__all__ = ["DFA", "direct_feedback_alignment", "project"]
