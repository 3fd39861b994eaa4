"""Networks of core layers with every loss: manual value_and_grad == jax.value_and_grad of the forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import assert_trees_close, cast_floats

import jaxbp

ACTIVATIONS = [
    jaxbp.Relu,
    jaxbp.LeakyRelu,
    jaxbp.Tanh,
    jaxbp.Sigmoid,
    jaxbp.Gelu,
    lambda: jaxbp.Gelu(approximate=False),
    jaxbp.Softplus,
    jaxbp.Elu,
]


def make_target(loss_name, key, out_shape):
    if loss_name == "ce":
        return jax.random.randint(key, out_shape[:-1], 0, out_shape[-1])
    if loss_name == "bce":
        return jax.random.bernoulli(key, 0.5, out_shape).astype(jnp.float64)
    return jax.random.normal(key, out_shape, jnp.float64)


LOSS = {
    "ce": jaxbp.SoftmaxCrossEntropy,
    "mse": jaxbp.MeanSquaredError,
    "bce": jaxbp.BinaryCrossEntropyWithLogits,
}


def autodiff_value_and_grad(net, loss):
    def f(params, x, target):
        return loss.forward(net.forward(params, x)[0], target)[0]

    return jax.value_and_grad(f)


# Every activation and every loss in the fast tier (activation i with loss i mod 3); the other
# 16 pairs in the slow tier.
PAIRS = [
    pytest.param(loss_name, act, marks=() if sorted(LOSS).index(loss_name) == act % 3 else pytest.mark.slow)
    for loss_name in sorted(LOSS)
    for act in range(len(ACTIVATIONS))
]


@pytest.mark.parametrize(("loss_name", "act"), PAIRS)
def test_mlp_matches_jax_grad(loss_name, act, key):
    a = ACTIVATIONS[act]
    net = jaxbp.serial(jaxbp.Reshape((-1,)), jaxbp.Dense(7), a(), jaxbp.Dense(6), a(), jaxbp.Dense(3))
    k1, k2, k3 = jax.random.split(key, 3)
    out_shape, params = net.init(k1, (5, 2, 4))
    params = cast_floats(params, jnp.float64)
    x = jax.random.normal(k2, (5, 2, 4), jnp.float64)
    target = make_target(loss_name, k3, out_shape)
    loss = LOSS[loss_name]()
    v, g = jax.jit(jaxbp.value_and_grad(net, loss))(params, x, target)
    v_ref, g_ref = jax.jit(autodiff_value_and_grad(net, loss))(params, x, target)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)
    assert_trees_close(g, g_ref, 1e-12, "grads")


def test_nested_networks_and_flatten(key):
    block = jaxbp.serial(jaxbp.Dense(5), jaxbp.Tanh())
    net = jaxbp.serial(jaxbp.Flatten(), block, jaxbp.serial(block, jaxbp.Dense(4)))
    _, params = net.init(key, (3, 2, 3))
    params = cast_floats(params, jnp.float64)
    x = jax.random.normal(key, (3, 2, 3), jnp.float64)
    y = jnp.array([0, 3, 1])
    loss = jaxbp.SoftmaxCrossEntropy()
    v, g = jax.jit(jaxbp.value_and_grad(net, loss))(params, x, y)
    v_ref, g_ref = jax.jit(autodiff_value_and_grad(net, loss))(params, x, y)
    assert_trees_close(g, g_ref, 1e-12)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)


def test_grad_matches_jax_grad(key):
    """``jaxbp.grad`` against an independent oracle: jax.grad of the composed forward and loss."""
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(2))
    _, params = net.init(key, (3, 5))
    params = cast_floats(params, jnp.float64)
    x, t = jax.random.normal(key, (3, 5), jnp.float64), jnp.array([0, 1, 1])
    loss = jaxbp.SoftmaxCrossEntropy()
    got = jax.jit(jaxbp.grad(net, loss))(params, x, t)
    want = jax.jit(jax.grad(lambda p, x, t: loss.forward(net.forward(p, x)[0], t)[0]))(params, x, t)
    assert_trees_close(got, want, 1e-12, "grad")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_keeps_input_dtype_under_x64(dtype, key):
    assert jax.config.jax_enable_x64
    net = jaxbp.serial(jaxbp.Dense(8), jaxbp.Gelu(), jaxbp.Dense(3))
    _, params = net.init(key, (4, 6))
    params = cast_floats(params, dtype)
    x = jax.random.normal(key, (4, 6), dtype)
    v, g = jax.jit(jaxbp.value_and_grad(net, jaxbp.SoftmaxCrossEntropy()))(params, x, jnp.array([0, 1, 2, 0]))
    assert v.dtype == dtype
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(g))
    if dtype == jnp.bfloat16:  # bf16 gradients agree with float32 ones to bf16 precision
        _, g32 = jax.jit(jaxbp.value_and_grad(net, jaxbp.SoftmaxCrossEntropy()))(
            cast_floats(params, jnp.float32), x.astype(jnp.float32), jnp.array([0, 1, 2, 0])
        )
        assert_trees_close(cast_floats(g, jnp.float32), g32, 5e-2)


def test_params_are_plain_pytrees(key):
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(2, use_bias=False))
    _, params = net.init(key, (1, 3))
    assert params[1] == () and set(params[0]) == {"W", "b"} and set(params[2]) == {"W"}
    vg = jax.jit(jaxbp.value_and_grad(net, jaxbp.MeanSquaredError()))
    _, g = vg(params, jnp.ones((1, 3)), jnp.ones((1, 2)))
    assert jax.tree.structure(g) == jax.tree.structure(params)


def count_dots(fn, *args) -> int:
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return sum(" dot(" in line for line in hlo.splitlines())


def test_bottom_level_input_gradient_is_not_computed(key):
    """value_and_grad drops level 0's dL/dx: N forward + N dW + (N-1) dx matmuls for N Dense levels."""
    net = jaxbp.serial(jaxbp.Dense(16), jaxbp.Relu(), jaxbp.Dense(16), jaxbp.Relu(), jaxbp.Dense(4))
    _, params = net.init(key, (8, 12))
    x, t = jnp.ones((8, 12), jnp.float32), jnp.zeros(8, jnp.int32)
    loss = jaxbp.SoftmaxCrossEntropy()

    def with_input_grad(p, x, t):
        y, res = net.forward(p, x)
        return net.backward(p, res, loss.backward(loss.forward(y, t)[1]))

    assert count_dots(jaxbp.value_and_grad(net, loss), params, x, t) == 3 * 3 - 1
    assert count_dots(with_input_grad, params, x, t) == 3 * 3


@pytest.mark.parametrize(("n", "chunk"), [(23, 5), (7, 10), (20, 4)])
def test_evaluate_pads_the_last_chunk_and_counts_exactly(n, chunk, key):
    """make_evaluate's accuracy == a NumPy count of argmax == label, chunks padded or not."""
    from jaxbp.train.fit import make_evaluate

    net = jaxbp.serial(jaxbp.Dense(4))
    _, params = net.init(key, (n, 3))
    x = np.asarray(jax.random.normal(key, (n, 3)), np.float32)
    logits = x @ np.asarray(params[0]["W"]) + np.asarray(params[0]["b"])
    y = np.where(np.arange(n) % 3 == 0, logits.argmax(-1), (logits.argmax(-1) + 1) % 4)  # 1/3 right
    want = int((logits.argmax(-1) == y).sum())
    assert 0 < want < n
    assert make_evaluate(net, chunk=chunk)(params, (), x, y) == want / n
