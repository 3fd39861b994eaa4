"""Attention, RNN/LSTM and graph combinators: forwards vs independent references, networks vs jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import assert_trees_close, cast_floats, check_layer_against_vjp, rel_err

import jaxbp
from jaxbp.combinators import FanInConcat, FanInSum, FanOut, Identity, Residual, parallel
from jaxbp.core import LayerError, apply, init_state
from jaxbp.layers.attention import MultiHeadAttention
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.norm import BatchNorm, LayerNorm
from jaxbp.layers.recurrent import LSTM, RNN

B, T, F = 2, 5, 6  # one sequence shape for most tests (few shapes = few compiles)


def random_params(layer, shape, key):
    """float64 params, every leaf (biases too) drawn at random so no term hides behind a zero."""
    leaves, tree = jax.tree.flatten(jax.eval_shape(lambda k: layer.init(k, shape)[1], key))
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return tree.unflatten([0.5 * jax.random.normal(k, p.shape, jnp.float64) for p, k in zip(leaves, keys)])  # noqa: B905


def manual_and_autodiff(net, loss, params, x, target, **kw):
    """(value, grads) from jaxbp.value_and_grad and from jax.value_and_grad of the composed forward."""
    if kw:
        (v, s), g = jax.jit(jaxbp.value_and_grad(net, loss))(params, x, target, **kw)

        def f(p, x, t, kw):
            y, _, s = apply(net, p, x, train=True, **kw)
            return loss.forward(y, t)[0], s

        (v_ref, s_ref), g_ref = jax.jit(jax.value_and_grad(f, has_aux=True))(params, x, target, kw)
        assert_trees_close(s, s_ref, 1e-12, "state")
        return (v, g), (v_ref, g_ref)
    vg = jax.jit(jaxbp.value_and_grad(net, loss))(params, x, target)
    f = lambda p, x, t: loss.forward(net.forward(p, x)[0], t)[0]  # noqa: E731
    return vg, jax.jit(jax.value_and_grad(f))(params, x, target)


# --- forwards against independent formulations ---


def reference_attention(p, x, heads, causal):
    """(float64 per-head loop, jax.nn.dot_product_attention) versions of the layer's forward."""
    d = F // heads
    q, k, v = ((x @ p[f"W{j}"] + p.get(f"b{j}", 0)).reshape(B, T, heads, d) for j in "qkv")
    allowed = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
    o = []
    for h in range(heads):
        scores = jnp.einsum("btd,bsd->bts", q[:, :, h], k[:, :, h]) / np.sqrt(d)
        o.append(jax.nn.softmax(jnp.where(allowed, scores, -np.inf), axis=-1) @ v[:, :, h])
    o_nn = jax.nn.dot_product_attention(q, k, v, is_causal=causal).reshape(B, T, F)
    return jnp.concatenate(o, -1) @ p["Wo"] + p["bo"], o_nn @ p["Wo"] + p["bo"]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_forward_matches_references(causal, key):
    layer = MultiHeadAttention(2, causal=causal)
    p = random_params(layer, (B, T, F), key)
    x = jax.random.normal(key, (B, T, F), jnp.float64)
    y, (loop, nn) = jax.jit(lambda p, x: (layer.forward(p, x)[0], reference_attention(p, x, 2, causal)))(p, x)
    np.testing.assert_allclose(y, loop, rtol=1e-12, atol=1e-12)
    # jax.nn's attention runs its softmax in float32; it pins the conventions (scale, mask direction)
    np.testing.assert_allclose(y, nn, rtol=1e-5, atol=1e-6)


def test_attention_causal_output_ignores_the_future(key):
    layer = MultiHeadAttention(3, causal=True)
    p = random_params(layer, (1, T, F), key)
    x = jax.random.normal(key, (1, T, F), jnp.float64)
    y1, _ = layer.forward(p, x)
    y2, _ = layer.forward(p, x.at[:, -1].set(7.0))
    np.testing.assert_array_equal(y1[:, :-1], y2[:, :-1])
    assert not np.allclose(y1[:, -1], y2[:, -1])


