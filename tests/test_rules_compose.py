"""Rules never keep weight transport silently, refuse what they cannot mean, and validate their state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import tiny_data

import jaxbp
from jaxbp import rules
from jaxbp.errors import JaxbpError, LayerError, UsageError
from jaxbp.quantities import value_grad_and

F64 = jnp.float64
LOSS = jaxbp.SoftmaxCrossEntropy()


def mlp(act=jaxbp.Tanh):
    return jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(7), act(), jaxbp.Dense(6), act(), jaxbp.Dense(4))


def setup(net, shape, key=0):
    kx, kt, kp = jax.random.split(jax.random.PRNGKey(key), 3)
    x, t = jax.random.normal(kx, shape, F64), jax.random.randint(kt, (shape[0],), 0, 4)
    _, params = net.init(kp, shape)
    return jax.tree.map(lambda a: a.astype(F64), params), x, t


def test_every_weight_layer_gets_feedback_attention_recurrent_and_binary_included():
    net = jaxbp.serial(
        jaxbp.MultiHeadAttention(2),
        jaxbp.LSTM(4),
        jaxbp.RNN(4),
        jaxbp.BinaryDense(4),
        jaxbp.Flatten(),
        jaxbp.Dense(4),
    )
    R = rules.feedback_alignment(net, key=1)
    shape = (2, 3, 4)
    fb = jaxbp.init_state(R, shape)[1]
    assert set(fb) == {"0", "1", "2", "3", "5"}
    assert set(fb["0"]) == {"Wq", "Wk", "Wv", "Wo"} and set(fb["1"]) == {"Wx", "Wh"} == set(fb["2"])


@pytest.mark.slow
def test_rules_on_attention_recurrent_and_binary_levels_are_their_definition_and_not_backprop():
    net = jaxbp.serial(
        jaxbp.MultiHeadAttention(2),
        jaxbp.LSTM(4),
        jaxbp.RNN(4),
        jaxbp.BinaryDense(4),
        jaxbp.Flatten(),
        jaxbp.Dense(4),
    )
    R = rules.feedback_alignment(net, key=1)
    shape = (2, 3, 4)
    params, x, t = setup(net, shape)
    report = rules.check_rule(R, LOSS, params, x, t, state=jaxbp.init_state(R, shape))
    assert report.ok, str(report)
    angles = rules.alignment(R, LOSS, params, x, t, state=jaxbp.init_state(R, shape))
    assert all(float(angles[p]["dx"]) > 1 for p in ("0", "1", "2", "3"))  # not backprop anywhere
    assert all("B_W" in angles[p] for p in ("0", "1", "2", "3", "5"))


@pytest.mark.slow
def test_dfa_on_binary_dense_levels():
    net = jaxbp.serial(
        jaxbp.BinaryDense(5), jaxbp.Tanh(), jaxbp.BinaryDense(5), jaxbp.Tanh(), jaxbp.BinaryDense(4)
    )
    R = rules.direct_feedback_alignment(net, key=2)
    shape = (3, 6)
    assert set(jaxbp.init_state(R, shape)[1]) == {"2", "4"}
    params, x, t = setup(net, shape)
    assert rules.check_rule(R, LOSS, params, x, t, state=jaxbp.init_state(R, shape)).ok


def test_a_weight_without_a_feedback_hook_is_refused_naming_the_level():
    def Scale2D():  # a user layer with a weight matrix and no feedback hook
        def init(key, shape):
            return tuple(shape), {"M": jnp.eye(shape[-1])}

        return jaxbp.Layer(init, lambda p, x: (x @ p["M"], x), lambda p, x, g: ({"M": x.T @ g}, g @ p["M"].T))

    R = rules.feedback_alignment(jaxbp.serial(jaxbp.Dense(3), Scale2D(), jaxbp.Dense(2)))
    with pytest.raises(
        UsageError, match=r"level 1 \(.*\) has a weight of shape \(3, 3\) but no feedback hook"
    ):
        jaxbp.init_state(R, (4, 5))


def test_a_rule_of_a_rule_net_is_refused_in_one_line():
    with pytest.raises(UsageError, match=r"already a rule net \(fa\)"):
        rules.feedback_alignment(rules.feedback_alignment(mlp()))


def run(R, state, params, x, t):
    return jax.jit(jaxbp.grad(R, LOSS))(params, x, t, state=state, key=jax.random.PRNGKey(0))


def test_a_state_made_by_another_rule_or_broken_is_refused_by_training_alignment_and_check_rule():
    net, shape = mlp(), (5, 2, 3)
    params, x, t = setup(net, shape)
    fa, usf = rules.feedback_alignment(net), rules.sign_symmetry(net, "usf")
    dfa = rules.direct_feedback_alignment(net)
    fa_state = jaxbp.init_state(fa, shape)
    with pytest.raises(
        UsageError, match=r"level 1 \(Dense\(7\)\) does not fit the rule: it stores float32\[\], got"
    ):
        run(usf, fa_state, params, x, t)  # FA's B matrices read as uSF's scales
    for bad, match in (
        ((), "needs its state"),
        (((), {}), "no entry for level 3"),  # an empty DFA feedback dict (was exact backprop)
        (((), {k: v.astype(jnp.int32) for k, v in jaxbp.init_state(dfa, shape)[1].items()}), "int32"),
    ):
        for check in (
            lambda s: run(dfa, s, params, x, t),
            lambda s: rules.alignment(dfa, LOSS, params, x, t, state=s),
            lambda s: rules.check_rule(dfa, LOSS, params, x, t, state=s),
        ):
            with pytest.raises(UsageError, match=match):
                check(bad)
    extra = ((), {**jaxbp.init_state(dfa, shape)[1], "9": jnp.zeros(3)})
    with pytest.raises(UsageError, match=r"entries for levels \['9'\]"):
        run(dfa, extra, params, x, t)


@pytest.mark.parametrize(
    ("net", "match"),
    [
        (
            jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(7), jaxbp.Tanh(), jaxbp.Dense(4), jaxbp.Tanh()),
            r"level 4 \(Tanh\)",
        ),
        (
            jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(7), jaxbp.Tanh(), jaxbp.Dense(4), jaxbp.LogSoftmax()),
            r"level 4 \(LogSoftmax",
        ),
        (
            jaxbp.serial(
                jaxbp.Flatten(), jaxbp.Dense(7), jaxbp.Tanh(), jaxbp.Dense(6), jaxbp.Tanh(), jaxbp.Dense(4)
            ),
            "3 weight",
        ),
    ],
)
def test_dfa_feedback_like_is_refused_unless_it_is_exact(net, match):
    with pytest.raises(UsageError, match=match):
        rules.feedback_like(
            rules.direct_feedback_alignment(net), setup(net, (5, 2, 3))[0], input_shape=(5, 2, 3)
        )


def test_dfa_feedback_like_on_a_conv_net_is_the_top_levels_jacobian():
    net = jaxbp.serial(jaxbp.Conv2D(2, (2, 2)), jaxbp.Tanh(), jaxbp.Conv2D(3, (2, 2)))
    shape = (2, 4, 4, 1)
    params, x, _ = setup(net, shape)
    R = rules.direct_feedback_alignment(net, key=1)
    state = rules.feedback_like(R, params, input_shape=shape)
    assert state[1]["2"].shape == (4, 4, 2, 4, 4, 3)  # (*x[1:], *y[1:]), not the kernel's shape
    g = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 3), F64)
    y, res, _ = jaxbp.apply(R, params, x, state=state)
    got = R.backward(params, res, g)[0]
    want = net.backward(params, jaxbp.apply(net, params, x)[1], g)[0]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_kolen_pollack_feedback_receives_ws_updates_and_converges_to_w():
    net, shape = mlp(), (5, 2, 3)
    params, x, t = setup(net, shape)
    R = rules.kolen_pollack(net, key=2, decay=0.5)
    state = jaxbp.init_state(R, shape)
    B0 = state[1]["3"]["B"]
    f = jax.jit(jaxbp.grad(R, LOSS))
    _, state = f(params, x, t, state=state)  # step 1 uses B0, stores it with W
    moved = jax.tree.map(lambda a: a + 0.1, params)
    _, state = f(moved, x, t, state=state)  # step 2: B = W2 + (1 - λ)(B0 - W1)
    np.testing.assert_allclose(state[1]["3"]["B"], moved[3]["W"] + 0.5 * (B0 - params[3]["W"]), rtol=1e-12)
    for _ in range(60):
        _, state = f(moved, x, t, state=state)
    angles = rules.alignment(R, LOSS, moved, x, t, state=state)
    assert all(float(row["B_W"]) < 1e-3 for row in angles.values())
    exact = rules.feedback_like(R, params)
    bp = jax.jit(jaxbp.grad(net, LOSS))(params, x, t)
    got, _ = f(params, x, t, state=exact)
    assert (
        max(
            float(jnp.max(jnp.abs(a - b)))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(bp), strict=True)
        )
        < 1e-12
    )


def test_diag_hessian_through_layer_norm_is_refused_in_one_line():
    net = jaxbp.serial(jaxbp.Dense(5), jaxbp.LayerNorm(), jaxbp.Tanh(), jaxbp.Dense(3))
    with pytest.raises(LayerError) as e:
        value_grad_and(net, LOSS, "diag_hessian")(*setup(net, (4, 6)))
    message = str(e.value)
    assert message.startswith("level 1 (LayerNorm(epsilon=1e-05)): ") and message.count("level") == 1
    assert "'diag_hessian'" in message and "hessian_residual" in message


@pytest.mark.slow
def test_quantities_through_layer_norm_and_the_fans():
    from jaxbp.quantities.check import check_quantities

    net = jaxbp.serial(jaxbp.Dense(5), jaxbp.LayerNorm(), jaxbp.Tanh(), jaxbp.Dense(3))
    assert check_quantities(net, (4, 6), ("kflr", "kfac", "diag_ggn"), seeds=1).ok
    fans = jaxbp.serial(
        jaxbp.Dense(4),
        jaxbp.FanOut(2),
        jaxbp.parallel(jaxbp.Tanh(), jaxbp.Dense(4)),
        jaxbp.FanInConcat(),
        jaxbp.Dense(3),
    )
    assert check_quantities(fans, (3, 5), ("diag_hessian", "kflr"), seeds=1).ok


def test_diag_hessian_is_refused_under_a_rule_in_one_line():
    R = rules.feedback_alignment(mlp())
    params, x, t = setup(mlp(), (5, 2, 3))
    with pytest.raises(JaxbpError) as e:
        value_grad_and(R, LOSS, "diag_hessian")(params, x, t, state=jaxbp.init_state(R, x.shape))
    assert "not defined under the backward rule 'fa'" in str(e.value) and str(e.value).count("level") == 1


@pytest.mark.parametrize("rule", ["fa", pytest.param("dfa", marks=pytest.mark.slow)])
def test_train_trains_privately_under_a_rule(tmp_path, capsys, rule):
    import json

    from jaxbp import cli

    d = tiny_data()
    np.savez(tmp_path / "d.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    args = ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--epochs", "1", "--json"]
    args += ["--batch-size", "16", "--widths", "8", "--rule", rule, "--dp-clip", "1", "--dp-noise", "1"]
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rule"] == rule and summary["epsilon"] > 0 and np.isfinite(summary["train_loss"])


def test_a_private_cnn_needs_group_norm(tmp_path, capsys):
    from jaxbp import cli

    d = tiny_data()
    np.savez(tmp_path / "d.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    args = ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--epochs", "1"]
    args += ["--batch-size", "16", "--model", "cnn", "--widths", "4,8", "--dp-clip", "1", "--dp-noise", "1"]
    assert cli.main(args) == 2
    assert "pass --norm group" in capsys.readouterr().err


@pytest.mark.slow
def test_a_private_group_norm_cnn_trains(tmp_path):
    from jaxbp import cli

    d = tiny_data()
    np.savez(tmp_path / "d.npz", x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    args = ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--epochs", "1"]
    args += ["--batch-size", "16", "--model", "cnn", "--widths", "4,8", "--dp-clip", "1", "--dp-noise", "1"]
    assert cli.main([*args, "--norm", "group", "--rule", "usf"]) == 0
