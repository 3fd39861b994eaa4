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
    assert locate_nonfinite(net, loss, params, x, t) == NonFinite("backward", "2", "SqrtAbs")

    bad = (dict(params[0], W=params[0]["W"].at[0, 0].set(jnp.inf)), *params[1:])
    assert locate_nonfinite(net, loss, bad, x, t) == NonFinite("forward", "0", "Dense(4)")
    assert "forward pass: level 0 (Dense(4))" in locate_nonfinite(net, loss, bad, x, t).describe()

    probs = jnp.full((5, 3), jnp.nan)
    fine = jaxbp.serial(jaxbp.Dense(3))
    _, fp = fine.init(key, (5, 3))
    assert locate_nonfinite(fine, loss, fp, x, probs) == NonFinite("loss", None, "SoftmaxCrossEntropy")
    assert locate_nonfinite(fine, loss, fp, x, t) is None


def _flow_oracle(net, loss, params, x, t):
    """(path, ‖dL/dx‖, ‖dL/dω‖) of every leaf by jax.grad with respect to a zero added at its output
    (dL/dy of the leaf) pulled back through jax.vjp of the leaf's forward."""
    from jaxbp.combinators import walk_forward
    from jaxbp.contract import path_str

    seen = {}

    def run(deltas, record=False):
        def leaf(path, layer, p, xx, *, state, key, train):
            y, r, s = jaxbp.apply(layer, p, xx, state=state, key=key, train=train)
            if record:
                seen[path_str(path)] = (layer, p, xx)
            d = deltas.get(path_str(path))
            return (y if d is None else jax.tree.map(jnp.add, y, d)), r, s

        return loss.forward(walk_forward(net, params, x, leaf)[0], t)[0]

    run({}, record=True)
    zeros = {k: jax.tree.map(jnp.zeros_like, jaxbp.apply(lay, p, xx)[0]) for k, (lay, p, xx) in seen.items()}
    gys = jax.grad(run)(zeros)
    out = []
    for k, (lay, p, xx) in seen.items():
        dp, dx = jax.vjp(lambda p, xx, lay=lay: jaxbp.apply(lay, p, xx)[0], p, xx)[1](gys[k])
        sq = lambda tree: jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(tree)))  # noqa: E731
        out.append((k, sq(dx), sq(dp)))
    return out


def test_flow_norms_on_any_network(key):
    """Residual, parallel and nested networks at the top: one entry per leaf, in path order, = autodiff."""
    from jaxbp.combinators import leaves

    loss = jaxbp.MeanSquaredError()
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 4), jnp.float64)
    t = jax.random.normal(jax.random.PRNGKey(2), (3, 4), jnp.float64)
    cases = [
        (jaxbp.Residual(jaxbp.Dense(4)), x, t, ["branch"]),
        (jaxbp.Dense(4), x, t, ["0"]),
        (jaxbp.parallel(jaxbp.Dense(4), jaxbp.Dense(4)), (x, x + 1), (t, t), ["0", "1"]),
        (
            jaxbp.serial(
                jaxbp.Dense(4),
                jaxbp.Residual(jaxbp.serial(jaxbp.Tanh(), jaxbp.Dense(4))),
                jaxbp.FanOut(2),
                jaxbp.parallel(jaxbp.Dense(4), jaxbp.Identity()),
                jaxbp.FanInSum(),
            ),
            x,
            t,
            ["0", "1/branch/0", "1/branch/1", "2", "3/0", "3/1", "4"],
        ),
    ]
    for net, xx, tt, paths in cases:
        shape = jax.tree.map(jnp.shape, xx)
        _, params = net.init(key, shape)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        if isinstance(tt, tuple):  # a tuple output: the loss of its sum
            tree_loss = jaxbp.Loss(
                lambda y, t: loss.forward(y[0] + y[1], t[0]), lambda r: (loss.backward(r),) * 2, "sum MSE"
            )
        else:
            tree_loss = loss
        assert [lf.path for lf in leaves(net, shape)] == paths
        dx_norms, dp_norms = jax.jit(
            lambda p, xx, tt, net=net, lo=tree_loss: flow_norms(net, lo, p, (), None, xx, tt)
        )(params, xx, tt)
        ref = _flow_oracle(net, tree_loss, params, xx, tt)
        assert [r[0] for r in ref] == paths
        np.testing.assert_allclose(dx_norms, [r[1] for r in ref], rtol=1e-10)
        np.testing.assert_allclose(dp_norms, [r[2] for r in ref], rtol=1e-10, atol=1e-300)


def test_locate_nonfinite_inside_a_residual_branch(key):
    loss = SoftmaxCrossEntropy()
    net = jaxbp.serial(jaxbp.Dense(4), jaxbp.Residual(jaxbp.serial(jaxbp.Relu(), SqrtAbs())), jaxbp.Dense(3))
    _, params = net.init(key, (5, 3))
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    where = locate_nonfinite(net, loss, params, x, jnp.array([0, 1, 2, 0, 1]))
    assert where == NonFinite("backward", "1/branch/1", "SqrtAbs")
    assert "level 1/branch/1 (SqrtAbs)" in where.describe()
