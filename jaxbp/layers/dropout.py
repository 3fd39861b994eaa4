"""Inverted dropout: a random layer (needs a PRNG key in train mode, identity in eval mode)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.core import LINEAR, Layer, LayerError
from jaxbp.layers import _args


def Dropout(rate: float) -> Layer:
    """y = x * keep / (1 - rate), keep ~ Bernoulli(1 - rate) (train), y = x (eval): any shape -> same."""
    _args.real("Dropout", "rate", rate, 0, 1, hi_open=True)
    name = f"Dropout({rate})"

    def init(key, input_shape):
        return tuple(input_shape), ()

    def init_state(input_shape):
        return ()

    def forward(params, x, *, state, key, train):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise LayerError(f"{name}: needs a floating-point input, got dtype {x.dtype} (shape {x.shape})")
        if not train or rate == 0:
            return x, None, state  # identity: res None
        if key is None:
            raise LayerError(f"{name}: train mode needs a PRNG key, got key=None (input shape {x.shape})")
        keep = jax.random.bernoulli(key, 1 - rate, x.shape)
        return jnp.where(keep, x / (1 - rate), jnp.zeros_like(x)), keep, state

    def backward(params, keep, g):
        # dx = g * keep / (1 - rate)   (dx = g when keep is None: eval mode or rate 0)
        if keep is None:
            return (), g
        return (), jnp.where(keep, g / (1 - rate), jnp.zeros_like(g))

    # linear in x (eval mode and train mode alike): no second-derivative residual
    return Layer(init, forward, backward, init_state=init_state, name=name, per_example=LINEAR)
