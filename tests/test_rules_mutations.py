"""Planted bugs in backward rules are localised by rules.check_rule to the level path and leaf."""

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp import rules
from jaxbp.rules.dfa import project
from jaxbp.rules.net import make

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
        rules.kolen_pollack(mlp()),
    ):
        assert run(R).ok


def mutant(rule, **fields):
    """``rule`` with some of its fields replaced, under its own name (check_rule's reference is the
    registered definition of that name)."""
    return lambda net: make(net, rule._replace(**fields), key=0)


def transport(layer, params, res, g, B, e):
    # bug: the level hands down backprop's dx, keeping the weight transport the rule removes
    return layer.backward(params, res, g)[1]


def test_fa_that_keeps_weight_transport():
    R = mutant(rules.RULES["fa"], dx=transport)(mlp())
    assert_caught(run(R), "5", {"x"}, failing={"1", "3", "5"})


def test_dfa_dividing_the_output_error_by_the_batch_again():
    # bug: dx^n = e · B_n / N (e is already the cotangent of the mean loss)
    R = mutant(rules.RULES["dfa"], dx=lambda layer, params, res, g, B, e: project(e, B) / e.shape[0])(mlp())
    assert_caught(run(R), "5", {"x"}, failing={"3", "5"})


def test_brsf_that_does_not_redraw():
    frsf = rules.RULES["frsf"]
    R = mutant(rules.RULES["brsf"], init=frsf.init, step=frsf.step)(mlp())  # |R| fixed at init
    # every weight level hands down the wrong dx; the error starts at the top one
    assert_caught(run(R), "5", {"x"}, failing={"1", "3", "5"})


def check_network_on(R):
    x, t = batch()
    _, params = R.init(jax.random.PRNGKey(1), x.shape)
    state = jaxbp.init_state(R, x.shape)
    return jaxbp.check_network(R, LOSS, params, x, t, state=state, key=jax.random.PRNGKey(2))


@pytest.mark.slow
def test_the_general_checker_verifies_local_rules_against_their_definition():
    # FA, sign symmetry and KP keep the net's walk: check_network checks each rule leaf against the
    # autodiff VJP of its check_forward (W in dW, B in dx), at the same paths
    for R in (
        rules.feedback_alignment(mlp()),
        rules.sign_symmetry(mlp(), "brsf"),
        rules.kolen_pollack(mlp()),
    ):
        assert check_network_on(R).ok


@pytest.mark.slow
def test_the_general_checker_localises_a_rule_that_keeps_weight_transport():
    report = check_network_on(mutant(rules.RULES["fa"], dx=transport)(mlp()))
    assert report.first_bad_level == "5" and report.failed_leaves() == {"x"}, str(report)
