"""Backward rules: exactness against backprop, dW always backprop's, definitions, training, resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import same_tree, tiny_data

import jaxbp
from jaxbp import rules
from jaxbp.errors import JaxbpError, UsageError
from jaxbp.layers.dropout import Dropout
from jaxbp.rules.metrics import recorded_backward
from jaxbp.train import checkpoint
from jaxbp.train.fit import fit, make_optimizer

F64 = jnp.float64


LOSS = jaxbp.SoftmaxCrossEntropy()


def mlp(hidden=(7, 6), act=jaxbp.Tanh):
    layers = [jaxbp.Flatten()]
    for w in hidden:
        layers += [jaxbp.Dense(w, param_dtype=F64), act()]
    return jaxbp.serial(*layers, jaxbp.Dense(4, param_dtype=F64))


def conv_net():
    """Conv, a residual branch with a Dense inside, pooling: a rule must go through every combinator."""
    return jaxbp.serial(
        jaxbp.Conv2D(3, (3, 3), param_dtype=F64),
        jaxbp.Tanh(),
        jaxbp.Residual(jaxbp.serial(jaxbp.Dense(3, param_dtype=F64), jaxbp.Tanh())),
        jaxbp.AvgPool((2, 2)),
        jaxbp.Flatten(),
        jaxbp.Dense(4, param_dtype=F64),
    )


def batch(shape, key=0):
    kx, kt = jax.random.split(jax.random.PRNGKey(key))
    return jax.random.normal(kx, shape, F64), jax.random.randint(kt, (shape[0],), 0, 4)


def setup(net, shape):
    x, t = batch(shape)
    _, params = jax.jit(net.init, static_argnums=1)(jax.random.PRNGKey(1), x.shape)
    return params, x, t


def max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


RULE_NETS = [
    lambda n: rules.feedback_alignment(n, key=3),
    lambda n: rules.sign_symmetry(n, "usf", key=3),
    lambda n: rules.sign_symmetry(n, "frsf", key=3),
    lambda n: rules.sign_symmetry(n, "brsf", key=3),
    lambda n: rules.direct_feedback_alignment(n, key=3),
]


SLOW = pytest.mark.slow
MLP, CONV = (mlp, (5, 2, 3)), (conv_net, (2, 4, 4, 2))


@pytest.mark.parametrize(
    "make_net,shape,make_rule",
    [
        (*MLP, RULE_NETS[0]),
        pytest.param(*CONV, RULE_NETS[0], marks=SLOW),
        pytest.param(*CONV, RULE_NETS[2], marks=SLOW),
    ],
)
def test_feedback_like_turns_fa_and_frsf_into_backprop(make_net, shape, make_rule):
    net = make_net()
    params, x, t = setup(net, shape)
    R = make_rule(net)
    state = rules.feedback_like(R, params)
    assert jax.tree.structure(state[1]) != jax.tree.structure(params)
    (v, new_state), grads = jax.jit(jaxbp.value_and_grad(R, LOSS))(
        params, x, t, state=state, key=jax.random.PRNGKey(2)
    )
    v_bp, g_bp = jax.jit(jaxbp.value_and_grad(net, LOSS))(params, x, t)
    assert float(v) == float(v_bp)
    assert max_diff(grads, g_bp) < 1e-12
    assert same_tree(new_state, state)  # feedback is not learned
    # with its own random feedback the rule is not backprop
    (_, _), grads = jax.jit(jaxbp.value_and_grad(R, LOSS))(
        params, x, t, state=jaxbp.init_state(R, shape), key=None
    )
    assert max_diff(grads, g_bp) > 1e-4


def test_dfa_with_one_hidden_layer_and_feedback_like_is_backprop():
    net = mlp(hidden=(7,))
    params, x, t = setup(net, (5, 2, 3))
    R = rules.direct_feedback_alignment(net, key=3)
    state = rules.feedback_like(R, params, input_shape=x.shape)
    (_, _), grads = jax.jit(jaxbp.value_and_grad(R, LOSS))(params, x, t, state=state)
    assert max_diff(grads, jax.jit(jaxbp.grad(net, LOSS))(params, x, t)) < 1e-12
    with pytest.raises(UsageError, match="no feedback turns dfa"):
        rules.feedback_like(
            rules.direct_feedback_alignment(mlp()), setup(mlp(), (5, 2, 3))[0], input_shape=x.shape
        )
    with pytest.raises(UsageError, match="no feedback turns usf"):
        rules.feedback_like(rules.sign_symmetry(net), params)


@pytest.mark.parametrize(
    "make_rule,make_net,shape",
    [pytest.param(RULE_NETS[0], *CONV, marks=SLOW), (RULE_NETS[3], *MLP), (RULE_NETS[4], *MLP)]
    + [
        pytest.param(r, *n, marks=SLOW)
        for r in RULE_NETS
        for n in (MLP, CONV)
        if (r, n) not in ((RULE_NETS[0], CONV), (RULE_NETS[3], MLP), (RULE_NETS[4], MLP))
    ],
)
def test_dw_is_backprops_on_the_arriving_g_and_check_rule_passes(make_rule, make_net, shape):
    net = make_net()
    params, x, t = setup(net, shape)
    R = make_rule(net)
    state, key = jaxbp.init_state(R, shape), jax.random.PRNGKey(5)
    y, res, _ = jaxbp.apply(R, params, x, state=state, key=key, train=True)
    assert np.array_equal(y, jaxbp.apply(net, params, x)[0])  # same forward
    g = LOSS.backward(LOSS.forward(y, t)[1])
    rec = recorded_backward(R, params, res, g)
    weight_levels = 0
    for layer, p, r, gg, dp, _ in rec.values():
        if layer.feedback is not None or layer.rule is not None:
            inner, own = (layer.rule.net, r[0]) if layer.rule is not None else (layer, r)
            want, _ = inner.backward(p, own, gg)
            assert same_tree(dp, want)
            weight_levels += 1
    assert weight_levels == 3
    report = rules.check_rule(R, LOSS, params, x, t, state=state, key=key)
    assert report.ok, str(report)
    assert len(report.levels) == len(rec)


@pytest.mark.parametrize("variant", ["fa", *(pytest.param(v, marks=SLOW) for v in ("usf", "frsf", "brsf"))])
def test_rule_leaf_check_forward_vjp_is_its_backward(variant):
    """The checker's oracle: autodiff of check_forward == the rule leaf's hand-written backward."""
    net = conv_net()
    params, x, t = setup(net, (2, 4, 4, 2))
    R = rules.by_name(variant, net, key=4)
    state, key = jaxbp.init_state(R, x.shape), jax.random.PRNGKey(6)
    found = []

    def leaf(path, layer, p, xx, *, state, key, train):
        if layer.check_forward is not None:
            found.append((path, layer, p, xx, state, key))
        return jaxbp.apply(layer, p, xx, state=state, key=key, train=train)

    jaxbp.walk_forward(R, params, x, leaf, state=state, key=key, train=True)
    assert [rules.path_str(f[0]) for f in found] == ["0", "2/branch/0", "5"]
    for _, layer, p, xx, s, k in found:

        def both(p, xx, g, s, k, layer=layer):  # one compiled program per leaf (eager ops compile one by one)
            y, res, _ = layer.forward(p, xx, state=s, key=k, train=True)
            cf = layer.check_forward
            y2, vjp = jax.vjp(lambda p, xx: cf(p, xx, state=s, key=k, train=True)[0], p, xx)
            return y, y2, layer.backward(p, res, g), vjp(g)

        shape = jax.eval_shape(
            lambda p, xx, s, k, layer=layer: layer.forward(p, xx, state=s, key=k, train=True)[0], p, xx, s, k
        ).shape
        g = jnp.asarray(np.random.default_rng(7).normal(size=shape), F64)
        y, y2, hand, want = jax.jit(both)(p, xx, g, s, k)
        assert float(jnp.max(jnp.abs(y2 - y))) < 1e-15
        assert max_diff(hand, want) < 1e-12


def test_dfa_check_forward_vjp_is_its_backward():
    net = mlp()
    params, x, t = setup(net, (5, 2, 3))
    R = rules.direct_feedback_alignment(net, key=4)
    state = jaxbp.init_state(R, x.shape)
    y, res, _ = R.forward(params, x, state=state, key=None, train=True)
    g = jax.random.normal(jax.random.PRNGKey(7), y.shape, F64)
    f = lambda p, xx: R.check_forward(p, xx, state=state, key=None, train=True)[0]  # noqa: E731
    y2, vjp = jax.vjp(f, params, x)
    assert float(jnp.max(jnp.abs(y2 - y))) < 1e-15
    assert max_diff(R.backward(params, res, g), vjp(g)) < 1e-12


def test_brsf_redraws_every_step_and_needs_a_key():
    net = mlp()
    params, x, t = setup(net, (5, 2, 3))
    R = rules.sign_symmetry(net, "brsf")
    state = jaxbp.init_state(R, x.shape)
    f = jax.jit(jaxbp.grad(R, LOSS))
    g1, _ = f(params, x, t, state=state, key=jax.random.PRNGKey(1))
    g2, _ = f(params, x, t, state=state, key=jax.random.PRNGKey(2))
    assert max_diff(g1, g2) > 1e-6 and max_diff(g1[-1], g2[-1]) == 0.0  # the top level's dW is exact
    with pytest.raises(JaxbpError, match="step key"):
        f(params, x, t, state=state, key=None)


def test_alignment_angles():
    net = mlp()
    params, x, t = setup(net, (5, 2, 3))
    fa = rules.feedback_alignment(net, key=3)
    exact = rules.alignment(fa, LOSS, params, x, t, state=rules.feedback_like(fa, params))
    assert set(exact) == {"1", "3", "5"}
    for row in exact.values():
        assert float(row["dx"]) < 1e-5 and float(row["dparams"]) < 1e-5 and float(row["B_W"]) < 1e-5
        assert abs(float(row["B_W_norm_ratio"]) - 1) < 1e-12
    rand = rules.alignment(fa, LOSS, params, x, t, state=jaxbp.init_state(fa, x.shape))
    assert float(rand["5"]["dparams"]) < 1e-5  # the top level's own gradient is exact
    assert float(rand["5"]["dx"]) > 30 and float(rand["1"]["dparams"]) > 30
    usf = rules.sign_symmetry(net, "usf")
    sym = rules.alignment(usf, LOSS, params, x, t, state=jaxbp.init_state(usf, x.shape))
    assert all(float(r["B_W"]) < 60 for r in sym.values())  # sign-concordant: well below 90 degrees


def test_feedback_stays_out_of_params_and_a_network_without_weights_is_refused():
    net = mlp()
    R = rules.feedback_alignment(net)
    shapes = jax.eval_shape(lambda k: R.init(k, (5, 2, 3))[1], jax.random.PRNGKey(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(
        jax.eval_shape(lambda k: net.init(k, (5, 2, 3))[1], jax.random.PRNGKey(0))
    )
    with pytest.raises(UsageError, match="no weight level"):
        rules.feedback_alignment(jaxbp.serial(jaxbp.Tanh()))
    with pytest.raises(UsageError, match="variant"):
        rules.sign_symmetry(net, "xsf")


@pytest.mark.parametrize("rule", [pytest.param(r, marks=SLOW) for r in ("fa", "brsf", "dfa")])
def test_rules_survive_checkpoint_and_resume_bit_for_bit(tmp_path, rule):
    data = tiny_data()
    base = jaxbp.serial(
        jaxbp.Flatten(), jaxbp.Dense(8), jaxbp.Relu(), Dropout(0.1), jaxbp.Dense(6), jaxbp.Relu()
    )
    base = jaxbp.serial(*base.layers, jaxbp.Dense(3))
    opt = make_optimizer(0.1, momentum=0.9, weight_decay=1e-3, schedule="cosine", total_steps=3 * 6)
    kw = dict(epochs=2, batch_size=16, seed=3, log=None, config={"rule": rule})
    net = rules.by_name(rule, base, key=1)
    full = fit(net, data, opt, **kw)

    def interrupt(epoch, history):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            net,
            data,
            opt,
            checkpoint_dir=str(tmp_path),
            on_epoch=interrupt,
            **kw,
        )
    # a net that would draw other feedback: the checkpoint's feedback is the one that continues
    other = rules.by_name(rule, base, key=2)
    resumed = fit(other, data, opt, checkpoint_dir=str(tmp_path), resume=True, **kw)
    assert same_tree(resumed.train_state, full.train_state)
    assert resumed.history["test_accuracy"] == full.history["test_accuracy"]
    if rule != "brsf":  # brsf stores no feedback (R_t comes from the step key, in the checkpoint too)
        assert not same_tree(jaxbp.init_state(other, (16, 4, 4, 1))[1], full.train_state.state[1])
    saved, _ = checkpoint.load(tmp_path, full.train_state)
    assert same_tree(saved.state[1], full.train_state.state[1])  # feedback in the checkpoint


@SLOW
def test_cli_rule_json(tmp_path, capsys):
    import json

    from jaxbp import cli

    d = tiny_data()
    np.savez(tmp_path / "d.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    args = ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--epochs", "1"]
    args += ["--batch-size", "16", "--widths", "8,8", "--json", "--rule", "dfa"]
    args += ["--plot", str(tmp_path / "p.png"), "--checkpoint-dir", str(tmp_path / "ck")]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # --plot: the per-level dx angle before training and after each epoch, kept with the checkpoint
    from jaxbp.train import checkpoint

    tracked = checkpoint.read_meta(tmp_path / "ck")["history"]["tracked"]
    assert len(tracked) == 2 and set(tracked[0]) == {"1", "3", "5"} and (tmp_path / "p.png").stat().st_size
    assert tracked[-1]["1"] == summary["alignment"]["1"]["dx"]
    assert summary["rule"] == "dfa" and set(summary["alignment"]) == {"1", "3", "5"}
    assert set(summary["alignment"]["5"]) == {"dx", "dparams", "B_W", "B_W_norm_ratio"}
    assert 0 <= summary["alignment"]["1"]["dx"] <= 180
