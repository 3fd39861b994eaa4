"""Losses: hand-written dL/dpred == jax.grad of the loss's own forward; stability; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import assert_trees_close

import jaxbp


def _labels(rng, s):
    return rng.integers(0, s[-1], s[:-1])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# Targets are drawn on the host with NumPy (jax.random would compile a program per shape).
LOSSES = {
    "ce_labels": (jaxbp.SoftmaxCrossEntropy, lambda rng, s: jnp.asarray(_labels(rng, s))),
    "ce_onehot": (jaxbp.SoftmaxCrossEntropy, lambda rng, s: jnp.asarray(np.eye(s[-1])[_labels(rng, s)])),
    "ce_soft": (jaxbp.SoftmaxCrossEntropy, lambda rng, s: jnp.asarray(_softmax(rng.standard_normal(s)))),
    "mse": (jaxbp.MeanSquaredError, lambda rng, s: jnp.asarray(rng.standard_normal(s))),
    "bce": (jaxbp.BinaryCrossEntropyWithLogits, lambda rng, s: jnp.asarray(rng.integers(0, 2, s), float)),
}


def loss_grad_pair(loss, pred, target):
    value, res = loss.forward(pred, target)
    want_value, want = jax.value_and_grad(lambda p: loss.forward(p, target)[0])(pred)
    return value, loss.backward(res), want_value, want


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(1, 3), (5, 4), (2, 3, 6)])
def test_backward_matches_grad_float64(name, shape, key):
    make, target_fn = LOSSES[name]
    rng = np.random.default_rng(sorted(LOSSES).index(name))
    pred = jnp.asarray(rng.standard_normal(shape))
    target = target_fn(rng, shape)
    target = target.astype(jnp.float64) if jnp.issubdtype(target.dtype, jnp.floating) else target
    value, got, want_value, want = jax.jit(lambda p, t: loss_grad_pair(make(), p, t))(pred, target)
    np.testing.assert_allclose(value, want_value, rtol=1e-13)
    assert_trees_close(got, want, 1e-12, name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_keeps_float32_and_bfloat16(name, key):
    make, target_fn = LOSSES[name]
    rng = np.random.default_rng(0)
    for dtype in (jnp.float32, jnp.bfloat16):
        pred = jnp.asarray(rng.standard_normal((4, 5)), dtype)
        target = target_fn(rng, (4, 5))
        target = target.astype(dtype) if jnp.issubdtype(target.dtype, jnp.floating) else target
        value, res = make().forward(pred, target)
        assert value.dtype == dtype and make().backward(res).dtype == dtype


@pytest.mark.parametrize("name", ["ce_labels", "ce_soft", "bce"])
def test_stable_at_huge_logits(name):
    make, _ = LOSSES[name]
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], jnp.float32)
    target = {
        "ce_labels": jnp.array([1, 1]),
        "ce_soft": jnp.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]),
        "bce": jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
    }[name]
    value, res = make().forward(z, target)
    dz = make().backward(res)
    assert np.isfinite(value) and np.all(np.isfinite(dz))
    if name == "ce_labels":  # row 0 is wrong by 2e4 nats, row 1 right
        np.testing.assert_allclose(value, 1e4, rtol=1e-6)
    if name == "ce_soft":  # row 0: -0.5 log 1 - 0.5 log e^-2e4 = 1e4 ; row 1 ≈ 0
        np.testing.assert_allclose(value, 0.5 * (0.5 * 2e4), rtol=1e-6)


def test_cross_entropy_value_matches_optax(key):
    import optax

    z = jax.random.normal(key, (6, 4))
    labels = jnp.array([0, 3, 2, 1, 1, 0])
    value, _ = jaxbp.SoftmaxCrossEntropy().forward(z, labels)
    np.testing.assert_allclose(
        value, optax.softmax_cross_entropy_with_integer_labels(z, labels).mean(), rtol=1e-6
    )


def test_bad_targets_raise_clear_errors():
    z = jnp.zeros((4, 3))
    with pytest.raises(jaxbp.LayerError, match=r"labels must lie in \[0, 3\), got values in \[0, 3\]"):
        jaxbp.SoftmaxCrossEntropy().forward(z, jnp.array([0, 1, 2, 3]))
    with pytest.raises(jaxbp.LayerError, match=r"target .* has shape \(5,\), expected \(4,\)"):
        jaxbp.SoftmaxCrossEntropy().forward(z, jnp.zeros(5, jnp.int32))
    with pytest.raises(jaxbp.LayerError, match=r"target shape \(4, 1\) != prediction shape \(4, 3\)"):
        jaxbp.MeanSquaredError().forward(z, jnp.zeros((4, 1)))
    with pytest.raises(jaxbp.LayerError, match=r"target shape \(3,\) != logits shape \(4, 3\)"):
        jaxbp.BinaryCrossEntropyWithLogits().forward(z, jnp.zeros(3))


def test_concrete_labels_closed_over_by_jit_are_checked():
    z = jnp.zeros((2, 3))
    good, bad = jnp.array([0, 2]), jnp.array([0, 3])
    assert np.isfinite(jax.jit(lambda z: jaxbp.SoftmaxCrossEntropy().forward(z, good)[0])(z))
    with pytest.raises(jaxbp.LayerError, match=r"labels must lie in \[0, 3\)"):
        jax.jit(lambda z: jaxbp.SoftmaxCrossEntropy().forward(z, bad)[0])(z)
