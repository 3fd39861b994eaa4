"""Softmax and LogSoftmax as layers (no params), computed stably by shifting by the max."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError
from jaxbp.layers import _args


def _check(name: str, x, axis: int) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise LayerError(f"{name}: needs a floating-point input, got dtype {x.dtype} (shape {x.shape})")
    if not -x.ndim <= axis < x.ndim:
        raise LayerError(f"{name}: axis {axis} is out of range for input of shape {x.shape}")


def _init(name: str, axis: int):
    def init(key, input_shape):
        if not -len(input_shape) <= axis < len(input_shape):
            raise LayerError(f"{name}: axis {axis} is out of range for input of shape {tuple(input_shape)}")
        return tuple(input_shape), ()

    return init


def Softmax(axis: int = -1) -> Layer:
    """y = exp(x) / sum(exp(x), axis): any shape -> same shape."""
    axis = _args.integer("Softmax", "axis", axis)
    name = f"Softmax(axis={axis})"

    def forward(params, x):
        _check(name, x, axis)
        e = jnp.exp(x - lax.stop_gradient(x.max(axis, keepdims=True)))
        y = e / e.sum(axis, keepdims=True)
        return y, y

    def backward(params, y, g):
        # dx = y * (g - sum(g * y, axis))
        return (), y * (g - jnp.sum(g * y, axis, keepdims=True))

    return Layer(_init(name, axis), forward, backward, name=name)


def LogSoftmax(axis: int = -1) -> Layer:
    """y = x - log(sum(exp(x), axis)): any shape -> same shape."""
    axis = _args.integer("LogSoftmax", "axis", axis)
    name = f"LogSoftmax(axis={axis})"

    def forward(params, x):
        _check(name, x, axis)
        z = x - lax.stop_gradient(x.max(axis, keepdims=True))
        e = jnp.exp(z)
        s = e.sum(axis, keepdims=True)
        return z - jnp.log(s), e / s

    def backward(params, p, g):
        # dx = g - softmax(x) * sum(g, axis)
        return (), g - p * jnp.sum(g, axis, keepdims=True)

    return Layer(_init(name, axis), forward, backward, name=name)