def reference_rnn(p, x):
    h, out = jnp.zeros((x.shape[0], p["Wh"].shape[0])), []
    for t in range(x.shape[1]):
        h = jnp.tanh(x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"])
        out.append(h)
    return jnp.stack(out, 1)


def reference_lstm(p, x):
    H = p["Wh"].shape[0]
    h = c = jnp.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        z = x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        out.append(h)
    return jnp.stack(out, 1)


@pytest.mark.parametrize("make, reference", [(RNN, reference_rnn), (LSTM, reference_lstm)])
def test_recurrent_forward_matches_python_loop(make, reference, key):
    layer = make(4)
    p = random_params(layer, (B, T, F), key)
    x = jax.random.normal(key, (B, T, F), jnp.float64)
    y, want = jax.jit(lambda p, x: (layer.forward(p, x)[0], reference(p, x)))(p, x)
    assert y.shape == (B, T, 4)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-13)


def test_lstm_init_forget_bias_one(key):
    _, p = LSTM(3).init(key, (1, 2, 4))
    np.testing.assert_array_equal(p["b"], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert {k: v.shape for k, v in p.items()} == {"Wx": (4, 12), "Wh": (3, 12), "b": (12,)}


# --- networks against jax.grad ---


def transformer_block(heads: int, features: int) -> jaxbp.Layer:
    attention = Residual(jaxbp.serial(LayerNorm(), MultiHeadAttention(heads, causal=True)))
    mlp = Residual(jaxbp.serial(LayerNorm(), jaxbp.Dense(2 * features), jaxbp.Gelu(), jaxbp.Dense(features)))
    return jaxbp.serial(attention, mlp)


def test_transformer_block_matches_jax_grad(key):
    net = jaxbp.serial(transformer_block(2, F), transformer_block(3, F), jaxbp.Dense(4))
    params = random_params(net, (B, T, F), key)
    x = jax.random.normal(key, (B, T, F), jnp.float64)
    target = jax.random.randint(key, (B, T), 0, 4)
    (v, g), (v_ref, g_ref) = manual_and_autodiff(net, jaxbp.SoftmaxCrossEntropy(), params, x, target)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)
    assert_trees_close(g, g_ref, 1e-10, "grads")
    assert float(jnp.abs(g[0][0][1]["Wq"]).max()) > 1e-3  # the attention weights do get gradient


def test_recurrent_network_matches_jax_grad(key):
    net = jaxbp.serial(RNN(4), LSTM(5), jaxbp.Dense(3))  # LSTM -> Dense, and dx through LSTM into RNN
    params = random_params(net, (B, T, F), key)
    x = jax.random.normal(key, (B, T, F), jnp.float64)
    target = jax.random.normal(key, (B, T, 3), jnp.float64)
    (v, g), (v_ref, g_ref) = manual_and_autodiff(net, jaxbp.MeanSquaredError(), params, x, target)
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)
    assert_trees_close(g, g_ref, 1e-11, "grads")


@pytest.mark.slow  # float32 dtype keeping is also tested per layer (test_norm, test_layers) and for an MLP
def test_float32_network_keeps_dtype(key):
    net = jaxbp.serial(transformer_block(2, F), LSTM(3))
    _, params = net.init(key, (B, T, F))
    x = jax.random.normal(key, (B, T, F), jnp.float32)
    (v, g), (_, g_ref) = manual_and_autodiff(net, jaxbp.MeanSquaredError(), params, x, jnp.zeros((B, T, 3)))
    assert v.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
    assert_trees_close(g, g_ref, 1e-4, "float32 grads")


@pytest.mark.parametrize("layer", [MultiHeadAttention(2, causal=True), LSTM(3)], ids=["attention", "lstm"])
def test_bfloat16(layer, key):
    check_layer_against_vjp(layer, (1, T, F), key=key, dtype=jnp.bfloat16)


# --- skip connections and branches: a wrong fork rule must be caught ---


def _without_skip(res_layer):
    """A broken Residual whose backward forgets the skip term (dx = dx_f instead of g + dx_f)."""
    inner = res_layer.layers[0]
    return res_layer._replace(backward=lambda p, r, g: inner.backward(p, r, g))


def _fan_out_first_only(n):
    """A broken FanOut whose backward passes on only the first branch's cotangent."""
    return FanOut(n)._replace(backward=lambda p, r, g: ((), g[0]))


