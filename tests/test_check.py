"""The checker: no false alarms on the built-in catalogue, kinks are not failures, reports are usable."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax
import pytest
from test_mutations import MutDense

import jaxbp
from jaxbp.check import check_catalogue, check_layer, check_network, check_sgd_step
from jaxbp.check.catalogue import CATALOGUE

SEEDS = 50


@pytest.mark.slow  # 50 seeds x 3 witnesses x 2 dtypes per entry; test_layers.py is the fast check
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_has_no_false_alarms(name):
    """Every built-in layer passes for 50 random draws, in float64 and in its own dtype (float32)."""
    report = check_catalogue([name], seeds=SEEDS)[name]
    assert report.ok, str(report)
    assert report.seeds == SEEDS
    assert {r.dtype for r in report.rows} == {"float64", "float32"}
    assert {"vjp", "dot", "fd"} <= {r.witness for r in report.rows}
    entry = CATALOGUE[name]
    x = entry.make_input(jax.random.PRNGKey(0), entry.default()[1], jnp.float32)
    floating_input = jnp.issubdtype(x.dtype, jnp.floating)
    assert ("x" in {r.leaf for r in report.rows}) == floating_input  # the input gradient is checked too


def test_x64_is_restored():
    with jax.enable_x64(False):
        report = check_layer(jaxbp.Tanh(), (3, 4))
        assert not jax.config.jax_enable_x64
        assert jnp.ones(1).dtype == jnp.float32
    assert report.ok and {r.dtype for r in report.rows} == {"float64", "float32"}


def test_relu_at_zero_is_a_kink_not_a_failure():
    """x == 0 exactly: jax.vjp of max(x, 0) gives g/2, Relu's backward gives 0; both are subgradients."""

    def with_zeros(key, shape, dtype):
        x = jax.random.normal(key, shape, dtype)
        return x.at[0].set(0.0)

    report = check_layer(jaxbp.Relu(), (3, 4), make_input=with_zeros, dtype=jnp.float64)
    assert report.ok, str(report)
    assert {r.status for r in report.rows if r.leaf == "x" and r.witness == "vjp"} == {"kink"}
    assert "skipped near a kink" in report.summary() or "kink" in str(report)


def test_max_pool_ties_are_kinks_not_failures():
    if "MaxPool" not in CATALOGUE:
        pytest.skip("no MaxPool in the catalogue yet")
    layer, shape = CATALOGUE["MaxPool"].default()

    def ties(key, shape, dtype):  # small integers: many equal values in each window
        return jax.random.randint(key, shape, 0, 3).astype(dtype)

    report = check_layer(layer, shape, make_input=ties, seeds=4)
    assert report.ok, str(report)


def test_a_bug_beside_a_kink_is_still_caught():
    def with_zeros(key, shape, dtype):  # two inputs exactly at ReLU's kink, the others not
        return jax.random.normal(key, shape, dtype).at[0, :2].set(0.0)

    from test_mutations import MutRelu

    report = check_layer(MutRelu("no_mask"), (3, 4), make_input=with_zeros, dtype=jnp.float64)
    assert report.failed_levels == ["0"] and report.failed_leaves() == {"x"}


def _mlp_problem(dtype):
    net = jaxbp.serial(jaxbp.Dense(6), jaxbp.Relu(), jaxbp.Dense(3))
    params = jax.tree.map(lambda a: a.astype(dtype), net.init(jax.random.PRNGKey(0), (5, 4))[1])
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4), dtype)
    target = jax.random.randint(jax.random.PRNGKey(2), (5,), 0, 3)
    return net, params, x, target


def test_network_passes_and_checks_every_level_loss_and_input():
    net, params, x, target = _mlp_problem(jnp.float32)
    report = check_network(net, jaxbp.SoftmaxCrossEntropy(), params, x, target)
    assert report.ok, str(report)
    assert report.failed_levels == [] and report.first_bad_level is None
    assert {r.level for r in report.rows if r.witness == "vjp"} == {"0", "1", "2", "loss"}  # 3 levels + loss
    assert {(r.level, r.leaf) for r in report.rows if r.witness == "e2e" and r.dtype == "float32"} == {
        ("0", "[0]['W']"),
        ("0", "[0]['b']"),
        ("2", "[2]['W']"),
        ("2", "[2]['b']"),
        ("0", "x"),
    }


