"""The checker walks every leaf in place: paths inside residual and parallel blocks, check_forward
oracles, non-finite backwards, and arguments out of range."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp.check import check_layer, check_network
from jaxbp.core import Layer
from jaxbp.errors import UsageError

F64 = jnp.float64


def _doubled(layer: Layer, leaf: str) -> Layer:
    """``layer`` with a planted bug: its backward doubles dparams[leaf]."""

    def backward(params, res, g):
        dp, dx = layer.backward(params, res, g)
        return {**dp, leaf: 2 * dp[leaf]}, dx

    return layer._replace(backward=backward, name="Buggy" + layer.name)


def test_bug_inside_the_attention_of_the_second_residual_branch_is_reported_at_its_path():
    block = jaxbp.serial(
        jaxbp.Residual(jaxbp.serial(jaxbp.LayerNorm(), jaxbp.Dense(4), jaxbp.Relu(), jaxbp.Dense(4))),
        jaxbp.Residual(jaxbp.serial(jaxbp.LayerNorm(), _doubled(jaxbp.MultiHeadAttention(2), "Wk"))),
    )
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4), F64)
    target = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 4), F64)
    params = jax.tree.map(lambda a: a.astype(F64), block.init(jax.random.PRNGKey(0), x.shape)[1])
    report = check_network(block, jaxbp.MeanSquaredError(), params, x, target)
    assert list(report.levels) == [
        "0/branch/0",
        "0/branch/1",
        "0/branch/2",
        "0/branch/3",
        "1/branch/0",
        "1/branch/1",
        "loss",
    ]
    assert report.failed_levels == ["1/branch/1"], str(report)
    assert report.first_bad_level == "1/branch/1"
    assert report.failed_leaves() == {"['Wk']"}
    assert "error starts at level 1/branch/1 (BuggyMultiHeadAttention(2, causal=False))" in report.summary()
    assert all(r.status != "FAIL" for r in report.rows if r.witness == "e2e"), str(report)
    # the end-to-end gradient of Wk disagrees: its row names the level and follows from it
    assert {r.level for r in report.rows if r.status == "follows"} == {"1/branch/1"}


@pytest.mark.slow
def test_every_leaf_of_a_parallel_block_is_checked_in_place():
    net = jaxbp.serial(
        jaxbp.FanOut(2), jaxbp.parallel(jaxbp.Dense(3), _doubled(jaxbp.Dense(3), "b")), jaxbp.FanInSum()
    )
    report = check_layer(net, (4, 5), dtype=F64)
    assert list(report.levels) == ["0", "1/0", "1/1", "2"]
    assert report.failed_levels == ["1/1"] and report.failed_leaves() == {"['b']"}, str(report)


def FeedbackDense(features: int, *, wrong: bool = False) -> Layer:
    """y = x @ W with a fixed random feedback B in the backward (feedback alignment), a toy for the checker:
    dW = xᵀ g, dx = g Bᵀ; its check_forward makes exactly that the autodiff VJP."""
    B_key = jax.random.PRNGKey(7)

    def init(key, input_shape):
        return (*input_shape[:-1], features), {"W": jax.random.normal(key, (input_shape[-1], features))}

    def forward(params, x):
        return x @ params["W"], x

    def feedback(x):
        return jax.random.normal(B_key, (x.shape[-1], features), x.dtype)

    def backward(params, x, g):
        # dW = xᵀ g;  dx = g Bᵀ  (B fixed and random, not W)
        B = feedback(x)
        return {"W": x.T @ g}, g @ (B if wrong else B.T).reshape(features, -1)

    def check_forward(params, x):
        # value x @ W; VJP wrt W = xᵀ g, wrt x = g Bᵀ
        sg = jax.lax.stop_gradient
        B = feedback(x)
        return sg(x) @ params["W"] + x @ sg(B) - sg(x @ B), x

    return Layer(init, forward, backward, name="FeedbackDense", check_forward=check_forward)


def test_check_forward_is_the_oracle_of_its_leaf():
    assert check_layer(FeedbackDense(3), (4, 3), dtype=F64, seeds=2).ok
    without = FeedbackDense(3)._replace(check_forward=None)
    report = check_layer(without, (4, 3), dtype=F64)
    assert report.failed_leaves() == {"x"}  # against the true gradient, dx = g Bᵀ is wrong
    assert check_layer(FeedbackDense(3, wrong=True), (4, 3), dtype=F64).failed_leaves() == {"x"}

    net = jaxbp.serial(jaxbp.Dense(3), jaxbp.Tanh(), FeedbackDense(2))
    params = jax.tree.map(lambda a: a.astype(F64), net.init(jax.random.PRNGKey(0), (4, 5))[1])
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5), F64)
    target = jax.random.normal(jax.random.PRNGKey(2), (4, 2), F64)
    report = check_network(net, jaxbp.MeanSquaredError(), params, x, target)
    assert report.ok, str(report)  # end to end too: the oracle network uses the check_forward
    own = {r.witness for r in report.rows if r.level == "2" and r.witness != "e2e"}
    assert own == {"vjp", "dot"}  # no finite differences: they measure the gradient, which FA is not


def NanBackward(reverse: bool = False) -> Layer:
    """y = 2x; the backward multiplies by NaN (or, reversed, the forward's derivative is non-finite)."""

    def forward(params, x):
        return (jnp.sqrt(x) if reverse else 2 * x), x

    def backward(params, x, g):
        # dx = 2 g  (bug: times NaN);  reversed: dx = 0 where the true derivative 1/(2 sqrt x) is infinite
        return (), (jnp.where(x == 0, 0.0, g / (2 * jnp.sqrt(x))) if reverse else g * jnp.nan)

    return Layer(lambda key, s: (tuple(s), ()), forward, backward, name="NanBackward")


def test_a_non_finite_backward_fails():
    report = check_layer(NanBackward(), (3, 4), dtype=F64)
    assert not report.ok and report.failed_levels == ["0"], str(report)
    assert "non-finite hand-written value at 12 elements where the reference is finite" in report.summary()
    assert {r.witness for r in report.failures()} >= {"vjp", "dot", "fd"}


def test_a_finite_backward_where_the_reference_is_not_fails():
    def at_zero(key, shape, dtype):
        return jnp.abs(jax.random.normal(key, shape, dtype)).at[0, 0].set(0.0)

    report = check_layer(NanBackward(reverse=True), (3, 4), dtype=F64, make_input=at_zero)
    assert not report.ok, str(report)
    vjp = [r for r in report.failures() if r.witness == "vjp"]
    assert vjp and "non-finite reference at 1 elements" in vjp[0].detail


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": 0}, "seeds must be an integer >= 1, got 0"),
        ({"seeds": 2.5}, "seeds must be an integer >= 1"),
        ({"rtol": -1}, "rtol must be a finite number >= 0"),
        ({"atol": float("nan")}, "atol must be a finite number >= 0"),
    ],
)
def test_arguments_out_of_range_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        check_layer(jaxbp.Dense(3), (4, 5), **kwargs)


def test_bad_input_shape_is_a_usage_error():
    with pytest.raises(UsageError, match="input_shape must be a tuple of non-negative ints"):
        check_layer(jaxbp.Dense(3), (4, -5))


def test_a_huge_check_is_refused_not_crashed():
    with pytest.raises(UsageError, match=r"check_layer: checking 400,080,000 values .* GiB"):
        check_layer(jaxbp.Dense(20000), (3, 20000))


def test_witness_masks_are_not_program_constants():
    """The per-leaf masks come from an iota: the compiled program holds no (L, n) constant."""
    from jaxbp.check._witness import witness_values

    D = (jnp.ones((300, 300)), jnp.ones(300))
    text = (
        jax.jit(lambda D, V: witness_values(lambda D: D[0] @ D[1], D, D, jnp.ones(300), V, fd=True))
        .lower(D, jnp.ones(90300))
        .as_text()
    )
    import re

    assert "90300" in text  # the flattened size is there, but no constant array of that size
    big = [line for line in text.splitlines() if "constant" in line and re.search(r"[<x]90300x", line)]
    assert not big
