"""Every rule × every quantity × every combinator (and the catalogue's layers): verified or refused.

Each case builds the rule net, asks for every registered quantity, and either verifies what it
computes against its oracle (autodiff of the network's oracle forward: backprop's gradient, or the
rule's own definition through its ``check_forward``; :func:`jaxbp.quantities.check.check_quantities`)
or asserts that it is refused with a :class:`~jaxbp.errors.JaxbpError` naming the level and the
quantity -- never a raw exception. Which refusals are expected is stated here, so a quantity that
stops composing fails. The fast tier samples a case per run (``JAXBP_TEST_SEED`` repeats it); the
slow tier sweeps them all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from harness import run_seed

import jaxbp
from jaxbp import rules
from jaxbp.check.catalogue import CATALOGUE
from jaxbp.combinators import leaf_layers
from jaxbp.errors import JaxbpError
from jaxbp.losses import MeanSquaredError
from jaxbp.quantities import QUANTITIES, value_grad_and
from jaxbp.quantities.check import check_quantities
from jaxbp.quantities.dp import clipped_sum

SEED = run_seed()
F64 = jnp.float64


def _nets():
    d, t = jaxbp.Dense, jaxbp.Tanh
    return {
        "serial": (lambda: jaxbp.serial(jaxbp.Flatten(), d(5), t(), d(4), t(), d(3)), (4, 2, 3)),
        "residual": (lambda: jaxbp.serial(d(4), t(), jaxbp.Residual(jaxbp.serial(d(4), t())), d(3)), (3, 5)),
        "fans": (
            lambda: jaxbp.serial(
                d(4), jaxbp.FanOut(2), jaxbp.parallel(jaxbp.serial(d(3), t()), d(3)), jaxbp.FanInSum(), d(3)
            ),
            (3, 4),
        ),
        "nested": (
            lambda: jaxbp.serial(
                d(4),
                jaxbp.Residual(
                    jaxbp.serial(
                        jaxbp.FanOut(2),
                        jaxbp.parallel(d(2), jaxbp.serial(t(), d(3))),
                        jaxbp.FanInConcat(),
                        d(4),
                    )
                ),
                t(),
                d(3),
            ),
            (3, 4),
        ),
        "conv": (
            lambda: jaxbp.serial(
                jaxbp.Conv2D(2, (2, 2)), t(), jaxbp.AvgPool((2, 2)), jaxbp.Flatten(), d(4), t(), d(3)
            ),
            (3, 4, 4, 1),
        ),
    }


NETS = _nets()
RULE_NAMES = list(rules.RULES)
CASES = [(n, r) for n in NETS for r in RULE_NAMES]


def expected_refusals(rule: str) -> set[str]:
    """Under a backward rule, the quantities that have no meaning there (the registry says which)."""
    return set() if rule == "bp" else {q for q, spec in QUANTITIES.items() if spec.under_rules is not None}


def asked(net, shape, names, make_input=None):
    """Trace ``value_grad_and`` for each quantity alone: ``{name: None or the refusal's message}``."""
    x = (
        jax.eval_shape(lambda k: make_input(k, shape, F64), jax.random.PRNGKey(0))
        if make_input
        else jax.ShapeDtypeStruct(shape, F64)
    )
    out = {}
    for name in names:

        def run(key, x, name=name):
            _, params = net.init(key, shape)
            y = net.init(key, shape)[0]
            state = jaxbp.init_state(net, shape)
            return value_grad_and(net, MeanSquaredError(), name)(
                params, x, jnp.zeros(y), state=state, key=key
            )

        try:
            jax.eval_shape(run, jax.random.PRNGKey(0), x)
            out[name] = None
        except JaxbpError as e:  # a refusal: one clear line naming where and what
            out[name] = str(e)
    return out


def verify_or_refuse(net, shape, *, expect_refused=None, make_input=None, seeds=1):
    results = asked(net, shape, list(QUANTITIES), make_input)
    refused = {q: msg for q, msg in results.items() if msg is not None}
    for q, msg in refused.items():
        assert q in msg and ("level" in msg or "loss" in msg), msg
        assert "\n" not in msg, msg
    if expect_refused is not None:
        assert set(refused) == expect_refused, refused
    names = [q for q in QUANTITIES if q not in refused]
    if not names:
        return refused
    draw = (lambda k, s: make_input(k, s, F64)) if make_input else None
    report = check_quantities(
        net, shape, names, seeds=seeds, make_input=draw, key=jax.random.PRNGKey(SEED % 997)
    )
    assert report.ok, str(report)
    return refused


def rule_net(net_name: str, rule: str):
    factory, shape = NETS[net_name]
    return rules.RULES[rule].make(factory(), key=SEED % 101), shape


def check_case(net_name: str, rule: str):
    net, shape = rule_net(net_name, rule)
    verify_or_refuse(net, shape, expect_refused=expected_refusals(rule))
    check_update_is_the_sum_of_the_shares(net, shape)


def check_update_is_the_sum_of_the_shares(net, shape):
    """batch_grad sums to the network's own gradient (the rule's update), and DP-SGD's ghost clipping
    of those shares equals clipping them one by one."""
    key = jax.random.PRNGKey(SEED)
    x = jax.random.normal(key, shape, F64)
    out, params = net.init(key, shape)
    params = jax.tree.map(lambda a: a.astype(F64), params)
    t = jax.random.normal(jax.random.fold_in(key, 1), out, F64)
    state = jaxbp.init_state(net, shape)
    loss = MeanSquaredError()
    _, grads, q = jax.jit(
        lambda p, x, t: value_grad_and(net, loss, "batch_grad")(p, x, t, state=state, key=key)
    )(params, x, t)
    if jaxbp.is_stateful(net):  # the forward key value_grad_and gives the network (brSF draws from it)
        want = jaxbp.grad(net, loss)(params, x, t, state=state, key=jax.random.split(key)[0], train=False)[0]
    else:
        want = jaxbp.grad(net, loss)(params, x, t)
    for a, b, c in zip(
        jax.tree.leaves(q["batch_grad"]), jax.tree.leaves(grads), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_allclose(a.sum(0), b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b, c, rtol=1e-10, atol=1e-12)
    ghost, materialised = (
        jax.jit(lambda p, m=m: clipped_sum(net, loss, p, x, t, clip=0.05, state=state, key=key, method=m)[1])(
            params
        )
        for m in ("ghost", "materialised")
    )
    for a, b in zip(jax.tree.leaves(ghost), jax.tree.leaves(materialised), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_a_sampled_rule_net_composes_with_every_quantity_and_dp():
    rng = np.random.default_rng(SEED)
    net_name, rule = CASES[int(rng.integers(len(CASES)))]
    try:
        check_case(net_name, rule)
    except AssertionError as e:
        raise AssertionError(f"{rule} on the {net_name} net, seed {SEED}: {e}") from e


@pytest.mark.slow
@pytest.mark.parametrize(("net_name", "rule"), CASES, ids=[f"{n}-{r}" for n, r in CASES])
def test_every_rule_net_composes_with_every_quantity_and_dp(net_name, rule):
    check_case(net_name, rule)


def catalogue_case(name: str, rule: str):
    entry = CATALOGUE[name]
    layer, shape = entry.default()
    if rule != "bp":
        layer = rules.RULES[rule].make(layer, key=3)
    verify_or_refuse(
        layer, shape, make_input=None if entry.make_input.__name__ == "normal_input" else entry.make_input
    )


def _weighted(name: str) -> bool:
    layer, _ = CATALOGUE[name].default()
    return any(leaf.feedback is not None for leaf in leaf_layers(layer))


CATALOGUE_CASES = [(n, "bp") for n in CATALOGUE] + [(n, "fa") for n in CATALOGUE if _weighted(n)]


def test_a_sampled_catalogue_layer_is_verified_or_refused_for_every_quantity():
    rng = np.random.default_rng(SEED + 1)
    name, rule = CATALOGUE_CASES[int(rng.integers(len(CATALOGUE_CASES)))]
    try:
        catalogue_case(name, rule)
    except AssertionError as e:
        raise AssertionError(f"{name} under {rule}, seed {SEED}: {e}") from e


@pytest.mark.slow
@pytest.mark.parametrize(("name", "rule"), CATALOGUE_CASES, ids=[f"{n}-{r}" for n, r in CATALOGUE_CASES])
def test_every_catalogue_layer_is_verified_or_refused_for_every_quantity(name, rule):
    catalogue_case(name, rule)