def _grad_error(net, key):
    params = random_params(net, (B, F), key)
    x = jax.random.normal(key, (B, F), jnp.float64)
    target = jax.random.normal(jax.random.fold_in(key, 2), (B, 1), jnp.float64)
    (_, g), (_, g_ref) = manual_and_autodiff(net, jaxbp.MeanSquaredError(), params, x, target)
    return max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True))


def test_residual_skip_term_is_counted(key):
    res = Residual(jaxbp.serial(jaxbp.Dense(F), jaxbp.Tanh()))
    assert _grad_error(jaxbp.serial(jaxbp.Dense(F), res, jaxbp.Dense(1)), key) < 1e-12
    assert _grad_error(jaxbp.serial(jaxbp.Dense(F), _without_skip(res), jaxbp.Dense(1)), key) > 1e-2


def test_fan_out_sums_branch_cotangents(key):
    branches = parallel(jaxbp.Dense(3), jaxbp.serial(jaxbp.Dense(F), jaxbp.Tanh()), Identity())
    tail = (FanInConcat(), jaxbp.Dense(1))
    good = jaxbp.serial(jaxbp.Dense(F), FanOut(3), branches, *tail)
    bad = jaxbp.serial(jaxbp.Dense(F), _fan_out_first_only(3), branches, *tail)
    assert _grad_error(good, key) < 1e-12
    assert _grad_error(bad, key) > 1e-2


def test_residual_of_zero_branch_passes_gradient_through(key):
    res = Residual(jaxbp.Dense(F))
    params = jax.tree.map(jnp.zeros_like, res.init(key, (B, F))[1])
    g = jax.random.normal(key, (B, F))
    _, res_ = res.forward(params, g)
    _, dx = res.backward(params, res_, g)
    np.testing.assert_array_equal(dx, g)  # dx = g + g @ 0


def test_fan_in_concat_and_sum_shapes(key):
    net = jaxbp.serial(FanOut(2), parallel(jaxbp.Dense(3), jaxbp.Dense(4)), FanInConcat())
    out_shape, _ = net.init(key, (B, F))
    assert out_shape == (B, 7)
    assert jaxbp.output_shape(net, (B, F)) == (B, 7)
    assert FanInConcat(axis=0).init(key, ((2, 3), (4, 3)))[0] == (6, 3)
    assert FanInSum().init(key, ((2, 3), (2, 3)))[0] == (2, 3)


