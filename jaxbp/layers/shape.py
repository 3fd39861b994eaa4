"""Layers that only move elements: Flatten and Reshape."""

from __future__ import annotations

import math

from jaxbp.core import LINEAR, Layer, LayerError, Static
from jaxbp.layers import _args


def Flatten() -> Layer:
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)."""

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"Flatten: needs a batch axis, got shape {tuple(input_shape)}")
        return (input_shape[0], math.prod(input_shape[1:])), ()

    def forward(params, x):
        if x.ndim < 1:
            raise LayerError(f"Flatten: needs a batch axis, got shape {x.shape}")
        return x.reshape(x.shape[0], -1), Static(x.shape)

    def backward(params, x_shape, g):
        # dx = reshape(g, x.shape)
        return (), g.reshape(x_shape.value)

    return Layer(init, forward, backward, name="Flatten", per_example=LINEAR)


def Reshape(shape: tuple[int, ...]) -> Layer:
    """(batch, ...) -> (batch, *shape); ``shape`` excludes the batch axis, one entry may be -1."""
    shape = _args.target_shape("Reshape", shape)
    name = f"Reshape({shape})"

    def target(in_shape):
        n, known = math.prod(in_shape[1:]), math.prod(s for s in shape if s != -1)
        out = tuple(n // known if s == -1 else s for s in shape)
        if math.prod(out) != n or shape.count(-1) > 1:
            raise LayerError(f"{name}: cannot reshape input of shape {tuple(in_shape)} to (batch, *{shape})")
        return (in_shape[0], *out)

    def init(key, input_shape):
        return target(tuple(input_shape)), ()

    def forward(params, x):
        return x.reshape(target(x.shape)), Static(x.shape)

    def backward(params, x_shape, g):
        # dx = reshape(g, x.shape)
        return (), g.reshape(x_shape.value)

    return Layer(init, forward, backward, name=name, per_example=LINEAR)
