"""Feedback alignment and sign symmetry: at every weight level, a feedback B stands in for W in dx.

Each weight level (a leaf with a :class:`~jaxbp.core.Feedback` hook: Dense, Conv, BinaryDense,
attention's projections, the input and recurrent weights of RNN and LSTM) hands down the dx of its
own backward run with B in W's place; its dω stays backprop's on the cotangent that arrives. The
state stores, per weight level (keyed by level path):

=======  ==============================  =========================================
variant  stored per weight level          B used by the step
=======  ==============================  =========================================
fa       B, a draw of W's initialiser     B
usf      s, the RMS of such a draw        s * sign(W)
frsf     |R|, R such a draw               |R| * sign(W)
brsf     nothing                          |R_t| * sign(W), R_t drawn from the step key
=======  ==============================  =========================================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.core import Array, Layer
from jaxbp.errors import UsageError
from jaxbp.rules.net import draw_weight, fed_params, feedback_dx, make
from jaxbp.rules.registry import RULES, Rule, register


def _rms(a: Array) -> Array:
    return jnp.sqrt(jnp.mean(jnp.square(a)))


def _signed(magnitude, W):
    return jax.tree.map(lambda m, w: (m * jnp.sign(w)).astype(w.dtype), magnitude, W)


def _exact(name: str, transform):
    def like(net, params, input_shape):
        fed = fed_params(RULES[name], net, params)
        return {path: jax.tree.map(transform, layer.feedback.weights(p)) for path, layer, p in fed}

    return like


def _none(name: str, why: str):
    def like(net, params, input_shape):
        raise UsageError(f"feedback_like: no feedback turns {name} into backprop ({why})")

    return like


def _rule(name, summary, init, step, like):
    return register(
        Rule(
            name,
            summary,
            init=init,
            step=step,
            dx=feedback_dx,
            like=like,
            reference="feedback_grads",
            make=lambda net, *, key=0: make(net, RULES[name], key=key),
        )
    )


FA = _rule(
    "fa",
    "feedback alignment: dx = g Bᵀ, B a fixed random draw of W's initialiser",
    lambda leaf, key, out: draw_weight(leaf.layer, key, leaf.x_shape),
    lambda c: (c.stored, c.stored),
    _exact("fa", lambda W: W),
)
USF = _rule(
    "usf",
    "uniform sign-concordant feedback: B = s sign(W), s the RMS of W's initialiser",
    lambda leaf, key, out: jax.tree.map(_rms, draw_weight(leaf.layer, key, leaf.x_shape)),
    lambda c: (_signed(c.stored, c.W), c.stored),
    _none("usf", "s sign(W) is not W"),
)
FRSF = _rule(
    "frsf",
    "fixed random-magnitude sign-concordant feedback: B = |R| sign(W), R fixed",
    lambda leaf, key, out: jax.tree.map(jnp.abs, draw_weight(leaf.layer, key, leaf.x_shape)),
    lambda c: (_signed(c.stored, c.W), c.stored),
    _exact("frsf", jnp.abs),
)
BRSF = _rule(
    "brsf",
    "batchwise random-magnitude sign-concordant feedback: B = |R_t| sign(W), R_t drawn every step",
    lambda leaf, key, out: (),
    lambda c: (_signed(jax.tree.map(jnp.abs, c.fresh()), c.W), ()),
    _none("brsf", "its magnitudes are drawn afresh every step"),
)


def feedback_alignment(net: Layer, *, key: Array | int = 0) -> Layer:
    """Feedback alignment (Lillicrap et al. 2016): dx = g Bᵀ with a fixed random B of W's shape.

    Args:
      net: any network; every weight level (a leaf with a feedback hook) gets a B.
      key: the key (or int seed) each B is drawn from, with W's own initialiser, by ``init_state``.

    Returns:
      A stateful network with ``net``'s init, params and forward; state ``(net_state, {path: B})``.
    """
    return FA.make(net, key=key)


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
    variants = {"usf": USF, "frsf": FRSF, "brsf": BRSF}
    if variant not in variants:
        raise UsageError(f"sign_symmetry: variant must be 'usf', 'frsf' or 'brsf', got {variant!r}")
    return variants[variant].make(net, key=key)


__all__ = ["BRSF", "FA", "FRSF", "USF", "feedback_alignment", "sign_symmetry"]
