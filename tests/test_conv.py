"""Convolution and pooling: NumPy reference, MaxPool ties, padding edge cases, bad input, CNN training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_trees_close, rel_err

from jaxbp.backprop import value_and_grad
from jaxbp.combinators import serial
from jaxbp.core import LayerError, output_shape
from jaxbp.layers.activations import Relu
from jaxbp.layers.conv import Conv1D, Conv2D
from jaxbp.layers.dense import Dense
from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool
from jaxbp.layers.shape import Flatten
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.step import TrainState, train_step_fn
from reference import numpy_bp as ref
from reference import numpy_conv as refc


def to_numpy(params):
    """jaxbp params -> reference params: dicts of NumPy arrays, ``{}`` where jaxbp has ``()``."""
    return {k: np.asarray(v) for k, v in params.items()} if params else {}


def fwd_bwd(layer, params, x, g):
    return jax.jit(lambda p, x, g: (layer.forward(p, x)[0], *layer.backward(p, layer.forward(p, x)[1], g)))(
        params, x, g
    )


PAIRS = {
    # groups, dilation, SAME with stride: jaxbp's padding resolution vs the reference's own
    "conv_same_groups": (
        Conv2D(4, (3, 2), (2, 1), "SAME", (1, 2), feature_group_count=2),
        refc.conv2d((2, 1), "SAME", (1, 2), groups=2),
        (2, 7, 6, 4),
    ),
    # padding wider than the kernel on one side; rows past the last stride get no gradient
    "conv_explicit_wide": (
        Conv2D(3, (2, 3), (3, 2), ((3, 0), (1, 2)), use_bias=False),
        refc.conv2d((3, 2), ((3, 0), (1, 2))),
        (1, 9, 5, 2),
    ),
    "maxpool_same": (MaxPool((3, 2), (2, 1), "SAME"), refc.max_pool((3, 2), (2, 1), "SAME"), (2, 5, 6, 3)),
    "avgpool_same_incl": (
        AvgPool((3, 3), (2, 2), "SAME"),
        refc.avg_pool((3, 3), (2, 2), "SAME", count_include_pad=True),
        (1, 6, 7, 2),
    ),
    "avgpool_explicit_excl": (
        AvgPool((2, 3), None, ((1, 0), (2, 1)), count_include_pad=False),
        refc.avg_pool((2, 3), None, ((1, 0), (2, 1)), count_include_pad=False),
        (1, 5, 7, 2),
    ),
    "global_avg": (GlobalAvgPool(), refc.global_avg_pool(), (2, 3, 4, 5)),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_matches_numpy_reference(case, key):
    layer, ref_layer, shape = PAIRS[case]
    kp, kx, kg = jax.random.split(key, 3)
    out_shape, params = layer.init(kp, shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(kx, shape, jnp.float64)
    g = jax.random.normal(kg, out_shape, jnp.float64)
    y, dp, dx = fwd_bwd(layer, params, x, g)
    want_y, cache = ref_layer.forward(to_numpy(params), np.asarray(x))
    want_dp, want_dx = ref_layer.backward(to_numpy(params), cache, np.asarray(g))
    assert y.shape == want_y.shape == out_shape
    assert rel_err(y, want_y) <= 1e-12
    assert rel_err(dx, want_dx) <= 1e-12
    for k in want_dp:
        assert rel_err(dp[k], want_dp[k]) <= 1e-12, k
    if case == "conv_explicit_wide":  # input rows 2, 5 (between strides) and 8 (past the last) are never read
        dx = np.asarray(dx)
        assert not np.any(dx[:, [2, 5, 8]]) and np.all(np.any(dx[:, [0, 1, 3, 4, 6, 7]], -1))


def test_maxpool_ties_go_to_first_element():
    # Non-overlapping windows of equal values: each window's top-left element gets all of g.
    layer = MaxPool((2, 2))
    x = jnp.ones((1, 4, 4, 1))
    g = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    _, _, dx = fwd_bwd(layer, (), x, g)
    want = np.zeros((1, 4, 4, 1))
    want[0, ::2, ::2, 0] = [[1, 2], [3, 4]]
    np.testing.assert_array_equal(dx, want)


def test_maxpool_ties_overlapping_windows_match_reference_and_vjp(key):
    # Plateaus of 0/1 in overlapping, padded windows: the first max (row-major) of each window wins,
    # exactly as the NumPy reference's argmax and as jax.vjp of the strict-">" forward.
    layer = MaxPool((3, 3), (1, 1), "SAME")
    x = jax.random.bernoulli(key, 0.5, (1, 5, 5, 2)).astype(jnp.float64)
    g = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 5, 2), jnp.float64)
    y, _, dx = fwd_bwd(layer, (), x, g)
    _, cache = refc.max_pool((3, 3), (1, 1), "SAME").forward({}, np.asarray(x))
    _, want = refc.max_pool((3, 3), (1, 1), "SAME").backward({}, cache, np.asarray(g))
    # the same elements receive gradient; sums over overlapping windows agree to rounding
    np.testing.assert_array_equal(np.asarray(dx) != 0, want != 0)
    assert rel_err(dx, want) <= 1e-12
    _, vjp = jax.vjp(lambda x: layer.forward((), x)[0], x)
    assert rel_err(dx, vjp(g)[0]) <= 1e-12
    assert np.count_nonzero(np.asarray(dx)) < np.count_nonzero(np.asarray(y))  # ties did occur


@pytest.mark.parametrize("include, corner_dx", [(True, 4 / 9), (False, 1 / 4 + 1 / 6 + 1 / 6 + 1 / 9)])
def test_avgpool_same_divisor(include, corner_dx):
    # ones (3x3), 3x3 windows, stride 1, SAME: the corner window holds 4 real elements and 5 zeros of padding.
    layer = AvgPool((3, 3), (1, 1), "SAME", count_include_pad=include)
    y, _, dx = fwd_bwd(layer, (), jnp.ones((1, 3, 3, 1)), jnp.ones((1, 3, 3, 1)))
    assert float(y[0, 0, 0, 0]) == pytest.approx(4 / 9 if include else 1.0, rel=1e-6)
    assert float(y[0, 1, 1, 0]) == pytest.approx(1.0, rel=1e-6)
    assert float(dx[0, 0, 0, 0]) == pytest.approx(corner_dx, rel=1e-6)


def test_conv_same_padding_matches_lax_with_dilation(key):
    layer = Conv1D(2, 4, strides=2, padding="SAME", kernel_dilation=2)
    _, params = layer.init(key, (1, 7, 3))
    assert output_shape(layer, (1, 7, 3)) == (1, 4, 2)
    x = jax.random.normal(key, (1, 7, 3), jnp.float32)
    want = jax.lax.conv_general_dilated(
        x, params["kernel"], (2,), "SAME", rhs_dilation=(2,), dimension_numbers=("NWC", "WIO", "NWC")
    )
    np.testing.assert_allclose(layer.forward(params, x)[0], want + params["bias"], rtol=1e-6, atol=1e-6)


def test_conv_keeps_float32_under_x64(key):
    layer = Conv2D(3, (3, 3), strides=2)
    _, params = layer.init(key, (1, 5, 5, 2))
    y, res = layer.forward(params, jnp.ones((1, 5, 5, 2), jnp.float32))
    dp, dx = layer.backward(params, res, jnp.ones_like(y))
    assert y.dtype == dx.dtype == dp["kernel"].dtype == dp["bias"].dtype == jnp.float32


BAD = [
    (lambda k: Conv2D(4, (3, 3)).init(k, (2, 7, 7)), ["Conv2D", "(2, 7, 7)", "N, 2 spatial axes, C"]),
    (lambda k: Conv2D(4, 3, feature_group_count=3), ["Conv2D", "features=4", "feature_group_count=3"]),
    (lambda k: Conv2D(4, 3, feature_group_count=2).init(k, (1, 5, 5, 3)), ["channels 3", "(1, 5, 5, 3)"]),
    (lambda k: Conv2D(4, (5, 5), padding="VALID").init(k, (1, 3, 3, 1)), ["(1, 3, 3, 1)", "window (5, 5)"]),
    (lambda k: Conv2D(4, (3, 3), padding="FULL").init(k, (1, 3, 3, 1)), ["Conv2D", "'FULL'"]),
    (lambda k: Conv2D(4, (3, 3), padding=((1, 1),)).init(k, (1, 3, 3, 1)), ["Conv2D", "2 non-negative"]),
    (lambda k: Conv2D(4, (3, 3, 3)), ["Conv2D", "kernel_size", "(3, 3, 3)"]),
    (
        lambda k: Conv2D(4, (3, 3)).forward(
            Conv2D(4, (3, 3)).init(k, (1, 5, 5, 2))[1], jnp.ones((1, 5, 5, 3))
        ),
        ["Conv2D", "'kernel'", "(3, 3, 2, 4)", "(3, 3, 3, 4)"],
    ),
    (lambda k: MaxPool((2, 2), padding=((2, 0), (0, 0))).init(k, (1, 4, 4, 1)), ["MaxPool", "smaller than"]),
    (lambda k: MaxPool((2, 2)).forward((), jnp.ones((4, 4))), ["MaxPool", "(4, 4)"]),
    (lambda k: AvgPool((4,)).init(k, (1, 3, 2)), ["AvgPool", "(1, 3, 2)", "window (4,)"]),
    (lambda k: AvgPool((2, 2), strides=(0, 1)), ["AvgPool", "positive"]),
    (lambda k: GlobalAvgPool().init(k, (4, 4)), ["GlobalAvgPool", "(4, 4)"]),
    (lambda k: serial(Conv2D(2, 3), MaxPool((2, 2))).init(k, (1, 1, 1, 1)), ["level 1 (MaxPool((2, 2)))"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_names_layer_and_shapes(i, key):
    make, words = BAD[i]
    with pytest.raises(LayerError) as e:
        make(key)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# conv-relu-maxpool-conv-relu-avgpool-flatten-dense, with SAME, groups, dilation, explicit padding.
def cnn():
    return serial(
        Conv2D(4, (3, 3)), Relu(), MaxPool((3, 3), (2, 2), "SAME"),
        Conv2D(6, (2, 2), padding=((1, 1), (0, 1)), kernel_dilation=(2, 2), feature_group_count=2), Relu(),
        AvgPool((2, 2), (2, 2), "SAME", count_include_pad=False), Flatten(), Dense(3),
    )  # fmt: skip


def reference_cnn():
    return [
        refc.conv2d((1, 1), "SAME"), ref.relu(), refc.max_pool((3, 3), (2, 2), "SAME"),
        refc.conv2d((1, 1), ((1, 1), (0, 1)), (2, 2), groups=2), ref.relu(),
        refc.avg_pool((2, 2), (2, 2), "SAME", count_include_pad=False), ref.flatten(), ref.dense(),
    ]  # fmt: skip


def cnn_setup(key, batches=1):
    kp, kx, kt = jax.random.split(key, 3)
    net = cnn()
    out_shape, params = net.init(kp, (4, 9, 9, 2))
    assert out_shape == (4, 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    xs = jax.random.normal(kx, (batches, 4, 9, 9, 2), jnp.float64)
    ts = jax.random.randint(kt, (batches, 4), 0, 3)
    return net, params, xs, ts


@pytest.mark.slow  # the layers are checked one by one in the fast tier, and the CNN's 5 steps against NumPy
def test_cnn_gradients_match_jax_grad(key):
    net, params, xs, ts = cnn_setup(key)
    loss = SoftmaxCrossEntropy()
    value, grads = jax.jit(value_and_grad(net, loss))(params, xs[0], ts[0])
    composed = lambda p: loss.forward(net.forward(p, xs[0])[0], ts[0])[0]  # noqa: E731
    want_value, want = jax.jit(jax.value_and_grad(composed))(params)
    assert abs(float(value - want_value)) <= 1e-12 * abs(float(want_value))
    assert_trees_close(grads, want, 1e-12, "grads")


def test_cnn_five_sgd_steps_match_numpy_reference(key):
    K, lr = 5, 0.1
    net, params, xs, ts = cnn_setup(key, batches=K)
    opt = optax.sgd(lr)
    step = jax.jit(train_step_fn(net, SoftmaxCrossEntropy(), opt))
    state = TrainState(params, opt.init(params), (), jax.random.PRNGKey(1), jnp.zeros((), jnp.int32))
    losses = []
    for k in range(K):
        state, value = step(state, xs[k], ts[k])
        losses.append(float(value))
    want, want_losses = ref.train_sgd(
        reference_cnn(), [to_numpy(p) for p in params], ref.softmax_cross_entropy(),
        zip(np.asarray(xs), np.asarray(ts), strict=True), lr,
    )  # fmt: skip
    np.testing.assert_allclose(losses, want_losses, rtol=1e-10)
    for n, (got, w, p0) in enumerate(zip(state.params, want, params, strict=True)):
        assert set(to_numpy(got)) == set(w), n
        for k in w:
            assert rel_err(got[k], w[k]) <= 1e-10, (n, k, rel_err(got[k], w[k]))
            assert rel_err(p0[k], w[k]) > 1e-4, (n, k)  # training moved every param
