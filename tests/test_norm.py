"""Norm, dropout, embedding and softmax layers: special cases, a stateful network, the NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_trees_close, rel_err
from jax import lax

import jaxbp
from jaxbp.core import LayerError, apply
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.norm import BatchNorm, LayerNorm
from jaxbp.layers.softmax import LogSoftmax, Softmax
from reference import numpy_bp as ref
from reference import numpy_norm as ref_norm

C = 4


def _normal(seed, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


def _bn_params_state():
    params = {"scale": _normal(1, (C,)) + 1.0, "bias": _normal(2, (C,))}
    state = {"mean": _normal(3, (C,)), "var": jnp.exp(_normal(4, (C,)))}
    return params, state


# --- BatchNorm ---


def test_batchnorm_train_uses_batch_stats_and_updates_running_stats():
    params, state = _bn_params_state()
    x = 3.0 + 2.0 * _normal(5, (2, 3, 3, C))  # after a Conv2D: stats over (B, H, W)
    y, _, new = BatchNorm(momentum=0.8).forward(params, x, state=state, key=None, train=True)
    xs = np.asarray(x).reshape(-1, C)
    mean, var = xs.mean(0), xs.var(0)  # biased variance
    np.testing.assert_allclose(new["mean"], 0.8 * np.asarray(state["mean"]) + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(new["var"], 0.8 * np.asarray(state["var"]) + 0.2 * var, rtol=1e-12)
    xhat = (xs - mean) / np.sqrt(var + 1e-5)
    want = xhat * params["scale"] + params["bias"]
    np.testing.assert_allclose(np.asarray(y).reshape(-1, C), want, rtol=1e-12)


def test_batchnorm_eval_uses_running_stats_and_keeps_state():
    params, state = _bn_params_state()
    x, g = _normal(5, (3, C)), _normal(6, (3, C))
    bn = BatchNorm()
    y, res, new = bn.forward(params, x, state=state, key=None, train=False)
    assert new is state
    inv = 1 / np.sqrt(np.asarray(state["var"]) + 1e-5)
    np.testing.assert_allclose(y, (x - state["mean"]) * inv * params["scale"] + params["bias"], rtol=1e-12)
    _, dx = bn.backward(params, res, g)
    np.testing.assert_allclose(dx, g * params["scale"] * inv, rtol=1e-12)  # eval: no batch coupling


def test_batchnorm_batch_of_one_gives_bias_and_zero_dx():
    params, state = _bn_params_state()
    bn = BatchNorm()
    y, res, new = bn.forward(params, _normal(5, (1, C)), state=state, key=None, train=True)
    np.testing.assert_allclose(y[0], params["bias"], rtol=1e-12)
    dparams, dx = bn.backward(params, res, _normal(6, (1, C)))
    assert np.all(np.asarray(dx) == 0) and np.all(np.isfinite(dparams["scale"]))
    np.testing.assert_allclose(new["var"], 0.9 * state["var"], rtol=1e-12)  # batch var 0


def test_batchnorm_axis_name_matches_global_batch():
    """vmap with an axis name stands in for shard_map: D shards == one device on the global batch."""
    D, B = 3, 2
    params, state = _bn_params_state()
    x, g = _normal(5, (D * B, C)), _normal(6, (D * B, C))
    y1, res1, new1 = BatchNorm().forward(params, x, state=state, key=None, train=True)
    dp1, dx1 = BatchNorm().backward(params, res1, g / D)  # global loss = mean of the D shard losses
    bn = BatchNorm(axis_name="d")

    def shard(xd, gd):
        y, res, new = bn.forward(params, xd, state=state, key=None, train=True)
        dp, dx = bn.backward(params, res, gd)
        return y, new, lax.pmean(dp, "d"), dx  # the trainer pmean's the param grads

    y2, new2, dp2, dx2 = jax.vmap(shard, axis_name="d")(x.reshape(D, B, C), g.reshape(D, B, C))
    assert rel_err(y2.reshape(D * B, C), y1) < 1e-12
    assert_trees_close(jax.tree.map(lambda a: a[1], new2), new1, 1e-12, "state")
    assert_trees_close(jax.tree.map(lambda a: a[0], dp2), dp1, 1e-12, "dparams")
    assert rel_err(dx2.reshape(D * B, C) / D, dx1) < 1e-12  # each shard holds D x its share of dL/dx


def test_batchnorm_bad_input_and_state():
    params, state = _bn_params_state()
    bn = BatchNorm()
    with pytest.raises(LayerError, match=r"BatchNorm.*\(3, 5\).*4 features"):
        bn.forward(params, _normal(0, (3, 5)), state=state, key=None, train=True)
    with pytest.raises(LayerError, match=r"BatchNorm.*rank >= 2"):
        bn.init(None, (C,))
    with pytest.raises(LayerError, match=r"BatchNorm.*state.*'var'.*\(5,\)"):
        bn.forward(params, _normal(0, (3, C)), state={**state, "var": jnp.ones(5)}, key=None, train=True)
    with pytest.raises(LayerError, match="floating-point"):
        bn.forward(params, jnp.ones((3, C), jnp.int32), state=state, key=None, train=True)


# --- LayerNorm ---


def test_layernorm_normalises_rows_and_checks_features():
    ln = LayerNorm()
    _, params = ln.init(None, (3, 2, 7))
    x = 5.0 + 3.0 * _normal(0, (3, 2, 7))
    y, _ = ln.forward(params, x)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), x.var(-1) / (x.var(-1) + 1e-5), rtol=1e-12)
    with pytest.raises(LayerError, match=r"LayerNorm.*\(3, 5\).*7 features"):
        ln.forward(params, _normal(0, (3, 5)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("make", [LayerNorm, BatchNorm, lambda: Dropout(0.5), Softmax, LogSoftmax])
def test_keeps_input_dtype(make, dtype):
    layer = make()
    x = _normal(0, (4, 6), dtype)
    _, params = layer.init(jax.random.PRNGKey(1), x.shape)  # float32 params
    state = jaxbp.init_state(layer, x.shape)
    y, res, _ = apply(layer, params, x, state=state, key=jax.random.PRNGKey(2), train=True)
    dparams, dx = layer.backward(params, res, jnp.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype
    assert all(d.dtype == jnp.float32 for d in jax.tree.leaves(dparams))


# --- Dropout ---


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    rate, x, g = 0.3, _normal(0, (50, 40)), _normal(1, (50, 40))
    layer = Dropout(rate)
    y, keep, state = layer.forward((), x, state=(), key=jax.random.PRNGKey(7), train=True)
    assert state == () and keep.dtype == jnp.bool_
    np.testing.assert_allclose(y, np.where(keep, x / (1 - rate), 0), rtol=1e-15)
    assert abs(float(keep.mean()) - (1 - rate)) < 0.03  # 2000 Bernoulli draws, fixed key
    _, dx = layer.backward((), keep, g)
    np.testing.assert_allclose(dx, np.where(keep, g / (1 - rate), 0), rtol=1e-15)
    y_eval, res, _ = layer.forward((), x, state=(), key=None, train=False)
    assert y_eval is x and layer.backward((), res, g)[1] is g


def test_dropout_errors():
    with pytest.raises(LayerError, match=r"Dropout\(0.5\): train mode needs a PRNG key.*\(2, 3\)"):
        Dropout(0.5).forward((), jnp.ones((2, 3)), state=(), key=None, train=True)
    with pytest.raises(LayerError, match=r"rate must lie in \[0, 1\), got 1.0"):
        Dropout(1.0)


# --- Embedding ---


def test_embedding_gradient_accumulates_repeated_ids():
    emb = Embedding(5, 3)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), emb.init(jax.random.PRNGKey(0), (2, 4))[1])
    ids = jnp.array([[0, 3, 3, 1], [3, 0, 4, 4]])
    y, res = emb.forward(params, ids)
    np.testing.assert_array_equal(y, np.asarray(params["table"])[np.asarray(ids)])
    g = _normal(1, (2, 4, 3))
    dparams, dx = emb.backward(params, res, g)
    want = np.zeros((5, 3))
    np.add.at(want, np.asarray(ids).ravel(), np.asarray(g).reshape(-1, 3))
    np.testing.assert_allclose(dparams["table"], want, rtol=1e-12)
    assert dx is None and not np.any(dparams["table"][2])  # id 2 unused


def test_embedding_errors_and_out_of_range_under_jit():
    emb = Embedding(5, 3)
    _, params = emb.init(jax.random.PRNGKey(0), (3,))
    with pytest.raises(LayerError, match=r"\(5, 3\): ids must lie in \[0, 5\), got values in \[0, 5\]"):
        emb.forward(params, jnp.array([0, 5, 1]))
    with pytest.raises(LayerError, match=r"got values in \[-1, 1\]"):
        emb.forward(params, jnp.array([0, -1, 1]))
    with pytest.raises(LayerError, match=r"Embedding\(5, 3\): needs integer ids, got dtype float"):
        emb.forward(params, jnp.array([0.0, 1.0]))

    @jax.jit
    def run(ids):  # unchecked under jit: out-of-range ids (negative too) give NaN rows and no gradient
        y, res = emb.forward(params, ids)
        return y, emb.backward(params, res, jnp.ones_like(y))[0]["table"]

    y, dtable = run(jnp.array([1, 7, -1]))
    assert np.all(np.isnan(y[1:])) and np.all(np.isfinite(y[0]))
    np.testing.assert_array_equal(dtable.sum(1), [0, 3, 0, 0, 0])
    concrete = jnp.array([2, 9])  # closed over by a jit: still concrete, still checked
    with pytest.raises(LayerError, match=r"got values in \[2, 9\]"):
        jax.jit(lambda p: emb.forward(p, concrete)[0])(params)


# --- Softmax / LogSoftmax ---


def test_softmax_and_logsoftmax_with_large_logits():
    x = jnp.array([[1000.0, 0.0, -1000.0], [3e4, 3e4, 3e4 - 2.0]])
    g = _normal(0, x.shape)
    for layer, oracle in [(Softmax(), jax.nn.softmax), (LogSoftmax(), jax.nn.log_softmax)]:
        y, res = layer.forward((), x)
        _, dx = layer.backward((), res, g)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
        np.testing.assert_allclose(y, oracle(x), rtol=1e-12)
        np.testing.assert_allclose(dx, jax.vjp(oracle, x)[1](g)[0], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(Softmax().forward((), x)[0].sum(-1), 1, rtol=1e-15)


def test_softmax_axis_error():
    message = r"Softmax\(axis=2\): axis 2 is out of range for input of shape \(3, 4\)"
    with pytest.raises(LayerError, match=message):
        Softmax(axis=2).forward((), jnp.ones((3, 4)))


# --- a stateful network ---


def _stateful_net():
    # no bias before BatchNorm: in train mode its exact gradient is 0 and a computed one is rounding noise
    dense = jaxbp.Dense(6, use_bias=False)
    return jaxbp.serial(dense, BatchNorm(), jaxbp.Relu(), Dropout(0.4), jaxbp.Dense(3))


@pytest.mark.parametrize("train", [True, False])
def test_stateful_network_matches_jax_value_and_grad(train, key):
    net, loss = _stateful_net(), jaxbp.SoftmaxCrossEntropy()
    _, params = net.init(key, (8, 5))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    state = jax.tree.map(lambda a: a.astype(jnp.float64) + 0.5, jaxbp.init_state(net, (8, 5)))
    x, t, k = _normal(1, (8, 5)), jax.random.randint(jax.random.PRNGKey(2), (8,), 0, 3), jax.random.PRNGKey(3)

    def composed(p, t):
        y, _, new_state = apply(net, p, x, state=state, key=k, train=train)
        return loss.forward(y, t)[0], new_state

    manual = jax.jit(lambda p, t: jaxbp.value_and_grad(net, loss)(p, x, t, state=state, key=k, train=train))
    (value, new_state), grads = manual(params, t)
    (want_value, want_state), want_grads = jax.jit(jax.value_and_grad(composed, has_aux=True))(params, t)
    assert rel_err(value, want_value) < 1e-12
    assert_trees_close(grads, want_grads, 1e-12, "grads")
    assert_trees_close(new_state, want_state, 1e-12, "state")
    moved = rel_err(new_state[1]["mean"], state[1]["mean"]) > 1e-3
    assert moved == train  # running stats move in train mode only


def test_make_train_step_updates_running_stats(key):
    net, opt = _stateful_net(), optax.sgd(0.1)
    _, ts = jaxbp.init_train_state(net, opt, key, (8, 5))
    before = jax.tree.map(np.asarray, ts.state)
    step = jaxbp.make_train_step(net, jaxbp.SoftmaxCrossEntropy(), opt)
    x, t = _normal(1, (8, 5), jnp.float32), jax.random.randint(jax.random.PRNGKey(2), (8,), 0, 3)
    losses = []
    for _ in range(3):
        ts, value = step(ts, x, t)
        losses.append(float(value))
    assert int(ts.step) == 3 and np.all(np.isfinite(losses))
    assert ts.state[1]["mean"].dtype == jnp.float32
    for k in ("mean", "var"):
        assert rel_err(ts.state[1][k], before[1][k]) > 1e-3, k
    y = jaxbp.make_predict(net)(ts.params, x, ts.state)  # eval mode: no key needed
    assert y.shape == (8, 3) and np.all(np.isfinite(y))


# --- K SGD steps agree with the NumPy reference ---


def test_k_sgd_steps_agree_with_numpy_reference():
    K, LR, ids_shape = 5, 0.3, (6, 3)
    net = jaxbp.serial(
        # Tanh and no Dense bias: else BatchNorm cancels LayerNorm's and Dense's biases (exact grads 0)
        Embedding(10, 5),
        LayerNorm(),
        jaxbp.Tanh(),
        jaxbp.Dense(7, use_bias=False),
        BatchNorm(momentum=0.8),
        jaxbp.Relu(),
        jaxbp.Dense(4),
    )
    _, params = net.init(jax.random.PRNGKey(1), ids_shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    opt = optax.sgd(LR)
    _, ts = jaxbp.init_train_state(net, opt, jax.random.PRNGKey(0), ids_shape)
    state = jax.tree.map(lambda a: a.astype(jnp.float64), ts.state)
    ts = ts._replace(params=params, opt_state=opt.init(params), state=state)
    start = [{k: np.array(v) for k, v in p.items()} if isinstance(p, dict) else {} for p in params]
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, 10, ids_shape), rng.integers(0, 4, ids_shape)) for _ in range(K)]
    step = jaxbp.make_train_step(net, jaxbp.SoftmaxCrossEntropy(), opt)
    losses = []
    for x, t in data:
        ts, value = step(ts, jnp.asarray(x), jnp.asarray(t))
        losses.append(float(value))

    bn_state = {"mean": np.zeros(7), "var": np.ones(7)}
    layers = [
        ref_norm.embedding(10),
        ref_norm.layer_norm(),
        ref.tanh(),
        ref.dense(),
        ref_norm.batch_norm(bn_state, momentum=0.8),
        ref.relu(),
        ref.dense(),
    ]
    ref_params, ref_losses = ref.train_sgd(layers, start, ref.softmax_cross_entropy(), data, LR)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for n, want in enumerate(ref_params):
        for k in want:
            assert rel_err(ts.params[n][k], want[k]) <= 1e-10, (n, k, rel_err(ts.params[n][k], want[k]))
    for k in bn_state:
        assert rel_err(ts.state[4][k], bn_state[k]) <= 1e-10, k
    assert rel_err(ts.params[1]["scale"], start[1]["scale"]) > 1e-3  # LayerNorm's params moved
    assert rel_err(bn_state["var"], np.ones(7)) > 1e-2  # running stats moved
