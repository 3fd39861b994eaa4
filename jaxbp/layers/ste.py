"""Straight-through estimators (Bengio et al. 2013; BinaryConnect / BinaryNet): quantised forwards.

The forward quantises; the backward passes the cotangent through as if the quantiser were (almost)
the identity. These backwards are *not* the derivative of the forward (which is 0 almost
everywhere): each layer's ``check_forward`` is the forward whose autodiff VJP is, by
definition, what its backward computes (``q(x) = x + stop_gradient(round(x) - x)`` for ``Round``),
so the checker verifies the estimator against its definition.

BinaryConnect keeps the real-valued W in [-1, 1]: chain :func:`clip_params` after the optimizer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxbp.core import Layer, LayerError, feedback_of
from jaxbp.layers import per_example as qx


def _init(key, input_shape):
    return tuple(input_shape), ()


def _binary(a):
    """sign with sign(0) = +1: every value binary."""
    return jnp.where(a >= 0, jnp.ones_like(a), -jnp.ones_like(a))


def Sign() -> Layer:
    """y = sign(x) in {-1, +1} (sign(0) = +1), backward g·1{|x| <= 1}: any shape -> same shape."""

    def forward(params, x):
        return _binary(x), jnp.abs(x) <= 1

    def backward(params, inside, g):
        # dx = g * 1{|x| <= 1}   (straight through the hard tanh clip(x, -1, 1))
        return (), jnp.where(inside, g, jnp.zeros_like(g))

    def check_forward(params, x):
        # value sign(x); VJP that of clip(x, -1, 1)
        soft = jnp.clip(x, -1, 1)
        return soft + lax.stop_gradient(_binary(x) - soft), jnp.abs(x) <= 1

    return Layer(_init, forward, backward, name="Sign", check_forward=check_forward)


def Round() -> Layer:
    """y = round(x) (half to even), backward the identity: any shape -> same shape."""

    def forward(params, x):
        return jnp.round(x), ()

    def backward(params, res, g):
        # dx = g   (straight through)
        return (), g

    def check_forward(params, x):
        # value round(x); VJP the identity's
        return x + lax.stop_gradient(jnp.round(x) - x), ()

    return Layer(_init, forward, backward, name="Round", check_forward=check_forward)


def BinaryDense(
    features: int,
    use_bias: bool = True,
    *,
    kernel_init=jax.nn.initializers.uniform(2.0),
    param_dtype=jnp.float32,
) -> Layer:
    """y = x @ sign(W) + b: (..., in) -> (..., features); params {"W": (in, features), "b": (features,)}.

    W is real-valued (BinaryConnect): the forward uses sign(W), the gradient goes to W.
    The default init is uniform in [0, 2) shifted to [-1, 1).
    """
    name = f"BinaryDense({features})"

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"{name}: needs an input of rank >= 1, got shape {tuple(input_shape)}")
        params = {"W": kernel_init(key, (input_shape[-1], features), param_dtype) - 1}
        if use_bias:
            params["b"] = jnp.zeros((features,), param_dtype)
        return (*input_shape[:-1], features), params

    def forward(params, x):
        W = params["W"]
        if x.ndim < 1 or x.shape[-1] != W.shape[0]:
            raise LayerError(
                f"{name}: input shape {x.shape} does not fit W of shape {W.shape} (needs (..., {W.shape[0]}))"
            )
        y = x @ _binary(W).astype(x.dtype)
        if use_bias:
            y = y + params["b"]
        return y, x

    def backward(params, x, g):
        # dx = g @ sign(W).T; dW = x.T @ g (straight through to the real W); db = g.sum(0)
        batch = tuple(range(x.ndim - 1))
        Wb = _binary(params["W"]).astype(g.dtype)
        dx = lax.dot_general(g, Wb, (((g.ndim - 1,), (1,)), ((), ())))
        dW = lax.dot_general(x, g, ((batch, batch), ((), ())))
        dparams = {"W": dW.astype(params["W"].dtype)}
        if use_bias:
            dparams["b"] = g.sum(batch).astype(params["b"].dtype)
        return dparams, dx

    def check_forward(params, x):
        # value x @ sign(W) + b; VJP that of x @ W + b in W, of x @ sign(W) in x
        W = params["W"]
        Wq = W + lax.stop_gradient(_binary(W) - W)
        y = x @ Wq.astype(x.dtype)
        return (y + params["b"] if use_bias else y), x

    # Per-example hooks: dW_n = x_n g_nᵀ as Dense's (straight through to the real W; linear in x).
    # Backward rules: feedback stands in for the real-valued W (dx = g @ sign(B).T)
    return Layer(
        init,
        forward,
        backward,
        name=name,
        per_example=qx.dense_hooks(use_bias),
        feedback=feedback_of("W"),
        check_forward=check_forward,
    )


class ClipParamsState(NamedTuple):
    """:func:`clip_params` keeps no state."""


def clip_params(low: float = -1.0, high: float = 1.0) -> optax.GradientTransformation:
    """Make the update land the params in [low, high]: ``u <- clip(p + u, low, high) - p``.

    BinaryConnect's clip of the real-valued weights after each update, as an optax transform: put it
    last in the chain (``optax.chain(optax.sgd(0.01), optax.masked(clip_params(), mask))``, the mask
    selecting the BinaryDense weights).
    """

    def init_fn(params):
        return ClipParamsState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_params needs the params: call update(updates, state, params)")
        new = jax.tree.map(lambda u, p: jnp.clip(p + u, low, high) - p, updates, params)
        return new, state

    return optax.GradientTransformation(init_fn, update_fn)
