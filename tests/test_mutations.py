"""Planted bugs: each wrong backward must be reported at the right level and leaf.

Every mutant is a user-written layer (the three-function contract) whose backward
differs from the correct one in one way. Single layers go through ``check_layer``
(level 0); bugs inside networks go through ``check_network``, which must name the
level where the error starts, not the levels below that merely inherit it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp.check import check_layer, check_network
from jaxbp.core import Layer, Loss

F64 = jnp.float64


def _same(key, shape):
    return tuple(shape), ()


def MutDense(features: int, bug: str = "") -> Layer:
    """Dense (x @ W + b) with an optional planted bug in its backward."""

    def init(key, shape):
        W = jax.random.normal(key, (shape[-1], features)) / jnp.sqrt(shape[-1])
        return (*shape[:-1], features), {"W": W, "b": 0.1 * jnp.ones((features,))}

    def forward(p, x):
        return x @ p["W"] + p["b"], x

    def backward(p, x, g):
        # dx = g @ W.T; dW = x.T @ g; db = g.sum(0)
        dx, dW, db = g @ p["W"].T, x.T @ g, g.sum(0)
        if bug == "dx_sign":
            dx = -dx
        elif bug == "dW_twice":
            dW = 2 * dW
        elif bug == "db_only":
            db = 1.5 * db
        elif bug == "dx_zero":
            dx = jnp.zeros_like(dx)
        elif bug == "dx_transposed":  # square W: g @ W instead of g @ W.T
            dx = g @ p["W"]
        elif bug == "rel_1e-4":
            dW = dW * (1 + 1e-4)
        elif bug == "rel_1e-6":
            dW = dW * (1 + 1e-6)
        return {"W": dW, "b": db}, dx

    return Layer(init, forward, backward, name=f"MutDense({bug})")


def MutScale(bug: str = "") -> Layer:
    """y = x * s, s of shape (features,): (batch, features) -> same."""

    def init(key, shape):
        return tuple(shape), {"s": 1 + 0.1 * jax.random.normal(key, shape[-1:])}

    def forward(p, x):
        return x * p["s"], x

    def backward(p, x, g):
        # dx = g * s; ds = sum_batch(g * x)
        ds = (g * x).sum(1) if bug == "wrong_axis" else (g * x).sum(0)  # square input keeps the shape
        return {"s": ds}, g * p["s"]

    return Layer(init, forward, backward, name=f"MutScale({bug})")


def MutTanh(bug: str = "") -> Layer:
    """y = tanh(x), backward from the wrong residual (x instead of y) when asked."""

    def forward(p, x):
        y = jnp.tanh(x)
        return y, (x if bug == "wrong_residual" else y)

    def backward(p, r, g):
        # dx = g * (1 - y**2)
        return (), g * (1 - r * r)

    return Layer(_same, forward, backward, name=f"MutTanh({bug})")


def MutRelu(bug: str = "") -> Layer:
    """y = max(x, 0); the bug forgets the mask."""

    def forward(p, x):
        return jnp.maximum(x, 0), x > 0

    def backward(p, positive, g):
        # dx = g * [x > 0]
        return (), (g if bug == "no_mask" else jnp.where(positive, g, 0.0))

    return Layer(_same, forward, backward, name=f"MutRelu({bug})")


def MutSigmoid(bug: str = "") -> Layer:
    """y = sigmoid(x); the bug drops the (1 - y) factor."""

    def forward(p, x):
        y = jax.nn.sigmoid(x)
        return y, y

    def backward(p, y, g):
        # dx = g * y * (1 - y)
        return (), (g * y if bug == "missing_factor" else g * y * (1 - y))

    return Layer(_same, forward, backward, name=f"MutSigmoid({bug})")


def MutBlur(bug: str = "") -> Layer:
    """y[:, i] = x[:, i-1] + 2 x[:, i] + x[:, i+1] with zero padding; the bug wraps around at the edges."""

    def forward(p, x):
        xp = jnp.pad(x, ((0, 0), (1, 1)))
        return xp[:, :-2] + 2 * x + xp[:, 2:], ()

    def backward(p, r, g):
        # dx[:, i] = g[:, i+1] + 2 g[:, i] + g[:, i-1]   (zero padding: no term past the edges)
        if bug == "edges":
            return (), jnp.roll(g, -1, 1) + 2 * g + jnp.roll(g, 1, 1)
        gp = jnp.pad(g, ((0, 0), (1, 1)))
        return (), gp[:, 2:] + 2 * g + gp[:, :-2]

    return Layer(_same, forward, backward, name=f"MutBlur({bug})")


def MutResidual(inner: Layer, bug: str = "") -> Layer:
    """y = x + inner(x); the bug drops the skip term from dx."""

    def forward(p, x):
        y, r = inner.forward(p, x)
        return x + y, r

    def backward(p, r, g):
        # dx = g + inner.backward(g); dp = inner.backward(g)
        dp, dx = inner.backward(p, r, g)
        return dp, (dx if bug == "no_skip" else g + dx)

    return Layer(inner.init, forward, backward, name=f"MutResidual({bug})")


def MutDropout(rate: float, bug: str = "") -> Layer:
    """Inverted dropout (a stateful/random layer); the bug forgets the 1 / (1 - rate) rescaling."""

    def forward(p, x, *, state, key, train):
        keep = jax.random.bernoulli(key, 1 - rate, x.shape)
        return jnp.where(keep, x / (1 - rate), 0.0), keep, state

    def backward(p, keep, g):
        # dx = g * keep / (1 - rate)
        return (), jnp.where(keep, g if bug == "no_rescale" else g / (1 - rate), 0.0)

    return Layer(_same, forward, backward, init_state=lambda shape: (), name=f"MutDropout({bug})")


def MutMSE(bug: str = "") -> Loss:
    """Mean squared error; the bug forgets the factor 2."""

    def forward(pred, target):
        d = pred - target
        return jnp.mean(d * d), d

    def backward(d):
        # dpred = 2 (pred - target) / size
        return (1 if bug == "half" else 2) * d / d.size

    return Loss(forward, backward, name=f"MutMSE({bug})")


# (name, layer, input shape, the leaves that must be reported at level 0)


def _id(m) -> str:
    return m.values[0] if hasattr(m, "values") else m[0]


LAYER_MUTANTS = [
    ("sign flip in dx", MutDense(3, "dx_sign"), (4, 5), {"x"}),
    ("factor 2 in dW", MutDense(3, "dW_twice"), (4, 5), {"['W']"}),
    pytest.param(
        "error in one param leaf only", MutDense(3, "db_only"), (4, 5), {"['b']"}, marks=pytest.mark.slow
    ),
    pytest.param("correct dW, zero dx", MutDense(3, "dx_zero"), (4, 5), {"x"}, marks=pytest.mark.slow),
    pytest.param("transposed residual", MutDense(4, "dx_transposed"), (3, 4), {"x"}, marks=pytest.mark.slow),
    ("relative error 1e-4", MutDense(3, "rel_1e-4"), (4, 5), {"['W']"}),
    ("relative error 1e-6", MutDense(3, "rel_1e-6"), (4, 5), {"['W']"}),
    ("reduction over the wrong axis", MutScale("wrong_axis"), (4, 4), {"['s']"}),
    pytest.param(
        "wrong residual (x for y)", MutTanh("wrong_residual"), (4, 5), {"x"}, marks=pytest.mark.slow
    ),
    ("missing mask", MutRelu("no_mask"), (4, 5), {"x"}),
    pytest.param("missing factor", MutSigmoid("missing_factor"), (4, 5), {"x"}, marks=pytest.mark.slow),
    pytest.param("error only at padding edges", MutBlur("edges"), (3, 6), {"x"}, marks=pytest.mark.slow),
    ("missing skip-connection term", MutResidual(MutDense(5), "no_skip"), (4, 5), {"x"}),
    ("stateful: missing dropout rescale", MutDropout(0.5, "no_rescale"), (4, 5), {"x"}),
]


@pytest.mark.parametrize("what,layer,shape,leaves", LAYER_MUTANTS, ids=[_id(m) for m in LAYER_MUTANTS])
def test_layer_mutant_is_caught(what, layer, shape, leaves):
    report = check_layer(layer, shape, dtype=F64)
    assert not report.ok, f"{what}: not caught\n{report}"
    assert report.failed_levels == ["0"]
    assert report.failed_leaves() == leaves, f"{what}: wrong leaves\n{report}"
    assert {r.witness for r in report.failures()} >= {"vjp", "dot"}, report


def test_correct_user_layers_pass():
    for layer, shape in [
        (MutDense(3), (4, 5)),
        (MutScale(), (4, 4)),
        (MutBlur(), (3, 6)),
        (MutResidual(MutDense(5)), (4, 5)),
        (MutDropout(0.5), (4, 5)),
    ]:
        report = check_layer(layer, shape, dtype=F64, seeds=4)
        assert report.ok, str(report)


def test_relative_error_1e4_float64_and_float32():
    """Caught in float64 by every witness; in float32 the element-wise vjp tolerance (~1e-5) resolves it."""
    report = check_layer(MutDense(3, "rel_1e-4"), (4, 5), dtype=jnp.float32)
    failed = {(r.witness, r.dtype) for r in report.failures()}
    assert {("vjp", "float64"), ("dot", "float64"), ("fd", "float64"), ("vjp", "float32")} <= failed, report
    assert report.failed_leaves() == {"['W']"}


def _mlp(middle: Layer, top: Layer | None = None) -> Layer:
    return jaxbp.serial(MutDense(6), middle, top or MutDense(3))


NETWORK_MUTANTS = [
    pytest.param(
        "bug in the middle level",
        _mlp(MutTanh("wrong_residual")),
        MutMSE(),
        "1",
        {"x"},
        marks=pytest.mark.slow,
    ),
    ("bug in the top level", _mlp(MutTanh(), MutDense(3, "dW_twice")), MutMSE(), "2", {"['W']"}),
    pytest.param(
        "wrong input gradient of the first level",
        jaxbp.serial(MutDense(6, "dx_zero"), MutTanh(), MutDense(3)),
        MutMSE(),
        "0",
        {"x"},
        marks=pytest.mark.slow,
    ),
    ("bug in the loss", _mlp(MutTanh()), MutMSE("half"), "loss", {"pred"}),
]


@pytest.mark.parametrize("what,net,loss,level,leaves", NETWORK_MUTANTS, ids=[_id(m) for m in NETWORK_MUTANTS])
def test_network_mutant_names_the_level(what, net, loss, level, leaves):
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5), F64)
    target = jax.random.normal(jax.random.PRNGKey(2), (4, 3), F64)
    params = jax.tree.map(lambda a: a.astype(F64), net.init(jax.random.PRNGKey(0), (4, 5))[1])
    report = check_network(net, loss, params, x, target)
    assert report.failed_levels == [level], f"{what}\n{report}"
    assert report.first_bad_level == level
    assert report.failed_leaves() == leaves, f"{what}\n{report}"
    # the levels below inherit the error end to end; they are symptoms, not reported as failures
    assert all(r.status != "FAIL" for r in report.rows if r.witness == "e2e"), report
