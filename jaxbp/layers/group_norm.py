"""GroupNorm (Wu & He 2018): normalisation over groups of channels within each example.

Unlike BatchNorm its statistics never mix examples, so every per-example quantity (and DP-SGD's
per-example clipping) is defined in training too: the normalisation private-training papers use.
Statistics are computed in at least float32, as LayerNorm's and BatchNorm's.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError, PerExample, check_param_shapes
from jaxbp.layers import _args
from jaxbp.layers import per_example as qx


def GroupNorm(
    num_groups: int,
    epsilon: float = 1e-5,
    *,
    use_scale: bool = True,
    use_bias: bool = True,
    param_dtype=jnp.float32,
) -> Layer:
    """y = (x - mean_g) / sqrt(var_g + eps) * scale + bias: (N, ..., C) -> (N, ..., C).

    The C channels form ``num_groups`` groups of C/G consecutive channels; each example's mean and
    (biased) variance run over its positions and the channels of one group. Params ``{"scale": (C,),
    "bias": (C,)}`` (each optional).
    """
    num_groups = _args.positive_int("GroupNorm", "num_groups", num_groups)
    _args.real("GroupNorm", "epsilon", epsilon, 0, lo_open=True)
    use_scale = _args.flag("GroupNorm", "use_scale", use_scale)
    use_bias = _args.flag("GroupNorm", "use_bias", use_bias)
    _args.float_dtype("GroupNorm", "param_dtype", param_dtype)
    name = f"GroupNorm({num_groups})"
    keys = (("scale",) if use_scale else ()) + (("bias",) if use_bias else ())

    def check(shape) -> int:
        shape = tuple(shape)
        if len(shape) < 2 or shape[-1] % num_groups:
            raise LayerError(
                f"{name}: needs an input (N, ..., C) with C divisible by {num_groups} groups,"
                f" got shape {shape}"
            )
        return shape[-1]

    def init(key, input_shape):
        C = check(input_shape)
        params = {"scale": jnp.ones((C,), param_dtype), "bias": jnp.zeros((C,), param_dtype)}
        return tuple(input_shape), {k: params[k] for k in keys}

    def grouped(a):
        """(N, ..., C) -> (N, positions, G, C/G)."""
        return a.reshape(a.shape[0], -1, num_groups, a.shape[-1] // num_groups)

    def forward(params, x):
        C = check(x.shape)
        check_param_shapes(name, {k: (C,) for k in keys}, params)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise LayerError(f"{name}: needs a floating-point input, got dtype {x.dtype} (shape {x.shape})")
        xf = grouped(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
        xc = xf - xf.mean((1, 3), keepdims=True)
        inv = lax.rsqrt(jnp.mean(xc * xc, (1, 3), keepdims=True) + epsilon)
        xhat = (xc * inv).reshape(x.shape)
        y = xhat
        if use_scale:
            y = y * params["scale"].astype(y.dtype)
        if use_bias:
            y = y + params["bias"].astype(y.dtype)
        return y.astype(x.dtype), (xhat, inv)

    def backward(params, res, g):
        # per (example, group), means over its positions and channels:
        # dx = inv * (gh - mean(gh) - xhat * mean(gh * xhat)), gh = g * scale;  dscale = Σ g xhat; dbias = Σ g
        xhat, inv = res
        gf = g.astype(xhat.dtype)
        gh = grouped(gf * params["scale"].astype(xhat.dtype) if use_scale else gf)
        xg = grouped(xhat)
        dx = inv * (gh - gh.mean((1, 3), keepdims=True) - xg * jnp.mean(gh * xg, (1, 3), keepdims=True))
        batch = tuple(range(g.ndim - 1))
        sums = {"scale": (gf * xhat).sum(batch), "bias": gf.sum(batch)}
        dparams = {k: sums[k].astype(params[k].dtype) for k in keys}
        return dparams, dx.reshape(g.shape).astype(g.dtype)

    def batch_grad(params, res, g):
        # per example n (its statistics are its own): dscale_n = Σ_positions g ⊙ xhat; dbias_n = Σ g
        xhat, _ = res
        gf = qx.as_sequence(g.astype(xhat.dtype))
        sums = {"scale": (gf * qx.as_sequence(xhat)).sum(1), "bias": gf.sum(1)}
        return {k: sums[k] for k in keys}

    def kron(params, res, g):
        # per column g: the exact GGN block of each (C,) param, G = Σ_n d_n d_nᵀ (d_n = batch_grad_n)
        return qx.vector_kron(batch_grad(params, res, g))

    # no hessian_residual: the normalisation's second derivative in x is not element-wise
    return Layer(init, forward, backward, name=name, per_example=PerExample(batch_grad, kron=kron))


__all__ = ["GroupNorm"]
