"""The textbook backpropagation loop in plain NumPy (no JAX, nothing from jaxbp).

A reference layer is a pair of functions, as in jaxbp but over NumPy arrays:
``forward(params, x) -> (y, cache)`` and ``backward(params, cache, g) -> (dparams, dx)``.
Params are dicts of arrays (``{}`` for layers without params), with the same keys as jaxbp.
See DERIVATIONS.md for the math of every backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np


class RefLayer(NamedTuple):
    """forward(params, x) -> (y, cache); backward(params, cache, g) -> (dparams, dx)."""

    forward: Callable
    backward: Callable


class RefLoss(NamedTuple):
    """forward(pred, target) -> (value, cache); backward(cache) -> dL/dpred."""

    forward: Callable
    backward: Callable


def dense() -> RefLayer:
    def forward(p, x):
        y = x @ p["W"]
        return (y + p["b"] if "b" in p else y), x

    def backward(p, x, g):
        # dx = g W^T ; dW = x^T g ; db = sum_i g_i
        x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
        d = {"W": x2.T @ g2}
        if "b" in p:
            d["b"] = g2.sum(0)
        return d, g @ p["W"].T

    return RefLayer(forward, backward)


def _elementwise(f, df_from_cache, cache_of) -> RefLayer:
    def forward(p, x):
        return f(x), cache_of(x)

    def backward(p, cache, g):
        return {}, g * df_from_cache(cache)

    return RefLayer(forward, backward)


def relu() -> RefLayer:
    return _elementwise(lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(x.dtype), lambda x: x)


def leaky_relu(slope: float = 0.01) -> RefLayer:
    return _elementwise(
        lambda x: np.where(x >= 0, x, slope * x), lambda x: np.where(x >= 0, 1.0, slope), lambda x: x
    )


def tanh() -> RefLayer:
    return _elementwise(np.tanh, lambda y: 1 - y**2, np.tanh)


def sigmoid() -> RefLayer:
    def s(x):
        return 0.5 * (1 + np.tanh(0.5 * x))

    return _elementwise(s, lambda y: y * (1 - y), s)


def softplus() -> RefLayer:
    return _elementwise(lambda x: np.logaddexp(x, 0), lambda x: 0.5 * (1 + np.tanh(0.5 * x)), lambda x: x)


def elu(alpha: float = 1.0) -> RefLayer:
    return _elementwise(
        lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
        lambda x: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))),
        lambda x: x,
    )


def gelu(approximate: bool = True) -> RefLayer:
    c = math.sqrt(2 / math.pi)
    if approximate:

        def f(x):
            return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))

        def df(x):
            t = np.tanh(c * (x + 0.044715 * x**3))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * 0.044715 * x**2)

    else:
        erf = np.vectorize(math.erf)

        def f(x):
            return x * 0.5 * (1 + erf(x / math.sqrt(2)))

        def df(x):
            return 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)

    return _elementwise(f, df, lambda x: x)


def flatten() -> RefLayer:
    return RefLayer(lambda p, x: (x.reshape(x.shape[0], -1), x.shape), lambda p, s, g: ({}, g.reshape(s)))


def softmax_cross_entropy() -> RefLoss:
    def forward(z, t):
        if np.issubdtype(np.asarray(t).dtype, np.integer):
            t = np.eye(z.shape[-1])[t]
        m = z.max(-1, keepdims=True)
        logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
        n = z.size // z.shape[-1]
        return -(t * logp).sum() / n, (np.exp(logp), t, n)

    def backward(cache):
        p, t, n = cache
        return (p * t.sum(-1, keepdims=True) - t) / n

    return RefLoss(forward, backward)


def mean_squared_error() -> RefLoss:
    return RefLoss(lambda y, t: (np.mean((y - t) ** 2), y - t), lambda d: 2 * d / d.size)


def binary_cross_entropy_with_logits() -> RefLoss:
    def forward(z, t):
        value = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
        return value, (0.5 * (1 + np.tanh(0.5 * z)), t)

    return RefLoss(forward, lambda c: (c[0] - c[1]) / c[0].size)


def forward_backward(layers: list[RefLayer], params: list[dict], loss: RefLoss, x, target):
    """One forward pass (levels 1..N) and one backward pass (levels N..1); returns (loss, grads)."""
    caches = []
    for layer, p in zip(layers, params, strict=True):
        x, cache = layer.forward(p, x)
        caches.append(cache)
    value, loss_cache = loss.forward(x, target)
    g = loss.backward(loss_cache)  # dL/dx^{N+1}
    grads = [None] * len(layers)
    for n in reversed(range(len(layers))):
        grads[n], g = layers[n].backward(params[n], caches[n], g)  # dL/dω^n, dL/dx^n
    return value, grads


def train_sgd(layers: list[RefLayer], params: list[dict], loss: RefLoss, batches: Iterable, lr: float):
    """The textbook loop: for each batch, backward from level N to 1, then ω ← ω − η·dL/dω.

    Returns:
      (params, losses): the updated params (new dicts) and the loss of every batch.
    """
    params = [dict(p) for p in params]
    losses = []
    for x, target in batches:
        value, grads = forward_backward(layers, params, loss, x, target)
        for n in range(len(layers)):
            params[n] = {k: params[n][k] - lr * grads[n][k] for k in params[n]}
        losses.append(value)
    return params, losses
