"""Losses, mean-reduced, each with its hand-written backward dL/dpred.

Integer labels outside ``[0, C)`` for ``C`` classes raise a :class:`LayerError` when they are
concrete (eager calls). Under ``jax.jit`` they cannot raise, so ``SoftmaxCrossEntropy`` makes
them impossible to miss instead: the loss value, and the gradient rows of the bad examples, are
NaN; the training program's non-finite guard then stops the run.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.core import LayerError, Loss


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _in_range(labels, num_classes: int):
    """Elementwise ``0 <= labels < num_classes``."""
    return (labels >= 0) & (labels < num_classes)


def SoftmaxCrossEntropy() -> Loss:
    """L = -mean_i sum_c t_ic log softmax(z_i)_c; pred (..., C), target int (...) or probs (..., C)."""

    def forward(logits, target):
        integer = jnp.issubdtype(jnp.asarray(target).dtype, jnp.integer)
        expected = logits.shape[:-1] if integer else logits.shape
        if logits.ndim < 1 or target.shape != expected:
            kind = "integer labels" if integer else "probabilities"
            raise LayerError(
                f"SoftmaxCrossEntropy: target ({kind}) has shape {target.shape},"
                f" expected {expected} for logits of shape {logits.shape}"
            )
        num_classes = logits.shape[-1]
        if integer and _is_concrete(target) and target.size:
            with jax.ensure_compile_time_eval():  # concrete labels closed over by a jit stay checkable
                lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= num_classes:
                raise LayerError(
                    f"SoftmaxCrossEntropy: labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]"
                )
        shifted = logits - lax.stop_gradient(logits.max(-1, keepdims=True))
        logp = shifted - jnp.log(jnp.exp(shifted).sum(-1, keepdims=True))
        dtype = logits.dtype
        t = jax.nn.one_hot(target, num_classes, dtype=dtype) if integer else target.astype(dtype)
        n = math.prod(logits.shape[:-1])
        value = -(t * logp).sum() / n
        if integer:  # out-of-range labels (only possible under jit, see above): a NaN loss, never a silent 0
            value = jnp.where(_in_range(target, num_classes).all(), value, jnp.nan)
        return value, (jnp.exp(logp), target if integer else t)  # labels stay int: no float one-hot kept

    def backward(res):
        # dz = (softmax(z) * sum_c t - t) / N;  = (softmax(z) - [c == label]) / N for integer labels
        p, t = res
        n = math.prod(p.shape[:-1])
        if jnp.issubdtype(t.dtype, jnp.integer):  # a select on the label mask, no float one-hot
            dz = jnp.where(lax.broadcasted_iota(t.dtype, p.shape, p.ndim - 1) == t[..., None], p - 1, p) / n
            return jnp.where(_in_range(t, p.shape[-1])[..., None], dz, jnp.nan)  # NaN rows for bad labels
        return (p * t.sum(-1, keepdims=True) - t) / n

    def mass(p, t):
        # sum_c t per row (1 for integer labels): the Hessian of a row is mass (diag p - p pᵀ) / N
        return jnp.ones(p.shape[:-1], p.dtype) if jnp.issubdtype(t.dtype, jnp.integer) else t.sum(-1)

    def sqrt_hessian(res):
        # column (r, c) = sqrt(mass_r p_rc / N) (e_c - p_r) at row r, 0 at the other rows of the example:
        # sum_c p_c (e_c - p)(e_c - p)ᵀ = diag p - p pᵀ.  K = (rows per example) * C columns.
        p, t = res
        B, C = p.shape[0], p.shape[-1]
        pr = p.reshape(B, -1, C)
        R = pr.shape[1]
        w = jnp.sqrt(mass(p, t).reshape(B, R) / math.prod(p.shape[:-1]))
        cols = jnp.sqrt(pr)[..., :, None] * (jnp.eye(C, dtype=p.dtype) - pr[..., None, :])  # (B, R, c, C)
        cols = cols * w[..., None, None]
        S = jnp.einsum("rs,bscd->rcbsd", jnp.eye(R, dtype=p.dtype), cols)
        return S.reshape(R * C, *p.shape)

    def sqrt_hessian_mc(res, key, samples=1):
        # s = sqrt(mass / N) (p - onehot(y)), y ~ Categorical(p) per row: E[s sᵀ] = mass (diag p - p pᵀ) / N
        p, t = res
        y = jax.random.categorical(key, jnp.log(p), axis=-1, shape=(samples, *p.shape[:-1]))
        w = jnp.sqrt(mass(p, t) / (math.prod(p.shape[:-1]) * samples))[..., None]
        return (p - jax.nn.one_hot(y, p.shape[-1], dtype=p.dtype)) * w

    return Loss(forward, backward, "SoftmaxCrossEntropy", sqrt_hessian, sqrt_hessian_mc)


def MeanSquaredError() -> Loss:
    """L = mean((pred - target)**2) over all elements; pred and target of one shape."""

    def forward(pred, target):
        if pred.shape != target.shape:
            raise LayerError(
                f"MeanSquaredError: target shape {target.shape} != prediction shape {pred.shape}"
            )
        diff = pred - target.astype(pred.dtype)
        return jnp.mean(diff * diff), diff

    def backward(diff):
        # dpred = 2 (pred - target) / size
        return 2 * diff / diff.size

    def sqrt_hessian(diff):
        # the Hessian is 2 I / size: column k = sqrt(2 / size) e_k in every example (K = size / B)
        D = diff.size // diff.shape[0]
        eye = jnp.eye(D, dtype=diff.dtype).reshape(D, 1, *diff.shape[1:])
        return jnp.broadcast_to(eye * jnp.sqrt(2 / diff.size).astype(diff.dtype), (D, *diff.shape))

    def sqrt_hessian_mc(diff, key, samples=1):
        # s = sqrt(2 / size) z, z ~ N(0, I): E[s sᵀ] = 2 I / size
        z = jax.random.normal(key, (samples, *diff.shape), diff.dtype)
        return z * jnp.sqrt(2 / (diff.size * samples)).astype(diff.dtype)

    return Loss(forward, backward, "MeanSquaredError", sqrt_hessian, sqrt_hessian_mc)


def BinaryCrossEntropyWithLogits() -> Loss:
    """L = mean(max(z, 0) - z t + log(1 + exp(-|z|))) over all elements; z and t of one shape."""

    def forward(logits, target):
        if logits.shape != target.shape:
            raise LayerError(
                f"BinaryCrossEntropyWithLogits: target shape {target.shape} != logits shape {logits.shape}"
            )
        t = target.astype(logits.dtype)
        value = jnp.mean(jnp.maximum(logits, 0) - logits * t + jnp.log1p(jnp.exp(-jnp.abs(logits))))
        return value, (lax.logistic(logits), t)

    def backward(res):
        # dz = (sigmoid(z) - t) / size
        p, t = res
        return (p - t) / p.size

    def sqrt_hessian(res):
        # the Hessian is diag(p (1 - p)) / size: column k = sqrt(p_k (1 - p_k) / size) e_k
        p, _ = res
        D = p.size // p.shape[0]
        eye = jnp.eye(D, dtype=p.dtype).reshape(D, 1, *p.shape[1:])
        return eye * jnp.sqrt(p * (1 - p) / p.size)[None]

    def sqrt_hessian_mc(res, key, samples=1):
        # s = (p - y) / sqrt(size), y ~ Bernoulli(p): E[s²] = p (1 - p) / size
        p, _ = res
        y = jax.random.bernoulli(key, p, (samples, *p.shape)).astype(p.dtype)
        return (p - y) / jnp.sqrt(p.size * samples).astype(p.dtype)

    return Loss(forward, backward, "BinaryCrossEntropyWithLogits", sqrt_hessian, sqrt_hessian_mc)
