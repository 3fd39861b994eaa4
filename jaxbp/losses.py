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

    return Loss(forward, backward, name="SoftmaxCrossEntropy")


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

    return Loss(forward, backward, name="MeanSquaredError")


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

    return Loss(forward, backward, name="BinaryCrossEntropyWithLogits")
