"""Feedback alignment and sign symmetry: at every weight level, a feedback B stands in for W in dx.

The rule net mirrors ``net``: same kind, same walk, same init and params, and every weight leaf
(a leaf whose constructor defines ``extras["feedback_backward"]``: Dense, Conv1D, Conv2D) replaced
by a *rule leaf* whose backward is ``feedback_backward`` with this step's B. Its state is
``(net_state, feedback)``, ``feedback`` a dict keyed by level path (``"3/branch/1"``) of what
each variant stores:

=======  ==============================  =========================================
variant  stored per weight level          B used by the step
=======  ==============================  =========================================
fa       B, a draw of W's initialiser     B
usf      s, the RMS of such a draw        s * sign(W)
frsf     |R|, R such a draw               |R| * sign(W)
brsf     nothing                          |R_t| * sign(W), R_t drawn from the step key
=======  ==============================  =========================================

The weight gradient is always backprop's on the cotangent that arrives. Each rule leaf has an
``extras["check_forward"]`` whose autodiff VJP is, by definition, what its backward computes
(``f(W, sg(x)) + f(sg(B), x) - sg(f(B, x))``): the checker verifies the rule against its definition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.core import Array, Layer, Walk, apply, init_state, layer_name
from jaxbp.errors import UsageError
from jaxbp.rules._common import RuleSpec, as_key, draw_weight, has_feedback, leaves, path_str, sub_feedback

_REDRAW = 0xB5F  # folded into a level's step key for brSF's fresh draw (apart from the layer's own use)


class Feedback(NamedTuple):
    """One variant: what it stores per weight level and the B it makes each step.

    Attributes:
      init: ``(layer, key, x_shape) -> stored`` (a pytree; ``()`` when nothing is stored).
      weight: ``(W, stored, fresh) -> B``; ``fresh()`` draws a new sample of W's initialiser.
    """

    init: Callable
    weight: Callable


def _rms(a: Array) -> Array:
    return jnp.sqrt(jnp.mean(jnp.square(a)))


VARIANTS: dict[str, Feedback] = {
    "fa": Feedback(init=lambda l, k, s: draw_weight(l, k, s), weight=lambda W, B, fresh: B),
    "usf": Feedback(
        init=lambda l, k, s: _rms(draw_weight(l, k, s)), weight=lambda W, s, fresh: s * jnp.sign(W)
    ),
    "frsf": Feedback(
        init=lambda l, k, s: jnp.abs(draw_weight(l, k, s)), weight=lambda W, R, fresh: R * jnp.sign(W)
    ),
    "brsf": Feedback(init=lambda l, k, s: (), weight=lambda W, _, fresh: jnp.abs(fresh()) * jnp.sign(W)),
}


def step_feedback(variant: Feedback, layer: Layer, params, x_shape, stored, key) -> Array | None:
    """The B of this step for a weight leaf (None when brSF has no key to draw from)."""
    W = layer.extras["feedback_weight"](params)

    def fresh():
        if key is None:
            raise _NoKeyError
        return draw_weight(layer, jax.random.fold_in(key, _REDRAW), x_shape)

    try:
        return variant.weight(W, stored, fresh).astype(W.dtype)
    except _NoKeyError:
        return None


class _NoKeyError(Exception):
    pass


def rule_leaf(layer: Layer, name: str, variant: Feedback, key: Array) -> Layer:
    """``layer`` with the variant's backward: state ``(layer_state, {".": stored})``, res ``(res, B)``."""
    definition = VARIANTS[name]

    def forward(params, x, *, state, key, train):
        s, fb = state
        y, r, s = apply(layer, params, x, state=s, key=key, train=train)
        return y, (r, step_feedback(variant, layer, params, x.shape, fb["."], key)), (s, fb)

    def backward(params, res, g):
        # dx = (backward with W replaced by B)'s dx;  dω = backward(ω, res, g)'s dω  (backprop's, on g)
        r, B = res
        if B is None:
            raise UsageError(f"{layer_name(layer)} under {name}: R_t is drawn from the step key; pass a key")
        return layer.extras["feedback_backward"](params, r, g, B)

    def check_forward(params, x, *, state, key, train):
        # value f(W, x); VJP: dω = VJP of f(·, x) at W, dx = VJP of f(B, ·)  (B by the rule's definition)
        s, fb = state
        y, r, s = apply(layer, params, lax.stop_gradient(x), state=s, key=key, train=train)
        B = step_feedback(definition, layer, params, x.shape, fb["."], key)
        pB = lax.stop_gradient(layer.extras["feedback_params"](params, B))
        yB = apply(layer, pB, x, state=state[0], key=key, train=train)[0]
        return y + yB - lax.stop_gradient(yB), (r, B), (s, fb)

    def state_init(input_shape):
        # as draw_feedback does for a network that is this one leaf
        return init_state(layer, input_shape), {
            ".": variant.init(layer, jax.random.fold_in(key, 0), input_shape)
        }

    extras = {**layer.extras, "check_forward": check_forward, "rule_leaf": lambda: (layer, name)}
    return Layer(
        layer.init, forward, backward, state_init, name=f"{name}({layer_name(layer)})", extras=extras
    )