@pytest.mark.slow
def test_stateful_network():
    net = (
        jaxbp.serial(jaxbp.Dense(6), CATALOGUE["BatchNorm"].default()[0], jaxbp.Tanh(), jaxbp.Dense(2))
        if "BatchNorm" in CATALOGUE
        else jaxbp.serial(jaxbp.Dense(6), jaxbp.Tanh(), jaxbp.Dense(2))
    )
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.PRNGKey(0), (6, 4))[1])
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 4), jnp.float64)
    target = jax.random.normal(jax.random.PRNGKey(2), (6, 2), jnp.float64)
    report = check_network(
        net,
        jaxbp.MeanSquaredError(),
        params,
        x,
        target,
        state=jaxbp.init_state(net, (6, 4)),
        key=jax.random.PRNGKey(3),
    )
    assert report.ok, str(report)


def test_sgd_step_matches_and_catches_a_bug():
    net, params, x, target = _mlp_problem(jnp.float32)
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.sgd(0.1, momentum=0.9))
    report = check_sgd_step(net, jaxbp.SoftmaxCrossEntropy(), params, x, target, opt)
    assert report.ok and {r.witness for r in report.rows} == {"sgd"}, str(report)

    bad = jaxbp.serial(MutDense(6, "db_only"), jaxbp.Relu(), jaxbp.Dense(3))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), bad.init(jax.random.PRNGKey(0), (5, 4))[1])
    report = check_sgd_step(bad, jaxbp.SoftmaxCrossEntropy(), params, x, target, optax.sgd(0.1))
    assert {(r.level, r.leaf) for r in report.failures()} == {("0", "[0]['b']")}, str(report)


def test_report_table_and_json():
    report = check_layer(MutDense(3, "dW_twice"), (4, 5), dtype=jnp.float64)
    text = str(report)
    assert "error starts at level 0" in text and "FAIL" in text and "['W']" in text
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["failed_levels"] == ["0"]
    worst = [r for r in data["rows"] if r["status"] == "FAIL" and r["witness"] == "vjp"][0]
    assert worst["leaf"] == "['W']" and worst["hand"] and worst["reference"]
    assert worst["max_rel_err"] == pytest.approx(0.5)  # 2 dW vs dW: |2a - a| / max |2a|
    assert len(worst["worst_index"]) == 2 and -1 <= worst["cosine"] <= 1


def test_wrong_backward_structure_is_reported():
    from jaxbp.core import Layer

    def init(key, shape):
        return tuple(shape), {"a": jnp.ones(shape[-1:])}

    layer = Layer(init, lambda p, x: (p["a"] * x, x), lambda p, x, g: ({"a": g * x}, g * p["a"]), name="Bad")
    report = check_layer(layer, (3, 4), dtype=jnp.float64)
    assert not report.ok and report.failed_levels == ["0"]
    assert (
        report.failures()[0].witness == "shape"
        and "dparams['a'] has shape (3, 4), expected (4,)" in report.failures()[0].detail
    )


def test_network_on_a_tie_is_not_a_failure():
    """Inputs exactly at ReLU's kink reach level 0: its own check and the end-to-end dx are kinks."""
    net = jaxbp.serial(jaxbp.Relu(), jaxbp.Dense(3))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(jax.random.PRNGKey(0), (4, 5))[1])
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5), jnp.float64).at[0, :2].set(0.0)
    target = jax.random.normal(jax.random.PRNGKey(2), (4, 3), jnp.float64)
    report = check_network(net, jaxbp.MeanSquaredError(), params, x, target)
    assert report.ok, str(report)
    assert {r.status for r in report.rows if r.leaf == "x" and r.level == "0"} == {"kink"}, str(report)


def test_checker_programs_compute_products_at_full_precision():
    # A GPU runs float32 products in TF32 and a TPU in bfloat16 passes by default; two correct
    # backwards ordering their products differently then disagree beyond float32's tolerance (the
    # LSTM's float32 pass failed on an H200). The checker traces its programs at "highest".
    from jaxbp.check import _setup

    def f(a, b):
        return jax.lax.conv(a[None, None], b[None, None], (1, 1), "SAME").sum() + (a @ b.T).sum()

    x = jnp.ones((3, 4))
    lines = [
        ln
        for ln in _setup.lowered(f, x, x).as_text().splitlines()
        if "dot_general" in ln or "convolution" in ln
    ]
    assert len(lines) == 2 and all("HIGHEST" in ln for ln in lines), lines
    assert (
        "HIGHEST" not in jax.jit(f).lower(x, x).as_text()
    )  # scoped to the checker: the caller's setting stays