def test_combinator_forwards_match_plain_jnp_formulas(key):
    """Residual, FanOut, parallel, FanInSum, FanInConcat and Identity against formulas written in jnp
    from the params (an independent oracle: not the layers' own forward, not shapes only)."""
    x = jax.random.normal(key, (B, F), jnp.float64)
    x2 = jax.random.normal(jax.random.fold_in(key, 1), (B, 3), jnp.float64)

    def dense(p, v):
        return v @ p["W"] + p["b"]

    res = Residual(jaxbp.serial(jaxbp.Dense(F), jaxbp.Tanh()))
    p = cast_floats(res.init(key, (B, F))[1], jnp.float64)
    np.testing.assert_allclose(res.forward(p, x)[0], x + jnp.tanh(dense(p[0], x)), rtol=1e-14)

    par = parallel(jaxbp.Dense(4), jaxbp.Tanh(), Identity())
    p = cast_floats(par.init(key, ((B, F), (B, 3), (B, F)))[1], jnp.float64)
    ys = par.forward(p, (x, x2, x))[0]
    for got, want in zip(ys, (dense(p[0], x), jnp.tanh(x2), x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14)

    fan = FanOut(3).forward((), x)[0]
    assert len(fan) == 3 and all(np.array_equal(f, x) for f in fan)
    np.testing.assert_allclose(FanInSum().forward((), (x, 2 * x, -x))[0], 2 * x, rtol=1e-14)
    np.testing.assert_array_equal(FanInConcat().forward((), (x, x2))[0], np.concatenate([x, x2], -1))
    np.testing.assert_array_equal(FanInConcat(axis=0).forward((), (x, x))[0], np.concatenate([x, x], 0))

    inception = jaxbp.serial(FanOut(2), parallel(jaxbp.Dense(3), jaxbp.Dense(4)), FanInConcat())
    p = cast_floats(inception.init(key, (B, F))[1], jnp.float64)
    want = np.concatenate([dense(p[1][0], x), dense(p[1][1], x)], -1)
    np.testing.assert_allclose(inception.forward(p, x)[0], want, rtol=1e-14)


# --- stateful sub-layers inside combinators ---


def test_stateful_branches_match_jax_grad_and_update_state(key):
    net = jaxbp.serial(
        jaxbp.Dense(F),
        Residual(jaxbp.serial(BatchNorm(0.5), jaxbp.Dense(F))),
        FanOut(2),
        parallel(Dropout(0.5), jaxbp.serial(BatchNorm(0.5), jaxbp.Tanh())),
        FanInSum(),
        jaxbp.Dense(1),
    )
    assert jaxbp.is_stateful(net)
    shape = (3, F)  # BatchNorm over a batch of 2 has an ill-conditioned dx (see catalogue._not_two)
    params = random_params(net, shape, key)
    state = cast_floats(init_state(net, shape), jnp.float64)
    x = jax.random.normal(key, shape, jnp.float64)
    target = jax.random.normal(key, (3, 1), jnp.float64)
    kw = {"state": state, "key": jax.random.PRNGKey(3)}
    (_, g), (_, g_ref) = manual_and_autodiff(net, jaxbp.MeanSquaredError(), params, x, target, **kw)
    assert_trees_close(g, g_ref, 1e-12, "grads")
    _, _, new_state = apply(net, params, x, train=True, **kw)
    assert not np.allclose(new_state[1][0]["mean"], state[1][0]["mean"])  # Residual's BatchNorm
    assert not np.allclose(new_state[3][1][0]["var"], state[3][1][0]["var"])  # parallel's BatchNorm


def test_combinators_expose_their_layers():
    inner = jaxbp.serial(jaxbp.Dense(3), jaxbp.Tanh())
    assert Residual(inner).layers == (inner,)
    par = parallel(inner, Identity())
    assert par.layers[0] is inner and par.layers[1].name == "Identity"


# --- bad input: clear LayerErrors naming the layer and the shapes ---


def test_errors_name_layer_and_shapes(key):
    with pytest.raises(LayerError, match=r"MultiHeadAttention\(4.*features 6.*\(2, 5, 6\).*4 heads"):
        MultiHeadAttention(4).init(key, (2, 5, 6))
    _, p = MultiHeadAttention(2).init(key, (1, 3, 4))
    with pytest.raises(LayerError, match=r"MultiHeadAttention.*'W.' has shape \(4, 4\), expected \(6, 6\)"):
        MultiHeadAttention(2).forward(p, jnp.zeros((1, 3, 6)))
    with pytest.raises(LayerError, match=r"LSTM\(3\).*\(batch, time, features\).*\(4, 5\)"):
        LSTM(3).init(key, (4, 5))
    _, p = RNN(3).init(key, (1, 2, 4))
    with pytest.raises(LayerError, match=r"RNN\(3\).*'Wx' has shape \(4, 3\), expected \(5, 3\)"):
        RNN(3).forward(p, jnp.zeros((1, 2, 5)))
    with pytest.raises(LayerError, match=r"Residual\(Dense\(3\)\).*\(2, 5\) to \(2, 3\)"):
        Residual(jaxbp.Dense(3)).init(key, (2, 5))
    with pytest.raises(LayerError, match=r"FanInSum.*\(\(2, 3\), \(2, 4\)\)"):
        FanInSum().forward((), (jnp.zeros((2, 3)), jnp.zeros((2, 4))))
    with pytest.raises(LayerError, match=r"FanInConcat.*\(\(2, 3\), \(3, 4\)\)"):
        FanInConcat().init(key, ((2, 3), (3, 4)))
    par = parallel(jaxbp.Dense(3), jaxbp.Dense(3))
    with pytest.raises(LayerError, match=r"parallel\(Dense\(3\), Dense\(3\)\).*2 arrays.*shape \(2, 5\)"):
        par.forward(((), ()), jnp.zeros((2, 5)))
    _, p = par.init(key, ((2, 5), (2, 5)))
    with pytest.raises(LayerError, match=r"level 1/0 \(Dense\(3\)\).*\(2, 4\)"):
        jaxbp.serial(FanOut(2), par).forward(((), p), jnp.zeros((2, 4)))
