"""Planted bugs in backward rules are localised by rules.check_rule to the level path and leaf."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxbp
from jaxbp import rules
from jaxbp.rules.dfa import _dfa_net, project
from jaxbp.rules.feedback import VARIANTS, Feedback, _rule_net

F64 = jnp.float64
LOSS = jaxbp.SoftmaxCrossEntropy()


def mlp(dense=jaxbp.Dense):
    return jaxbp.serial(
        jaxbp.Flatten(),
        jaxbp.Dense(7, param_dtype=F64),
        jaxbp.Tanh(),
        dense(6, param_dtype=F64),
        jaxbp.Tanh(),
        jaxbp.Dense(4, param_dtype=F64),
    )


def batch():
    kx, kt = jax.random.split(jax.random.PRNGKey(0))
    return jax.random.normal(kx, (5, 2, 3), F64), jax.random.randint(kt, (5,), 0, 4)


def run(R):
    x, t = batch()
    _, params = R.init(jax.random.PRNGKey(1), x.shape)
    state = jaxbp.init_state(R, x.shape)
    return rules.check_rule(R, LOSS, params, x, t, state=state, key=jax.random.PRNGKey(2))


def assert_caught(report, path, leaves, failing=None):
    """The error starts at ``path`` (down from the loss), in ``leaves``; ``failing``: every bad path."""
    assert not report.ok
    assert report.first_bad_level == path, str(report)
    assert report.failed_leaves() == leaves, str(report)
    assert set(report.failed_levels) == (failing or {path})


def test_correct_rules_pass():
    for R in (
        rules.feedback_alignment(mlp()),
        rules.sign_symmetry(mlp(), "brsf"),
        rules.direct_feedback_alignment(mlp()),
    ):
        assert run(R).ok


def test_fa_using_b_for_dw_too():
    def BadDense(features, **kw):
        layer = jaxbp.Dense(features, **kw)

        def feedback_backward(params, x, g, B):
            # bug: dW computed on a cotangent sent through B (g B^T B) instead of on g
            dparams, dx = layer.extras["feedback_backward"](params, x, g, B)
            gB = lax.dot_general(lax.dot_general(g, B, (((1,), (1,)), ((), ()))), B, (((1,), (0,)), ((), ())))
            return {**dparams, "W": x.T @ gB}, dx

        return layer._replace(extras={**layer.extras, "feedback_backward": feedback_backward})

    assert_caught(run(rules.feedback_alignment(mlp(BadDense))), "3", {"['W']"})


def test_dfa_skipping_the_activations_derivative():
    def leaf_without_activation_derivative(e):
        def leaf(path, layer, params, res, g):
            r, B = res
            dparams, dx = layer.backward(params, r, g)
            if not jax.tree.leaves(params) and g.shape == dx.shape:  # bug: activations hand g down as it is
                return dparams, g
            return (dparams, dx) if B is None else (dparams, project(e, B).astype(dx.dtype))

        return leaf

    report = run(_dfa_net(mlp(), 0, leaf_without_activation_derivative))
    assert_caught(report, "4", {"x"}, failing={"2", "4"})  # both Tanh levels, the top one first


def test_brsf_that_does_not_redraw():
    frozen = Feedback(init=VARIANTS["frsf"].init, weight=VARIANTS["frsf"].weight)  # |R| fixed at init
    # every weight level hands down the wrong dx; the error starts at the top one
    assert_caught(run(_rule_net(mlp(), "brsf", frozen, 0)), "5", {"x"}, failing={"1", "3", "5"})


def check_network_on(R):
    x, t = batch()
    _, params = R.init(jax.random.PRNGKey(1), x.shape)
    state = jaxbp.init_state(R, x.shape)
    return jaxbp.check_network(R, LOSS, params, x, t, state=state, key=jax.random.PRNGKey(2))


@pytest.mark.slow
def test_the_general_checker_verifies_local_rules_against_their_definition():
    # FA and sign symmetry keep the net's walk: check_network checks each rule leaf against the
    # autodiff VJP of its extras["check_forward"] (W in dW, B in dx), at the same paths
    for R in (rules.feedback_alignment(mlp()), rules.sign_symmetry(mlp(), "brsf")):
        assert check_network_on(R).ok


@pytest.mark.slow
def test_the_general_checker_localises_fa_using_b_for_dw():
    def BadDense(features, **kw):
        layer = jaxbp.Dense(features, **kw)

        def feedback_backward(params, x, g, B):
            dparams, dx = layer.extras["feedback_backward"](params, x, g, B)
            return {**dparams, "W": 2.0 * dparams["W"]}, dx  # bug: dW off by a factor

        return layer._replace(extras={**layer.extras, "feedback_backward": feedback_backward})

    report = check_network_on(rules.feedback_alignment(mlp(BadDense)))
    assert report.first_bad_level == "3" and report.failed_leaves() == {"['W']"}, str(report)
