"""Straight-through estimators: backward == autodiff of check_forward; BinaryConnect's clip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from jaxbp.layers.ste import clip_params


@pytest.mark.parametrize(
    "make", [jaxbp.Sign, jaxbp.Round, lambda: jaxbp.BinaryDense(3, param_dtype=jnp.float64)]
)
def test_backward_is_the_vjp_of_check_forward(make):
    layer = make()
    x = 1.7 * jax.random.normal(jax.random.PRNGKey(0), (4, 5), jnp.float64)
    _, params = layer.init(jax.random.PRNGKey(1), x.shape)
    y, res = layer.forward(params, x)
    g = jax.random.normal(jax.random.PRNGKey(2), y.shape, jnp.float64)
    y2, vjp = jax.vjp(lambda p, xx: layer.check_forward(p, xx)[0], params, x)
    np.testing.assert_allclose(y2, y, atol=1e-15)
    for a, b in zip(jax.tree.leaves(layer.backward(params, res, g)), jax.tree.leaves(vjp(g)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert set(np.unique(np.asarray(jaxbp.Sign().forward((), x)[0]))) == {-1.0, 1.0}


def test_clip_params_keeps_binary_weights_in_the_box_and_trains():
    net = jaxbp.serial(jaxbp.BinaryDense(8), jaxbp.Sign(), jaxbp.Dense(2))
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 4))
    t = (x[:, 0] > 0).astype(jnp.int32)
    _, params = net.init(jax.random.PRNGKey(1), x.shape)
    opt = optax.chain(
        optax.sgd(5.0),
        optax.masked(
            clip_params(),
            lambda p: (jax.tree.map(lambda _: True, p[0]), (), jax.tree.map(lambda _: False, p[2])),
        ),
    )
    state = opt.init(params)
    grad = jaxbp.grad(net, jaxbp.SoftmaxCrossEntropy())
    for _ in range(3):
        updates, state = opt.update(grad(params, x, t), state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.abs(params[0]["W"]).max()) <= 1.0
    assert float(jnp.abs(params[2]["W"]).max()) > 1.0  # unmasked levels are not clipped
