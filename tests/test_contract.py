"""The contract: user-written layers, subgradients at kinks, and clear errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import assert_trees_close, check_layer_against_vjp

import jaxbp


def Scale():
    """y = x * s (one learned scale per feature): (B, F) -> (B, F). The README's user-written layer."""

    def init(key, input_shape):
        return input_shape, {"s": jnp.ones(input_shape[-1:])}

    def forward(params, x):
        return x * params["s"], x

    def backward(params, x, g):
        # dx = g * s; ds = sum_b g * x
        return {"s": (g * x).sum(0)}, g * params["s"]

    return jaxbp.Layer(init, forward, backward)


def test_user_written_layer_works_everywhere(key):
    check_layer_against_vjp(Scale(), (4, 3), key=key)
    net = jaxbp.serial(jaxbp.Dense(3), Scale(), jaxbp.Relu(), jaxbp.Dense(2))
    _, params = net.init(key, (4, 5))
    x, y = jax.random.normal(key, (4, 5)), jnp.array([0, 1, 1, 0])
    loss = jaxbp.SoftmaxCrossEntropy()
    _, g = jax.jit(jaxbp.value_and_grad(net, loss))(params, x, y)
    g_ref = jax.grad(lambda p: loss.forward(net.forward(p, x)[0], y)[0])(params)
    assert_trees_close(g, g_ref, 1e-5)


@pytest.mark.slow  # tests/test_docs.py runs README's blocks in the fast tier
def test_readme_example_runs():
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, "README has python examples"
    for block in blocks:
        if "# doctest: skip" not in block:
            exec(compile(block, "README.md", "exec"), {})


@pytest.mark.parametrize(
    ("layer", "x", "want"),
    [
        (jaxbp.Relu(), [-1.0, 0.0, 2.0], [0.0, 0.0, 1.0]),  # 0 at the kink, as jax.nn.relu
        (jaxbp.LeakyRelu(0.1), [-1.0, 0.0, 2.0], [0.1, 1.0, 1.0]),  # 1 at the kink, as jax.nn.leaky_relu
        (jaxbp.Elu(0.5), [-1.0, 0.0, 2.0], [0.5 * np.exp(-1.0), 0.5, 1.0]),  # alpha at 0, as jax.nn.elu
    ],
)
def test_documented_subgradient_at_zero(layer, x, want):
    x = jnp.array(x, jnp.float64)
    _, res = layer.forward((), x)
    _, dx = layer.backward((), res, jnp.ones_like(x))
    np.testing.assert_allclose(dx, want, rtol=1e-15)
    same_as_jax = {
        "Relu": jax.nn.relu,
        "LeakyRelu(0.1)": lambda v: jax.nn.leaky_relu(v, 0.1),
        "Elu(0.5)": lambda v: jax.nn.elu(v, 0.5),
    }[layer.name]
    np.testing.assert_allclose(dx, jax.vmap(jax.grad(same_as_jax))(x), rtol=1e-15)


def test_shape_errors_name_level_layer_and_shapes(key):
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(3))
    _, params = net.init(key, (2, 5))
    with pytest.raises(
        jaxbp.LayerError, match=r"level 0 \(Dense\(4\)\).*input shape \(2, 6\).*W of shape \(5, 4\)"
    ):
        net.forward(params, jnp.ones((2, 6)))
    with pytest.raises(jaxbp.LayerError, match=r"level 0 \(Dense\(4\)\).*rank >= 1, got shape \(\)"):
        net.init(key, ())
    with pytest.raises(jaxbp.LayerError, match=r"level 0 \(Dense\(4\)\).*input shape \(\)"):
        net.forward(params, jnp.float32(1.0))
    with pytest.raises(
        jaxbp.LayerError, match=r"Reshape\(\(4, -1\)\): cannot reshape input of shape \(2, 6\)"
    ):
        jaxbp.Reshape((4, -1)).forward((), jnp.ones((2, 6)))


def test_params_from_another_network_are_refused_at_trace_time(key):
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(3))
    other = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(6), jaxbp.Relu(), jaxbp.Dense(3))
    _, params = net.init(key, (2, 5))
    _, other_params = other.init(key, (2, 5))
    with pytest.raises(jaxbp.LayerError, match=r"3 levels got params with 5 entries"):
        jax.jit(jaxbp.value_and_grad(net, jaxbp.SoftmaxCrossEntropy()))(
            other_params, jnp.ones((2, 5)), jnp.zeros(2, int)
        )
    swapped = (params[0], (), {"W": jnp.ones((5, 3)), "b": jnp.zeros(3)})
    with pytest.raises(
        jaxbp.LayerError, match=r"level 2 \(Dense\(3\)\): .*input shape \(2, 4\).*W of shape \(5, 3\)"
    ):
        jax.jit(net.forward)(swapped, jnp.ones((2, 5)))


def test_nothing_is_mutated_on_error(key):
    import optax

    opt = optax.sgd(0.1)
    net = jaxbp.serial(jaxbp.Dense(3))
    _, ts = jaxbp.init_train_state(net, opt, key, (2, 4))
    before = jax.tree.map(np.asarray, ts)
    step = jaxbp.make_train_step(net, jaxbp.SoftmaxCrossEntropy(), opt)
    with pytest.raises(jaxbp.LayerError):
        step(ts, jnp.ones((2, 5)), jnp.zeros(2, jnp.int32))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, ts), before)
