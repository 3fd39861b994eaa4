"""Direct feedback alignment (Nøkland 2016): the output error, sent straight down to every weight level.

With e = dL/dy at the network's output, every weight level above the bottom one (Dense, Conv1D,
Conv2D: a leaf with ``extras["feedback_backward"]``; the bottom is the first in forward order) hands
down ``dx^n = e · B_n`` instead of ``g Wᵀ``; ``B_n`` is a fixed random array of shape
``(*x^n.shape[1:], *y.shape[1:])`` (axis 0 is the batch), drawn N(0, 1/size(x^n)) by
``init_state``. Every level's own dω is backprop's on the cotangent that arrives, so the top
level's gradient is exact, and the levels between (activations, pooling, normalisation) keep their
own backward. The rule is not local (every level needs e), so the rule net is one leaf that runs
``net``'s walk itself; :func:`~jaxbp.rules.check_rule` checks it level by level.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.combinators import walk_backward, walk_forward
from jaxbp.core import Array, Layer, apply, init_state, layer_name, output_shape
from jaxbp.errors import UsageError
from jaxbp.rules._common import RuleSpec, as_key, has_feedback, leaves, path_str


def project(e: Array, B: Array) -> Array:
    """``e · B``: (batch, *out) with B (*x, *out) -> (batch, *x), contracting the output axes."""
    out_axes = tuple(range(1, e.ndim))
    b_axes = tuple(range(B.ndim - len(out_axes), B.ndim))
    return lax.dot_general(e, B.astype(e.dtype), ((out_axes, b_axes), ((), ())))


def feedback_paths(net: Layer, input_shape) -> list:
    """The leaves that get a B_n: every weight leaf but the bottom one, forward order."""
    return [lf for lf in leaves(net, input_shape) if has_feedback(lf.layer)][1:]


def draw_dfa_feedback(net: Layer, key: Array, input_shape) -> dict:
    """``{path: B_n}``, B_n ~ N(0, 1/size(x^n)) of shape (*x^n[1:], *y[1:]), from ``fold_in(key, i)``."""
    out = output_shape(net, input_shape)[1:]
    fb = {}
    for i, lf in enumerate(feedback_paths(net, input_shape)):
        xs = tuple(lf.x_shape[1:])
        std = 1.0 / math.sqrt(max(math.prod(xs), 1))
        fb[path_str(lf.path)] = std * jax.random.normal(jax.random.fold_in(key, i), (*xs, *out))
    return fb


def dfa_leaf(e: Array):
    """The walk's leaf for DFA: dω from the level's own backward; dx^n = e · B_n where the level has a B_n."""

    def leaf(path, layer, params, res, g):
        r, B = res
        dparams, dx = layer.backward(params, r, g)
        return (dparams, dx) if B is None else (dparams, project(e, B).astype(dx.dtype))

    return leaf


def _dfa_net(net: Layer, key: Array | int, backward_leaf=dfa_leaf) -> Layer:
    key = as_key(key)
    name = f"dfa({layer_name(net)})"

    def forward(params, x, *, state, key, train):
        net_state, fb = state

        def leaf(path, layer, p, xx, *, state, key, train):
            y, r, s = apply(layer, p, xx, state=state, key=key, train=train)
            return y, (r, fb.get(path_str(path))), s

        y, res, net_state = walk_forward(net, params, x, leaf, state=net_state, key=key, train=train)
        return y, res, (net_state, fb)

    def backward(params, res, g):
        # e = g (dL/dy at the output); weight level n above the bottom: dx^n = e · B_n; dω^n backprop's on g^n
        return walk_backward(net, params, res, g, backward_leaf(g))

    def check_forward(params, x, *, state, key, train):
        # value y; each fed-back level sees sg(x^n) and adds x^n · B_n - sg(x^n · B_n) to y: VJP at e is DFA
        net_state, fb = state
        extra = []

        def leaf(path, layer, p, xx, *, state, key, train):
            B = fb.get(path_str(path))
            if B is None:
                y, r, s = apply(layer, p, xx, state=state, key=key, train=train)
            else:
                y, r, s = apply(layer, p, lax.stop_gradient(xx), state=state, key=key, train=train)
                t = jnp.tensordot(xx, lax.stop_gradient(B).astype(xx.dtype), axes=xx.ndim - 1)
                extra.append(t - lax.stop_gradient(t))
            return y, (r, B), s

        y, res, net_state = walk_forward(net, params, x, leaf, state=net_state, key=key, train=train)
        for t in extra:
            y = y + t.astype(y.dtype)
        return y, res, (net_state, fb)

    def state_init(input_shape):
        if not feedback_paths(net, input_shape):
            raise UsageError(
                f"{name}: needs at least two weight levels (Dense, Conv) to feed the error back to"
            )
        return init_state(net, input_shape), draw_dfa_feedback(net, key, input_shape)

    spec = RuleSpec(name="dfa", net=net, key=key, backward_leaf=backward_leaf, walk_net=net)
    extras = {"check_forward": check_forward, "rule": lambda: spec}
    return Layer(net.init, forward, backward, state_init, name=name, extras=extras)


def direct_feedback_alignment(net: Layer, *, key: Array | int = 0) -> Layer:
    """Direct feedback alignment: weight levels above the bottom hand down e · B_n, e = dL/dy at the output.

    Args:
      net: any network whose leading axis is the batch; it needs two weight levels or more.
      key: the key (or int seed) each B_n is drawn from by ``init_state``.

    Returns:
      A stateful network (one leaf) with ``net``'s init, params and forward; state
      ``(net_state, {path: B_n})``.
    """
    return _dfa_net(net, key)


__all__ = ["direct_feedback_alignment", "project"]
