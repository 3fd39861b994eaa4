"""Gradient flow walk: per-level norms against jax.grad, and locating where values turn non-finite."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp.core import Layer
from jaxbp.flow import NonFinite, backward_with_flow, flow_norms, locate_nonfinite
from jaxbp.losses import SoftmaxCrossEntropy


def SqrtAbs() -> Layer:
    """y = sqrt(|x|): its gradient is infinite at x == 0 (a test layer for non-finite backward)."""

    def forward(params, x):
        y = jnp.sqrt(jnp.abs(x))
        return y, (jnp.sign(x), y)

    def backward(params, res, g):
        # dx = g * sign(x) / (2 sqrt(|x|))
        sign, y = res
        return (), g * sign / (2 * y)

    return Layer(lambda key, shape: (tuple(shape), ()), forward, backward, name="SqrtAbs")


def net_params_data(key):
    net = jaxbp.serial(jaxbp.Dense(5), jaxbp.Tanh(), jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(3))
    _, params = net.init(key, (6, 2))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2), jnp.float64)
    return net, params, x, jnp.array([0, 1, 2, 0, 1, 2])


def test_flow_norms_match_autodiff(key):
    net, params, x, t = net_params_data(key)
    loss = SoftmaxCrossEntropy()

    @jax.jit
    def walk(params, x, t):
        y, res = net.forward(params, x)
        g = loss.backward(loss.forward(y, t)[1])
        return backward_with_flow(net, params, res, g), net.backward(params, res, g)

    (grads, dx_norms, dp_norms), (ref_grads, ref_dx) = walk(params, x, t)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), grads, ref_grads))
    assert dx_norms.shape == dp_norms.shape == (5,)

    @jax.jit
    def oracle(params, x, t):  # dL/dx^n and dL/dω^n by jax.grad of the levels n..N-1 applied to x^n
        xs, out = [x], []
        for layer, p in zip(net.layers, params, strict=True):
            xs.append(layer.forward(p, xs[-1])[0])
        for n in range(5):
            top = jaxbp.serial(*net.layers[n:])
            f = lambda ps, xn, top=top: loss.forward(top.forward(ps, xn)[0], t)[0]  # noqa: E731
            dps, dxn = jax.grad(f, argnums=(0, 1))(params[n:], xs[n])
            out.append((jnp.linalg.norm(dxn), jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(dps[0])))))
        return jnp.array(out)

    ref = oracle(params, x, t)
    np.testing.assert_allclose(dx_norms, ref[:, 0], rtol=1e-10)
    np.testing.assert_allclose(dp_norms, ref[:, 1], rtol=1e-10)
    np.testing.assert_allclose(dx_norms[0], jnp.linalg.norm(ref_dx), rtol=1e-6)
    assert dp_norms[1] == 0 and dp_norms[3] == 0  # Tanh, Relu have no params

    jitted = jax.jit(lambda p, x, t: flow_norms(net, loss, p, (), None, x, t))(params, x, t)
    np.testing.assert_allclose(jitted[0], dx_norms, rtol=1e-6)


def test_locate_nonfinite(key):
    loss = SoftmaxCrossEntropy()
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Relu(), SqrtAbs(), jaxbp.Dense(3))
    _, params = net.init(key, (5, 3))
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    t = jnp.array([0, 1, 2, 0, 1])
    # Relu zeros feed SqrtAbs: forward finite, its backward divides by 0 (level 3 above it is fine)
    assert locate_nonfinite(net, loss, params, x, t) == NonFinite("backward", 2, "SqrtAbs")

    bad = (dict(params[0], W=params[0]["W"].at[0, 0].set(jnp.inf)), *params[1:])
    assert locate_nonfinite(net, loss, bad, x, t) == NonFinite("forward", 0, "Dense(4)")
    assert "forward pass: level 0 (Dense(4))" in locate_nonfinite(net, loss, bad, x, t).describe()

    probs = jnp.full((5, 3), jnp.nan)
    fine = jaxbp.serial(jaxbp.Dense(3))
    _, fp = fine.init(key, (5, 3))
    assert locate_nonfinite(fine, loss, fp, x, probs) == NonFinite("loss", None, "SoftmaxCrossEntropy")
    assert locate_nonfinite(fine, loss, fp, x, t) is None
