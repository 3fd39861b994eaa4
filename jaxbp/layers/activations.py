"""Element-wise activations. Each has no params (``()``) and keeps the input's shape.

Subgradients at kinks: ``Relu`` uses 0 at x == 0 (as ``jax.nn.relu``); ``LeakyRelu``
uses 1 at x == 0 (as ``jax.nn.leaky_relu``, whose positive branch is ``x >= 0``);
``Elu`` uses ``alpha`` at x == 0 (as ``jax.nn.elu``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import erf

from jaxbp.core import LINEAR, Layer, PerExample
from jaxbp.layers import _args


def _init(key, input_shape):
    return tuple(input_shape), ()


# Piecewise-linear activations: f'' = 0 almost everywhere, no second-derivative residual
PIECEWISE_LINEAR = LINEAR


def Relu() -> Layer:
    """y = max(x, 0): any shape -> same shape."""

    def forward(params, x):
        return jnp.maximum(x, 0), x > 0

    def backward(params, positive, g):
        # dx = g * [x > 0]   (subgradient 0 at x == 0)
        return (), jnp.where(positive, g, jnp.zeros_like(g))

    return Layer(_init, forward, backward, name="Relu", per_example=PIECEWISE_LINEAR)


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """y = x if x >= 0 else slope * x: any shape -> same shape."""
    _args.real("LeakyRelu", "negative_slope", negative_slope)

    def forward(params, x):
        nonneg = x >= 0
        return jnp.where(nonneg, x, negative_slope * x), nonneg

    def backward(params, nonneg, g):
        # dx = g * (1 if x >= 0 else slope)   (1 at x == 0)
        return (), jnp.where(nonneg, g, negative_slope * g)

    return Layer(
        _init,
        forward,
        backward,
        name=f"LeakyRelu({negative_slope})",
        per_example=PIECEWISE_LINEAR,
    )


def Tanh() -> Layer:
    """y = tanh(x): any shape -> same shape."""

    def forward(params, x):
        y = jnp.tanh(x)
        return y, y

    def backward(params, y, g):
        # dx = g * (1 - y**2)
        return (), g * (1 - y * y)

    def hessian_residual(params, y, g):
        # r = g * f''(x) = g * (-2 y (1 - y**2))
        return g * (-2 * y * (1 - y * y))

    return Layer(
        _init, forward, backward, name="Tanh", per_example=PerExample(hessian_residual=hessian_residual)
    )


def Sigmoid() -> Layer:
    """y = 1 / (1 + exp(-x)): any shape -> same shape."""

    def forward(params, x):
        y = _sigmoid(x)
        return y, y

    def backward(params, y, g):
        # dx = g * y * (1 - y)
        return (), g * y * (1 - y)

    def hessian_residual(params, y, g):
        # r = g * f''(x) = g * y (1 - y) (1 - 2 y)
        return g * y * (1 - y) * (1 - 2 * y)

    return Layer(
        _init, forward, backward, name="Sigmoid", per_example=PerExample(hessian_residual=hessian_residual)
    )


def _sigmoid(x):
    """The logistic function, computed stably for large |x|."""
    return lax.logistic(x)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def Gelu(approximate: bool = True) -> Layer:
    """y = x * Phi(x) (exact) or its tanh approximation: any shape -> same shape."""
    approximate = _args.flag("Gelu", "approximate", approximate)
    if approximate:

        def forward(params, x):
            t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
            return 0.5 * x * (1 + t), (x, t)

        def backward(params, res, g):
            # dx = g * (0.5 (1 + t) + 0.5 x (1 - t**2) sqrt(2/pi) (1 + 3 * 0.044715 x**2)),
            #      t = tanh(sqrt(2/pi) (x + 0.044715 x**3))
            x, t = res
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            return (), g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)

        def hessian_residual(params, res, g):
            # r = g * (1 - t**2) (u' + 0.5 x (u'' - 2 t u'**2)),
            #     u' = sqrt(2/pi)(1 + 3a x**2), u'' = 6a sqrt(2/pi) x, a = 0.044715
            x, t = res
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            ddu = 6 * 0.044715 * _SQRT_2_OVER_PI * x
            return g * (1 - t * t) * (du + 0.5 * x * (ddu - 2 * t * du * du))

    else:

        def forward(params, x):
            cdf = 0.5 * (1 + erf(x * (1 / math.sqrt(2.0))))
            return x * cdf, (x, cdf)

        def backward(params, res, g):
            # dx = g * (Phi(x) + x * phi(x)),   phi(x) = exp(-x**2 / 2) / sqrt(2 pi)
            x, cdf = res
            return (), g * (cdf + x * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x))

        def hessian_residual(params, res, g):
            # r = g * phi(x) (2 - x**2)
            x, _ = res
            return g * _INV_SQRT_2PI * jnp.exp(-0.5 * x * x) * (2 - x * x)

    hooks = PerExample(hessian_residual=hessian_residual)
    return Layer(_init, forward, backward, name=f"Gelu(approximate={approximate})", per_example=hooks)


def Softplus() -> Layer:
    """y = log(1 + exp(x)): any shape -> same shape."""

    def forward(params, x):
        return jnp.logaddexp(x, 0), x

    def backward(params, x, g):
        # dx = g * sigmoid(x)
        return (), g * _sigmoid(x)

    def hessian_residual(params, x, g):
        # r = g * sigmoid(x) (1 - sigmoid(x))
        s = _sigmoid(x)
        return g * s * (1 - s)

    return Layer(
        _init, forward, backward, name="Softplus", per_example=PerExample(hessian_residual=hessian_residual)
    )


def Elu(alpha: float = 1.0) -> Layer:
    """y = x if x > 0 else alpha * (exp(x) - 1): any shape -> same shape."""
    _args.real("Elu", "alpha", alpha)

    def forward(params, x):
        positive = x > 0
        y = jnp.where(positive, x, alpha * jnp.expm1(jnp.where(positive, 0, x)))
        return y, (positive, y)

    def backward(params, res, g):
        # dx = g * (1 if x > 0 else y + alpha)   (alpha at x == 0)
        positive, y = res
        return (), jnp.where(positive, g, g * (y + alpha))

    def hessian_residual(params, res, g):
        # r = g * (0 if x > 0 else y + alpha)
        positive, y = res
        return jnp.where(positive, jnp.zeros_like(g), g * (y + alpha))

    return Layer(
        _init,
        forward,
        backward,
        name=f"Elu({alpha})",
        per_example=PerExample(hessian_residual=hessian_residual),
    )
