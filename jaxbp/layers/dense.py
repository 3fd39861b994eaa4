"""Dense (fully connected) layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError, feedback_of
from jaxbp.layers import _args
from jaxbp.layers import per_example as qx


def Dense(
    features: int,
    use_bias: bool = True,
    *,
    kernel_init=jax.nn.initializers.lecun_normal(),
    param_dtype=jnp.float32,
) -> Layer:
    """y = x @ W + b: (..., in) -> (..., features); params {"W": (in, features), "b": (features,)}."""
    features = _args.positive_int("Dense", "features", features)
    use_bias = _args.flag("Dense", "use_bias", use_bias)
    _args.initializer("Dense", "kernel_init", kernel_init)
    _args.float_dtype("Dense", "param_dtype", param_dtype)
    name = f"Dense({features})"

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"{name}: needs an input of rank >= 1, got shape {tuple(input_shape)}")
        params = {"W": kernel_init(key, (input_shape[-1], features), param_dtype)}
        if use_bias:
            params["b"] = jnp.zeros((features,), param_dtype)
        return (*input_shape[:-1], features), params

    def forward(params, x):
        W = params["W"]
        if x.ndim < 1 or x.shape[-1] != W.shape[0]:
            raise LayerError(
                f"{name}: input shape {x.shape} does not fit W of shape {W.shape} (needs (..., {W.shape[0]}))"
            )
        y = x @ W
        if use_bias:
            y = y + params["b"]
        return y, x

    def backward(params, x, g):
        # dx = g @ W.T; dW = x.T @ g; db = g.sum(0)   (leading axes of x and g summed as batch)
        batch = tuple(range(x.ndim - 1))
        dx = lax.dot_general(g, params["W"], (((g.ndim - 1,), (1,)), ((), ())))
        dx = dx.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else dx  # a float16 x gets float16
        dW = lax.dot_general(x, g, ((batch, batch), ((), ())))
        dparams = {"W": dW.astype(params["W"].dtype)}
        if use_bias:
            dparams["b"] = g.sum(batch).astype(params["b"].dtype)
        return dparams, dx

    # Per-example hooks (jaxbp.quantities): dW_n = sum_t x_nt g_ntᵀ, db_n = sum_t g_nt (see dense_hooks)
    hooks = qx.dense_hooks(use_bias)
    # Backward rules (jaxbp.rules): a feedback B of W's shape stands in for W in dx (dx = g @ B.T)
    return Layer(init, forward, backward, name=name, per_example=hooks, feedback=feedback_of("W"))
