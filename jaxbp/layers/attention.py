"""Multi-head self-attention with its backward written out (softmax JVP, both matmuls, projections)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError, PerExample, check_param_shapes, feedback_of
from jaxbp.layers import _args
from jaxbp.layers import per_example as qx

_PROJ = ("q", "k", "v", "o")
_BIAS = ("q", "v", "o")  # no key bias: it shifts each score row by q.bk, which the softmax ignores


def _dense(x, W, b):
    """x @ W + b over the last axis of x."""
    return lax.dot_general(x, W, (((x.ndim - 1,), (0,)), ((), ()))) + b


def _dense_backward(x, W, g):
    """(dW, db, dx) of y = x @ W + b: dW = x.T @ g, db = g.sum over leading axes, dx = g @ W.T."""
    batch = tuple(range(x.ndim - 1))
    dW = lax.dot_general(x, g, ((batch, batch), ((), ())))
    dx = lax.dot_general(g, W, (((g.ndim - 1,), (1,)), ((), ())))
    return dW.astype(W.dtype), g.sum(batch), dx


def MultiHeadAttention(
    num_heads: int,
    causal: bool = False,
    *,
    kernel_init=jax.nn.initializers.glorot_uniform(),
    param_dtype=jnp.float32,
) -> Layer:
    """Self-attention (batch, time, F) -> (batch, time, F); params W{q,k,v,o} (F, F), b{q,v,o} (F,)."""
    num_heads = _args.positive_int("MultiHeadAttention", "num_heads", num_heads)
    causal = _args.flag("MultiHeadAttention", "causal", causal)
    _args.initializer("MultiHeadAttention", "kernel_init", kernel_init)
    _args.float_dtype("MultiHeadAttention", "param_dtype", param_dtype)
    name = f"MultiHeadAttention({num_heads}, causal={causal})"
    if num_heads < 1:
        raise LayerError(f"{name}: num_heads must be >= 1, got {num_heads}")

    def check(shape):
        shape = tuple(shape)
        if len(shape) != 3:
            raise LayerError(f"{name}: needs an input (batch, time, features), got shape {shape}")
        if shape[-1] % num_heads:
            raise LayerError(
                f"{name}: features {shape[-1]} of input {shape} not divisible by {num_heads} heads"
            )

    def init(key, input_shape):
        check(input_shape)
        F = input_shape[-1]
        keys = jax.random.split(key, 4)
        params = {f"W{p}": kernel_init(k, (F, F), param_dtype) for p, k in zip(_PROJ, keys, strict=True)}
        params.update({f"b{p}": jnp.zeros((F,), param_dtype) for p in _BIAS})
        return tuple(input_shape), params

    def forward(params, x):
        check(x.shape)
        B, T, F = x.shape
        expected = {**{f"W{p}": (F, F) for p in _PROJ}, **{f"b{p}": (F,) for p in _BIAS}}
        check_param_shapes(name, expected, params)
        heads = (B, T, num_heads, F // num_heads)
        scale = 1 / math.sqrt(F // num_heads)
        q = (_dense(x, params["Wq"], params["bq"]) * scale).reshape(heads)  # pre-scaled by 1/sqrt(d)
        k = _dense(x, params["Wk"], 0).reshape(heads)
        v = _dense(x, params["Wv"], params["bv"]).reshape(heads)
        s = jnp.einsum("bthd,bshd->bhts", q, k)
        if causal:
            s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
        p = jnp.exp(s - s.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        o = jnp.einsum("bhts,bshd->bthd", p, v).reshape(B, T, F)
        return _dense(o, params["Wo"], params["bo"]), (x, q, k, v, p, o)

    def backward(params, res, g):
        # do = g Wo^T; dv = p^T do; dp = do v^T; ds = p (dp - sum_s p dp); dq = ds k / √d; dk = ds^T q / √d;
        # dW_j = x^T d_j; db_j = sum d_j; dx = sum_j d_j W_j^T  (j = q, k, v; no key bias)
        # (masked scores have p == 0, hence ds == 0: no mask needed here)
        x, q, k, v, p, o = res
        B, T, F = x.shape
        scale = 1 / math.sqrt(F // num_heads)
        dWo, dbo, do = _dense_backward(o, params["Wo"], g)
        do = do.reshape(q.shape)
        dv = jnp.einsum("bhts,bthd->bshd", p, do)
        dp = jnp.einsum("bthd,bshd->bhts", do, v)
        ds = p * (dp - (p * dp).sum(-1, keepdims=True))
        dq = jnp.einsum("bhts,bshd->bthd", ds, k) * scale  # q was stored pre-scaled
        dk = jnp.einsum("bhts,bthd->bshd", ds, q)
        dparams, dx = {"Wo": dWo, "bo": dbo}, 0
        for j, d in (("q", dq), ("k", dk), ("v", dv)):
            dparams[f"W{j}"], db, dx_j = _dense_backward(x, params[f"W{j}"], d.reshape(B, T, F))
            if j in _BIAS:
                dparams[f"b{j}"] = db
            dx = dx + dx_j
        dparams = {n: dparams[n].astype(params[n].dtype) for n in params}
        return dparams, dx.astype(x.dtype)

    def batch_grad(params, res, g):
        # dparams_n = backward on example n alone (examples interact only inside their own sequence)
        return qx.per_example_backward(backward, params, res, g)

    # Backward rules: feedback stands in for all four projections (dx = sum_j d_j B_jᵀ, do = g B_oᵀ)
    feedback = feedback_of(*(f"W{p}" for p in _PROJ))
    return Layer(init, forward, backward, name=name, per_example=PerExample(batch_grad), feedback=feedback)
