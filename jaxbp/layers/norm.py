"""Normalisation layers: LayerNorm (over the last axis) and BatchNorm (over all axes but the last).

Both compute their statistics in at least float32 (bfloat16 inputs are upcast for the
statistics and the output is cast back), so they keep the input's dtype.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError, PerExample, Static, check_param_shapes
from jaxbp.layers import _args
from jaxbp.layers import per_example as qx


def _compute_dtype(dtype):
    """float32 for low-precision inputs, else the input's own float dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def _check_input(name: str, x, min_rank: int, features: int) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise LayerError(f"{name}: needs a floating-point input, got dtype {x.dtype} (shape {x.shape})")
    if x.ndim < min_rank or x.shape[-1] != features:
        raise LayerError(
            f"{name}: input shape {x.shape} does not fit params of {features} features"
            f" (needs rank >= {min_rank} and shape (..., {features}))"
        )


def _scale_bias(features: int, dtype) -> dict:
    return {"scale": jnp.ones((features,), dtype), "bias": jnp.zeros((features,), dtype)}


def LayerNorm(epsilon: float = 1e-5, *, param_dtype=jnp.float32) -> Layer:
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis: (..., F) -> (..., F)."""
    _args.real("LayerNorm", "epsilon", epsilon, 0, lo_open=True)
    _args.float_dtype("LayerNorm", "param_dtype", param_dtype)
    name = f"LayerNorm(epsilon={epsilon})"

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise LayerError(f"{name}: needs an input of rank >= 1, got shape {tuple(input_shape)}")
        return tuple(input_shape), _scale_bias(input_shape[-1], param_dtype)

    def forward(params, x):
        features = jnp.shape(params["scale"])[0]
        check_param_shapes(name, {"scale": (features,), "bias": (features,)}, params)
        _check_input(name, x, 1, features)
        xf = x.astype(_compute_dtype(x.dtype))
        xc = xf - xf.mean(-1, keepdims=True)
        inv = lax.rsqrt(jnp.mean(xc * xc, -1, keepdims=True) + epsilon)
        xhat = xc * inv
        y = xhat * params["scale"].astype(xf.dtype) + params["bias"].astype(xf.dtype)
        return y.astype(x.dtype), (xhat, inv)

    def backward(params, res, g):
        # dx = inv * (gh - mean_F(gh) - xhat * mean_F(gh * xhat)), gh = g * scale
        # dscale = sum_B(g * xhat); dbias = sum_B(g)
        xhat, inv = res
        batch = tuple(range(xhat.ndim - 1))
        gf = g.astype(xhat.dtype)
        gh = gf * params["scale"].astype(xhat.dtype)
        dx = inv * (gh - gh.mean(-1, keepdims=True) - xhat * jnp.mean(gh * xhat, -1, keepdims=True))
        dparams = {
            "scale": (gf * xhat).sum(batch).astype(params["scale"].dtype),
            "bias": gf.sum(batch).astype(params["bias"].dtype),
        }
        return dparams, dx.astype(g.dtype)

    def batch_grad(params, res, g):
        # per example n (summed over its positions t): dscale_n = sum_t g ⊙ xhat; dbias_n = sum_t g
        xhat, _ = res
        gf = qx.as_sequence(g.astype(xhat.dtype))
        return {"scale": (gf * qx.as_sequence(xhat)).sum(1), "bias": gf.sum(1)}

    def kron(params, res, g):
        # per column g: the GGN block of each (F,) param, G = sum_n d_n d_nᵀ with d_n = batch_grad_n
        return qx.vector_kron(batch_grad(params, res, g))

    # no hessian_residual: the normalisation's second derivative in x is not element-wise
    return Layer(init, forward, backward, name=name, per_example=PerExample(batch_grad, kron=kron))


def _axis_bound(axis_name: str) -> bool:
    """Whether ``axis_name`` is a mapped axis here (inside shard_map / pmap / vmap over it)."""
    try:
        lax.axis_size(axis_name)
    except NameError:
        return False
    return True


def BatchNorm(
    momentum: float = 0.9, epsilon: float = 1e-5, *, axis_name: str | None = None, param_dtype=jnp.float32
) -> Layer:
    """y = (x - mean_B) / sqrt(var_B + eps) * scale + bias per channel: (B, ..., C) -> (B, ..., C).

    Statistics run over all axes but the last, so it fits after Dense (B, F) and Conv2D
    (B, H, W, C). Params {"scale": (C,), "bias": (C,)}; state {"mean": (C,), "var": (C,)}.
    Train mode normalises with the batch statistics and returns the running statistics
    updated as ``new = momentum * old + (1 - momentum) * batch`` (flax convention, with the
    *biased* batch variance, so a batch of one element per channel gives var 0, y = bias
    and dx = 0 rather than NaN). Eval mode uses the running statistics and returns the
    state unchanged. With ``axis_name`` (inside shard_map / pmap / vmap over that axis) the
    batch mean and variance, and the backward's batch means, are ``lax.pmean``-ed, so each
    device's dx is its share of the global-batch gradient; dparams stay per-device sums,
    to be ``pmean``-ed by the data-parallel trainer like any other gradient. Where that axis
    is not bound (the same network evaluated outside shard_map) the batch at hand is the
    whole batch and no reduction across devices is made.
    """
    _args.real("BatchNorm", "momentum", momentum, 0, 1)
    _args.real("BatchNorm", "epsilon", epsilon, 0, lo_open=True)
    if axis_name is not None and not isinstance(axis_name, str):
        raise LayerError(f"BatchNorm: axis_name must be a str or None, got {axis_name!r}")
    _args.float_dtype("BatchNorm", "param_dtype", param_dtype)
    name = f"BatchNorm(momentum={momentum})"

    def pmean(v):
        return v if axis_name is None or not _axis_bound(axis_name) else lax.pmean(v, axis_name)

    def channels(input_shape) -> int:
        if len(input_shape) < 2:
            raise LayerError(f"{name}: needs an input of rank >= 2 (B, ..., C), got {tuple(input_shape)}")
        return input_shape[-1]

    def init(key, input_shape):
        return tuple(input_shape), _scale_bias(channels(input_shape), param_dtype)

    def init_state(input_shape):
        c = channels(input_shape)
        return {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}

    def forward(params, x, *, state, key, train):
        c = jnp.shape(params["scale"])[0]
        check_param_shapes(name, {"scale": (c,), "bias": (c,)}, params)
        check_param_shapes(name + " state", {"mean": (c,), "var": (c,)}, state)
        _check_input(name, x, 2, c)
        batch = tuple(range(x.ndim - 1))
        xf = x.astype(_compute_dtype(x.dtype))
        if train:
            mean = pmean(xf.mean(batch))
            var = pmean(jnp.square(xf - mean).mean(batch))  # biased: divides by the batch size
            new_state = {
                k: (momentum * state[k] + (1 - momentum) * v).astype(state[k].dtype)
                for k, v in (("mean", mean), ("var", var))
            }
        else:
            mean, var, new_state = state["mean"].astype(xf.dtype), state["var"].astype(xf.dtype), state
        inv = lax.rsqrt(var + epsilon)
        xhat = (xf - mean) * inv
        y = xhat * params["scale"].astype(xf.dtype) + params["bias"].astype(xf.dtype)
        return y.astype(x.dtype), (xhat, inv, Static(bool(train))), new_state

    def backward(params, res, g):
        # train: dx = inv * (gh - mean_B(gh) - xhat * mean_B(gh * xhat)); eval: dx = inv * gh;  gh = g * scale
        # dscale = sum_B(g * xhat); dbias = sum_B(g)
        xhat, inv, train = res
        batch = tuple(range(xhat.ndim - 1))
        gf = g.astype(xhat.dtype)
        gh = gf * params["scale"].astype(xhat.dtype)
        if train.value:
            dx = inv * (gh - pmean(gh.mean(batch)) - xhat * pmean((gh * xhat).mean(batch)))
        else:
            dx = inv * gh
        dparams = {
            "scale": (gf * xhat).sum(batch).astype(params["scale"].dtype),
            "bias": gf.sum(batch).astype(params["bias"].dtype),
        }
        return dparams, dx.astype(g.dtype)

    def eval_only(train, quantity):
        if train.value:
            raise LayerError(
                f"{name}: {quantity} needs eval mode (train mode couples the examples through the batch"
                " statistics)"
            )

    def batch_grad(params, res, g):
        # eval mode, per example n (over its positions): dscale_n = sum g ⊙ xhat; dbias_n = sum g
        xhat, _, train = res
        eval_only(train, "a per-example quantity")
        gf = qx.as_sequence(g.astype(xhat.dtype))
        return {"scale": (gf * qx.as_sequence(xhat)).sum(1), "bias": gf.sum(1)}

    def hessian_residual(params, res, g):
        # eval mode: linear in x and in (scale, bias): no second-derivative residual
        eval_only(res[2], "diag_hessian")
        return None

    def kron(params, res, g):
        # per column g: the GGN block of each (C,) param, G = sum_n d_n d_nᵀ with d_n = batch_grad_n
        return qx.vector_kron(batch_grad(params, res, g))

    hooks = PerExample(batch_grad, kron=kron, hessian_residual=hessian_residual)
    return Layer(init, forward, backward, init_state=init_state, name=name, per_example=hooks)
