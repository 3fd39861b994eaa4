"""jaxbp.quantities against autodiff oracles in float64 (tolerance 1e-10).

First-order: vmap(jax.grad) per example. Second-order: the explicit GGN (jax.jacobian of the network
and jax.hessian of the loss) and jax.hessian of the loss wrt the params, on tiny networks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import compiled
from jax.flatten_util import ravel_pytree

from jaxbp.combinators import FanInSum, FanOut, Residual, parallel, serial
from jaxbp.core import apply
from jaxbp.errors import LayerError, UsageError
from jaxbp.layers.activations import Elu, Gelu, Relu, Sigmoid, Softplus, Tanh
from jaxbp.layers.attention import MultiHeadAttention
from jaxbp.layers.conv import Conv1D, Conv2D
from jaxbp.layers.dense import Dense
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.norm import BatchNorm, LayerNorm
from jaxbp.layers.per_example import outer_l2
from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool
from jaxbp.layers.recurrent import RNN
from jaxbp.layers.shape import Flatten
from jaxbp.layers.softmax import Softmax
from jaxbp.losses import BinaryCrossEntropyWithLogits, MeanSquaredError, SoftmaxCrossEntropy
from jaxbp.quantities import value_grad_and

TOL = 1e-10
FIRST = ("batch_grad", "batch_l2", "sum_grad_squared", "variance")


def setup(net, x_shape, key, *, ints=None):
    kx, kp, ks = jax.random.split(key, 3)
    x = jax.random.randint(kx, x_shape, 0, ints) if ints else jax.random.normal(kx, x_shape, jnp.float64)
    _, params = net.init(kp, x_shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.3 * jax.random.normal(ks, a.shape), params)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.5, _state(net, x_shape))
    return x, params, state


def _state(net, shape):
    from jaxbp.core import init_state

    return init_state(net, shape)


def loss_fn(net, loss, state=()):
    def L(p, x, t):
        y, _, _ = apply(net, p, x, state=state, train=False)
        return loss.forward(y, t)[0]

    return L


def close(got, want, what):
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape, (what, a.shape, b.shape)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=TOL, err_msg=what)


def first_order_oracle(L, params, x, t):
    B = x.shape[0]
    pe = jax.vmap(lambda xi, ti: jax.grad(L)(params, xi[None], ti[None]))(x, t)
    pe = jax.tree.map(lambda a: a / B, pe)  # example n's share of the mean loss
    grad = jax.grad(L)(params, x, t)
    return {
        "batch_grad": pe,
        "batch_l2": jax.tree.map(lambda a: (a.reshape(B, -1) ** 2).sum(1), pe),
        "sum_grad_squared": jax.tree.map(lambda a: (a**2).sum(0), pe),
        "variance": jax.tree.map(lambda a: a.var(0), pe),
    }, grad


def check_first_order(net, loss, x, t, params, state=()):
    value, grads, q = compiled(
        lambda p, x, t: value_grad_and(net, loss, *FIRST)(p, x, t, state=state), params, x, t
    )
    L = loss_fn(net, loss, state)
    want, grad = compiled(lambda p, x, t: first_order_oracle(L, p, x, t), params, x, t)
    close(grads, grad, "grads")
    np.testing.assert_allclose(value, L(params, x, t), rtol=1e-12)
    for name in FIRST:
        close(q[name], want[name], name)
    close(jax.tree.map(lambda a: a.sum(0), q["batch_grad"]), grads, "sum of batch_grad")


def test_first_order_small(key):
    net = serial(Conv2D(2, 2, padding="VALID"), Tanh(), Flatten(), Dense(3), Residual(Dense(3)))
    x, params, _ = setup(net, (3, 3, 3, 1), key)
    check_first_order(net, SoftmaxCrossEntropy(), x, jnp.array([0, 1, 2]), params)


@pytest.mark.slow
def test_first_order_cnn_residual(key):
    net = serial(
        Conv2D(3, (2, 2), strides=(2, 1), padding=((1, 0), (0, 1))),
        Elu(),
        MaxPool((2, 2), strides=(1, 1)),
        Conv2D(2, 2, padding="VALID", kernel_dilation=(1, 2)),
        AvgPool((1, 2)),
        Flatten(),
        Dense(4),
        Residual(serial(Dense(4), Tanh())),
        Dense(3),
    )
    x, params, _ = setup(net, (5, 6, 7, 2), key)
    check_first_order(net, SoftmaxCrossEntropy(), x, jnp.array([0, 1, 2, 1, 0]), params)


@pytest.mark.slow
def test_first_order_sequences_and_fans(key):
    # Embedding -> LayerNorm/MHA residual block -> parallel fans -> BatchNorm (eval) -> Conv1D -> Dense
    net = serial(
        Embedding(7, 8),
        Residual(serial(LayerNorm(), MultiHeadAttention(2, causal=True))),
        FanOut(2),
        parallel(Dense(6), serial(Dense(6), Gelu())),
        FanInSum(),
        BatchNorm(),
        Dropout(0.5),
        Conv1D(5, 2),
        Dense(3),
    )
    x, params, state = setup(net, (3, 4), key, ints=7)
    t = jax.random.randint(key, (3, 4), 0, 3)
    check_first_order(net, SoftmaxCrossEntropy(), x, t, params, state)


@pytest.mark.slow
def test_first_order_grouped_conv_and_mse(key):
    net = serial(Conv2D(4, 2, feature_group_count=2), Softplus(), GlobalAvgPool(), Dense(2))
    x, params, _ = setup(net, (3, 4, 4, 2), key)
    check_first_order(net, MeanSquaredError(), x, jax.random.normal(key, (3, 2)), params)


@pytest.mark.slow
def test_ghost_norm_both_forms(key):
    k1, k2 = jax.random.split(key)
    for T, I, O in ((5, 8, 8), (30, 2, 3)):  # Gram form, then the materialised one
        x = jax.random.normal(k1, (4, T, I), jnp.float64)
        g = jax.random.normal(k2, (4, T, O), jnp.float64)
        want = (jnp.einsum("bti,bto->bio", x, g) ** 2).sum((1, 2))
        np.testing.assert_allclose(outer_l2(x, g), want, rtol=1e-12)


def flat_setup(net, loss, params, x, t):
    flat, unravel = ravel_pytree(params)
    y = apply(net, params, x)[0]

    def jh(flat, x, t):
        J = jax.jacobian(lambda fp: apply(net, unravel(fp), x)[0])(flat).reshape(y.size, flat.size)
        H = jax.hessian(lambda yy: loss.forward(yy.reshape(y.shape), t)[0])(y.ravel())
        return J, H

    J, H = compiled(jh, flat, x, t)
    return flat, unravel, J, H


def test_diag_ggn_kflr_diag_hessian(key):
    net = serial(Conv2D(2, 2, padding="VALID"), Sigmoid(), Flatten(), Dense(3), Tanh(), Dense(3))
    x, params, _ = setup(net, (3, 3, 3, 1), key)
    t = jnp.array([2, 0, 1])
    loss = SoftmaxCrossEntropy()
    _, _, q = compiled(value_grad_and(net, loss, "diag_ggn", "diag_hessian"), params, x, t)
    flat, _, J, H = flat_setup(net, loss, params, x, t)
    ggn = J.T @ H @ J
    np.testing.assert_allclose(ravel_pytree(q["diag_ggn"])[0], jnp.diag(ggn), rtol=0, atol=TOL)
    unravel = ravel_pytree(params)[1]
    hess = compiled(
        lambda fp, x, t: jax.hessian(lambda f: loss_fn(net, loss)(unravel(f), x, t))(fp), flat, x, t
    )
    np.testing.assert_allclose(ravel_pytree(q["diag_hessian"])[0], jnp.diag(hess), rtol=0, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [MeanSquaredError(), BinaryCrossEntropyWithLogits()])
def test_kflr_is_the_ggn_block_for_one_example(key, loss):
    # one example and a conv whose window covers the input: every A ⊗ G is the exact GGN block
    net = serial(Conv2D(3, 2, padding="VALID"), Flatten(), Softplus(), Dense(2))
    x, params, _ = setup(net, (1, 2, 2, 2), key)
    t = jax.nn.sigmoid(jax.random.normal(key, (1, 2)))
    _, _, q = compiled(value_grad_and(net, loss, "kflr", "diag_ggn"), params, x, t)
    flat, unravel, J, H = flat_setup(net, loss, params, x, t)
    ggn = J.T @ H @ J
    np.testing.assert_allclose(ravel_pytree(q["diag_ggn"])[0], jnp.diag(ggn), rtol=0, atol=TOL)
    offsets = {}
    start = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        offsets[jax.tree_util.keystr(path)] = (start, leaf.size)
        start += leaf.size
    for level, name in ((0, "kernel"), (0, "bias"), (3, "W"), (3, "b")):
        s, n = offsets[f"[{level}]['{name}']"]
        factors = q["kflr"][level][name]
        block = factors[0] if len(factors) == 1 else jnp.kron(*factors)
        np.testing.assert_allclose(block, ggn[s : s + n, s : s + n], rtol=0, atol=TOL, err_msg=name)


@pytest.mark.slow
def test_mc_quantities_use_the_sampled_factor(key):
    # diag_ggn_mc / kfac with a fixed key equal the GGN of the very factor the loss samples
    net = serial(Dense(4), Tanh(), Dense(3))
    x, params, _ = setup(net, (4, 3), key)
    t = jnp.array([0, 2, 1, 1])
    loss = SoftmaxCrossEntropy()
    f = jax.jit(value_grad_and(net, loss, "diag_ggn_mc", "kfac", mc_samples=3))
    _, _, q = f(params, x, t, key=key)
    _, _, q2 = f(params, x, t, key=key)
    close(q, q2, "same key, same result")
    _, _, q3 = f(params, x, t, key=jax.random.PRNGKey(7))
    assert not np.allclose(ravel_pytree(q3["diag_ggn_mc"])[0], ravel_pytree(q["diag_ggn_mc"])[0])
    _, lres = loss.forward(apply(net, params, x)[0], t)
    S = loss.sqrt_hessian_mc(lres, jax.random.split(key)[1], 3)  # the key f gives the loss
    flat, _, J, _ = flat_setup(net, loss, params, x, t)
    Jn = J.reshape(4, 3, -1)  # per example: sum_{m,n} (J_nᵀ s_mn)²
    JS = jnp.einsum("bcp,mbc->mbp", Jn, S)
    np.testing.assert_allclose(ravel_pytree(q["diag_ggn_mc"])[0], (JS**2).sum((0, 1)), rtol=0, atol=TOL)
    # kfac of the top Dense: A = xᵀx / N of its input, G = sum over samples of Sᵀ S
    h = jnp.tanh(x @ params[0]["W"] + params[0]["b"])
    A, G = q["kfac"][2]["W"]
    np.testing.assert_allclose(A, h.T @ h / 4, rtol=0, atol=TOL)
    np.testing.assert_allclose(G, jnp.einsum("mbi,mbj->ij", S, S), rtol=0, atol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), BinaryCrossEntropyWithLogits()])
def test_mc_factor_expectation_by_enumeration(key, loss):
    # E[s sᵀ] over the sampled label is the exact Hessian: enumerate the labels with their probabilities
    z = jax.random.normal(key, (2, 3), jnp.float64)
    t = jnp.array([1, 2]) if loss.name == "SoftmaxCrossEntropy" else jax.nn.sigmoid(z)
    _, (p, _) = loss.forward(z, t)
    H = jax.hessian(lambda zz: loss.forward(zz.reshape(z.shape), t)[0])(z.ravel())
    S = loss.sqrt_hessian((p, t))
    blocks = jnp.stack([H.reshape(2, 3, 2, 3)[b, :, b, :] for b in range(2)])  # H_n of each example
    np.testing.assert_allclose(jnp.einsum("kbi,kbj->bij", S, S), blocks, atol=TOL)
    s = loss.sqrt_hessian_mc((p, t), key, 1)[0]
    if loss.name == "SoftmaxCrossEntropy":  # s = w (p - e_y): sum over y of p_y (p - e_y)(p - e_y)ᵀ w²
        E = (
            sum(jnp.einsum("b,bi,bj->bij", p[:, c], p - jnp.eye(3)[c], p - jnp.eye(3)[c]) for c in range(3))
            / 2
        )
        want = blocks
    else:  # s = (p - y) / sqrt(size), y ~ Bernoulli(p): E = p (1-p) / size
        E = p * (1 - p) / p.size
        want = jnp.diag(H).reshape(p.shape)
    np.testing.assert_allclose(E, want, atol=TOL)
    assert s.shape == z.shape


def test_unsupported_layers_name_the_level_layer_and_quantity(key):
    loss = SoftmaxCrossEntropy()
    net = serial(Dense(3), Residual(serial(Softmax(), Dense(3))), Dense(2))
    x, params, _ = setup(net, (2, 3), key)
    with pytest.raises(LayerError, match=r"level 1/branch/0 \(Softmax.*'diag_hessian'"):
        jax.eval_shape(value_grad_and(net, loss, "diag_hessian"), params, x, jnp.array([0, 1]))
    rnn = serial(RNN(3), Flatten(), Dense(2))
    x, params, _ = setup(rnn, (2, 4, 3), key)
    with pytest.raises(LayerError, match=r"level 0 \(RNN.*'batch_l2'"):
        jax.eval_shape(value_grad_and(rnn, loss, "batch_l2"), params, x, jnp.array([0, 1]))
    bn = serial(Dense(3), BatchNorm(), Dense(2))
    x, params, state = setup(bn, (2, 3), key)
    with pytest.raises(LayerError, match="eval mode"):
        jax.eval_shape(
            lambda p, x, s: value_grad_and(bn, loss, "batch_grad", train=True)(
                p, x, jnp.array([0, 1]), state=s
            ),
            params,
            x,
            state,
        )
    with pytest.raises(UsageError, match="key"):
        value_grad_and(bn, loss, "kfac")(params, x, jnp.array([0, 1]), state=state)
    with pytest.raises(UsageError, match="unknown"):
        value_grad_and(bn, loss, "hessian")


@pytest.mark.slow
def test_second_order_on_relu_net_with_mse(key):
    net = serial(Dense(4), Relu(), Dense(2))
    x, params, _ = setup(net, (3, 2), key)
    t = jax.random.normal(key, (3, 2))
    loss = MeanSquaredError()
    _, _, q = compiled(value_grad_and(net, loss, "diag_ggn", "diag_hessian"), params, x, t)
    flat, unravel, J, H = flat_setup(net, loss, params, x, t)
    np.testing.assert_allclose(ravel_pytree(q["diag_ggn"])[0], jnp.diag(J.T @ H @ J), atol=TOL)
    hess = jax.hessian(lambda fp: loss_fn(net, loss)(unravel(fp), x, t))(flat)
    np.testing.assert_allclose(ravel_pytree(q["diag_hessian"])[0], jnp.diag(hess), atol=TOL)


@pytest.mark.slow
def test_check_quantities_report(key):
    from jaxbp.check.report import CheckReport
    from jaxbp.quantities.check import check_quantities

    names = ("batch_grad", "batch_l2", "variance", "diag_ggn", "diag_ggn_mc", "kflr", "kfac", "diag_hessian")
    net = serial(Conv2D(2, 2), Tanh(), Flatten(), Dense(2))
    report = check_quantities(net, (2, 3, 3, 1), names, seeds=1)
    assert isinstance(report, CheckReport) and report.ok, str(report)
    assert {(r.level, r.leaf) for r in report.rows} == {
        ("0", "['kernel']"),
        ("0", "['bias']"),
        ("3", "['W']"),
        ("3", "['b']"),
    }
    assert {r.witness for r in report.rows} == set(names)


@pytest.mark.slow
def test_check_quantities_catches_a_wrong_extra(key):
    import dataclasses

    from jaxbp.quantities.check import check_quantities

    good = Dense(2)
    wrong = good.per_example._replace(batch_l2=lambda p, x, g: {"W": (x**2).sum(-1), "b": (g**2).sum(-1)})
    bad = good._replace(per_example=wrong)  # forgets ||g||² in the W norm
    report = check_quantities(serial(bad), (3, 4), ("batch_l2",), seeds=1)
    assert not report.ok and report.failed_leaves() == {"['W']"}
    assert dataclasses.is_dataclass(report.rows[0])


def test_check_layer_verifies_quantities_too(key):
    import jaxbp

    good = Dense(2)
    assert jaxbp.check_layer(good, (3, 4), quantities=("batch_l2",)).ok
    wrong = good.per_example._replace(batch_l2=lambda p, x, g: {"W": (x**2).sum(-1), "b": (g**2).sum(-1)})
    report = jaxbp.check_layer(good._replace(per_example=wrong), (3, 4), quantities=("batch_l2",))
    assert not report.ok and report.first_bad_level == "0" and report.failed_leaves() == {"['W']"}, str(
        report
    )
    assert {r.witness for r in report.failures()} == {"batch_l2"}


@pytest.mark.slow
def test_against_the_numpy_reference(key):
    from reference import numpy_quantities as ref

    net = serial(Dense(4), Tanh(), Dense(3))
    x, params, _ = setup(net, (5, 2), key)
    y = np.array([0, 2, 1, 1, 0])
    layers = [(np.asarray(p["W"]), np.asarray(p["b"])) for p in (params[0], params[2])]
    _, _, q = value_grad_and(net, SoftmaxCrossEntropy(), "batch_l2", "diag_ggn")(params, x, jnp.asarray(y))
    l2 = ref.batch_l2(layers, np.asarray(x), y)
    dg = ref.diag_ggn(layers, np.asarray(x), y)
    for i, level in enumerate((0, 2)):
        np.testing.assert_allclose(q["batch_l2"][level]["W"], l2[i][0], rtol=1e-10)
        np.testing.assert_allclose(q["batch_l2"][level]["b"], l2[i][1], rtol=1e-10)
        np.testing.assert_allclose(
            q["diag_ggn"][level]["W"], dg[i][0], rtol=1e-6, atol=1e-9
        )  # finite differences
        np.testing.assert_allclose(q["diag_ggn"][level]["b"], dg[i][1], rtol=1e-6, atol=1e-9)