def _forward_child(seg, child, params, x, *, state, key, train):
    return apply(child, params, x, state=state, key=key, train=train)


def _backward_child(seg, child, params, res, g):
    return child.backward(params, res, g)


def _mirror(net: Layer, name: str, variant: Feedback, key: Array) -> Layer:
    """``net`` with every weight leaf made a rule leaf (recursively); unchanged when it has none."""
    if net.walk is None:
        return rule_leaf(net, name, variant, key) if has_feedback(net) else net
    children = {id(c): _mirror(c, name, variant, key) for c in net.layers}
    if all(children[id(c)] is c for c in net.layers):
        return net

    def walk_forward(visit, params, x, *, state, key, train):
        net_state, fb = state

        def visit_rule(seg, child, p, xx, *, state, key, train):
            rc = children[id(child)]
            if rc is child:
                return visit(seg, child, p, xx, state=state, key=key, train=train)
            y, r, (s, _) = visit(seg, rc, p, xx, state=(state, sub_feedback(fb, seg)), key=key, train=train)
            return y, r, s

        y, res, net_state = net.walk.forward(visit_rule, params, x, state=net_state, key=key, train=train)
        return y, res, (net_state, fb)

    def walk_backward(visit, params, res, g):
        def visit_rule(seg, child, p, r, gg):
            return visit(seg, children[id(child)], p, r, gg)

        return net.walk.backward(visit_rule, params, res, g)

    def forward(params, x, *, state, key, train):
        return walk_forward(_forward_child, params, x, state=state, key=key, train=train)

    def backward(params, res, g):
        return walk_backward(_backward_child, params, res, g)

    def state_init(input_shape):
        return init_state(net, input_shape), draw_feedback(net, variant, key, input_shape)

    layers = tuple(children[id(c)] for c in net.layers)
    return Layer(
        net.init,
        forward,
        backward,
        state_init,
        name=f"{name}({layer_name(net)})",
        layers=layers,
        kind=net.kind,
        walk=Walk(walk_forward, walk_backward),
    )


def draw_feedback(net: Layer, variant: Feedback, key: Array, input_shape) -> dict:
    """``{path: stored}`` for each weight leaf of ``net``, leaf i (forward order) from ``fold_in(key, i)``."""
    weight_leaves = [lf for lf in leaves(net, input_shape) if has_feedback(lf.layer)]
    return {
        path_str(lf.path): variant.init(lf.layer, jax.random.fold_in(key, i), lf.x_shape)
        for i, lf in enumerate(weight_leaves)
    }


def _rule_net(net: Layer, name: str, variant: Feedback, key: Array | int) -> Layer:
    key = as_key(key)
    mirror = _mirror(net, name, variant, key)
    if mirror is net:
        raise UsageError(
            f"{name}: {layer_name(net)} has no weight level (Dense, Conv1D, Conv2D) for feedback to act on"
        )

    def backward_leaf(g_top):
        return lambda path, layer, params, res, g: layer.backward(params, res, g)

    spec = RuleSpec(name=name, net=net, key=key, backward_leaf=backward_leaf, walk_net=mirror)
    return mirror._replace(extras={**mirror.extras, "rule": lambda: spec})


def feedback_alignment(net: Layer, *, key: Array | int = 0) -> Layer:
    """Feedback alignment (Lillicrap et al. 2016): dx = g Bᵀ with a fixed random B of W's shape.

    Args:
      net: any network; its Dense and Conv levels (leaves with ``extras["feedback_backward"]``) get a B.
      key: the key (or int seed) each B is drawn from, with W's own initialiser, by ``init_state``.

    Returns:
      A stateful network with ``net``'s init, params and forward; state ``(net_state, {path: B})``.
    """
    return _rule_net(net, "fa", VARIANTS["fa"], key)


def sign_symmetry(net: Layer, variant: str = "usf", *, key: Array | int = 0) -> Layer:
    """Sign symmetry (Liao, Leibo & Poggio 2016): dx = g Bᵀ with B = magnitude * sign(W).

    Args:
      net: any network.
      variant: "usf" (B = s sign(W), s the RMS of W's initialiser), "frsf" (B = |R| sign(W), R fixed and
        random) or "brsf" (B = |R_t| sign(W), R_t drawn afresh from the step key every step).
      key: the key (or int seed) the stored magnitudes are drawn from.

    Returns:
      A stateful network with ``net``'s init, params and forward; state ``(net_state, {path: stored})``.
    """
    if variant not in ("usf", "frsf", "brsf"):
        raise UsageError(f"sign_symmetry: variant must be 'usf', 'frsf' or 'brsf', got {variant!r}")
    return _rule_net(net, variant, VARIANTS[variant], key)


__all__ = ["VARIANTS", "feedback_alignment", "sign_symmetry"]
