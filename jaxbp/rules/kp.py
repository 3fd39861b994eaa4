"""Kolen-Pollack (Akrout et al. 2019): feedback that receives W's updates and decays, so B -> W.

In Akrout et al.'s rule W and B get the same update and the same weight decay λ, so their
difference shrinks by (1 - λ) every step. jaxbp keeps B in the state (never in the params) and
realises the rule from what a step sees: at every train-mode step of a weight level

    B_t = W_t + (1 - λ) (B_{t-1} - W_{t-1})        (B_0 a draw of W's initialiser)

-- B receives W's update ``W_t - W_{t-1}`` whatever the optimizer, and the difference decays. This is
Akrout et al.'s update exactly when W is trained with a decoupled weight decay λ as well. The stored
feedback per weight level is ``{"B": B_{t-1}, "W": W_{t-1}, "steps": t}``; B is used like FA's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.core import Array, Layer
from jaxbp.errors import UsageError
from jaxbp.rules.net import draw_weight, fed_params, feedback_dx, make
from jaxbp.rules.registry import RULES, Rule, register


def _init(leaf, key, out):
    B = draw_weight(leaf.layer, key, leaf.x_shape)
    return {"B": B, "W": jax.tree.map(jnp.zeros_like, B), "steps": jnp.zeros((), jnp.int32)}


def _step(c):
    # B_t = W_t + (1 - λ)(B_{t-1} - W_{t-1});  the first step uses B_0 as drawn
    (decay,) = c.options
    first = c.stored["steps"] == 0
    B = jax.tree.map(
        lambda B0, Wp, W: jnp.where(first, B0, W + (1 - decay) * (B0 - Wp)).astype(W.dtype),
        c.stored["B"],
        c.stored["W"],
        c.W,
    )
    return B, {"B": B, "W": c.W, "steps": c.stored["steps"] + 1}


def _like(net: Layer, params, input_shape):
    # B = W, and the previous W equal to it: B stays W
    return {
        path: {
            "B": layer.feedback.weights(p),
            "W": layer.feedback.weights(p),
            "steps": jnp.ones((), jnp.int32),
        }
        for path, layer, p in fed_params(RULES["kp"], net, params)
    }


def kolen_pollack(net: Layer, *, key: Array | int = 0, decay: float = 1e-3) -> Layer:
    """Kolen-Pollack: dx = g Bᵀ with B receiving W's updates and B - W decaying by ``1 - decay`` per step.

    Args:
      net: any network; every weight level (a leaf with a feedback hook) gets a B.
      key: the key (or int seed) each B_0 is drawn from, with W's own initialiser, by ``init_state``.
      decay: λ in (0, 1): the per-step decay of B - W (W's own decay is the optimizer's).

    Returns:
      A stateful network with ``net``'s init, params and forward; state
      ``(net_state, {path: {"B", "W", "steps"}})``.
    """
    if not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise UsageError(f"kolen_pollack: decay must lie in (0, 1), got {decay!r}")
    return make(net, RULES["kp"]._replace(options=(float(decay),)), key=key)


KP = register(
    Rule(
        "kp",
        "Kolen-Pollack: dx = g Bᵀ, B receives W's updates and B - W decays (B -> W)",
        init=_init,
        step=_step,
        dx=feedback_dx,
        like=_like,
        reference="kolen_pollack_feedback",
        make=kolen_pollack,
        options=(1e-3,),
    )
)

__all__ = ["KP", "kolen_pollack"]
