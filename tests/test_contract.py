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


def _with_backward(layer, backward, name="Bad"):
    return layer._replace(backward=backward, name=name)


def _dense_problem(key):
    net_of = lambda middle: jaxbp.serial(jaxbp.Dense(4), middle, jaxbp.Dense(3))  # noqa: E731
    _, params = net_of(jaxbp.Dense(4)).init(key, (2, 5))
    return net_of, params, jnp.ones((2, 5)), jnp.zeros(2, jnp.int32)


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        (lambda dp, dx: (dx, dp), r"dparams has tree structure .*swapped|instead of \(dparams, dx\)"),
        (lambda dp, dx: ({"w": dp["W"], "b": dp["b"]}, dx), r"dparams has tree structure"),
        (lambda dp, dx: ({**dp, "b": dp["b"][:3]}, dx), r"dparams\['b'\] has shape \(3,\), expected \(4,\)"),
        (lambda dp, dx: ({**dp, "b": dp["b"].astype(jnp.float16)}, dx), r"dparams\['b'\] has dtype float16"),
        (lambda dp, dx: (dp, dx[:, :3]), r"dx has shape \(2, 3\), expected \(2, 4\)"),
    ],
    ids=["swapped", "wrong keys", "wrong shape", "wrong dtype", "wrong dx at level 1"],
)
def test_a_backward_that_breaks_the_contract_is_named_at_its_level(key, bug, message):
    net_of, params, x, y = _dense_problem(key)
    dense = jaxbp.Dense(4)
    bad = _with_backward(dense, lambda p, r, g: bug(*dense.backward(p, r, g)))
    vg = jax.jit(jaxbp.value_and_grad(net_of(bad), jaxbp.SoftmaxCrossEntropy()))
    with pytest.raises(jaxbp.errors.ContractError, match=r"^level 1 \(Bad\): its backward broke") as e:
        vg(params, x, y)
    assert e.value.path == ("1",)
    assert e.match(message)


def test_contract_errors_name_the_path_inside_nested_blocks(key):
    dense = jaxbp.Dense(4)
    bad = _with_backward(dense, lambda p, r, g: (dense.backward(p, r, g)[0], r[:, :4]))  # dx wrong shape
    net = jaxbp.serial(
        jaxbp.Dense(4), jaxbp.Residual(jaxbp.serial(jaxbp.Tanh(), jaxbp.Dense(6), bad)), jaxbp.Dense(3)
    )
    _, params = net.init(key, (2, 5))
    with pytest.raises(
        jaxbp.errors.ContractError,
        match=r"^level 1/branch/2 \(Bad\): .*dx has shape \(2, 4\), expected \(2, 6\)",
    ):
        jaxbp.value_and_grad(net, jaxbp.SoftmaxCrossEntropy())(params, jnp.ones((2, 5)), jnp.zeros(2, int))
    par = jaxbp.serial(jaxbp.FanOut(2), jaxbp.parallel(jaxbp.Dense(4), bad), jaxbp.FanInSum())
    _, params = par.init(key, (2, 6))
    with pytest.raises(jaxbp.errors.ContractError, match=r"^level 1/1 \(Bad\)"):
        jaxbp.value_and_grad(par, jaxbp.MeanSquaredError())(params, jnp.ones((2, 6)), jnp.ones((2, 4)))


def test_a_single_layer_network_is_checked_too(key):
    bad = _with_backward(Scale(), lambda p, x, g: ({"s": g * x}, g * p["s"]))  # leftover batch axis
    _, params = bad.init(key, (8, 16))
    with pytest.raises(
        jaxbp.errors.ContractError, match=r"^level 0 \(Bad\).*dparams\['s'\] has shape \(8, 16\)"
    ):
        jaxbp.value_and_grad(bad, jaxbp.MeanSquaredError())(params, jnp.ones((8, 16)), jnp.ones((8, 16)))


def test_train_step_refuses_a_leftover_batch_axis_instead_of_broadcasting(key):
    import optax

    bad = _with_backward(Scale(), lambda p, x, g: ({"s": g * x}, g * p["s"]))  # ds not summed over the batch
    for net in (bad, jaxbp.serial(jaxbp.Dense(16), bad, jaxbp.Dense(3))):
        _, ts = jaxbp.init_train_state(net, optax.sgd(0.1), key, (8, 16))
        before = jax.tree.map(np.asarray, ts)
        step = jaxbp.make_train_step(net, jaxbp.SoftmaxCrossEntropy(), optax.sgd(0.1))
        x, y = jnp.ones((8, 16)), jnp.zeros(8, jnp.int32)
        with pytest.raises(
            jaxbp.errors.ContractError, match=r"dparams\['s'\] has shape \(8, 16\), expected \(16,\)"
        ):
            step(ts, x, y)
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, ts), before)


@pytest.mark.parametrize("combine", [jaxbp.serial, jaxbp.parallel, jaxbp.Residual])
def test_a_plain_function_inside_a_combinator_is_refused_with_its_position(combine):
    args = (jax.nn.relu,) if combine is jaxbp.Residual else (jaxbp.Dense(3), jax.nn.relu)
    pos = 0 if combine is jaxbp.Residual else 1
    with pytest.raises(jaxbp.LayerError, match=rf"argument {pos} is relu .*not a Layer"):
        combine(*args)
