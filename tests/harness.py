"""The one harness every layer goes through: hand-written backward vs jax.vjp of its own forward."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core import Layer, apply, init_state, is_stateful
from jaxbp.train.data import Dataset

# Relative tolerance (max-norm of the error over max-norm of the reference) per dtype.
RTOL = {jnp.dtype(jnp.float64): 1e-12, jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.bfloat16): 3e-2}


def cast_floats(tree, dtype):
    """Cast the floating leaves of ``tree`` to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def rel_err(got, want) -> float:
    """max|got - want| / max|want| (0 when both are zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.max(np.abs(want), initial=0.0)
    err = np.max(np.abs(got - want), initial=0.0)
    return float(err / scale) if scale > 0 else float(err)


def assert_trees_close(got, want, rtol: float, what: str = "") -> None:
    """Same tree structure, same shapes, and each leaf within ``rtol`` relative error."""
    assert jax.tree.structure(got) == jax.tree.structure(want), (
        f"{what}: {jax.tree.structure(got)} != {jax.tree.structure(want)}"
    )
    for path, g, w in zip(
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]],
        jax.tree.leaves(got),
        jax.tree.leaves(want),
        strict=True,
    ):
        assert g.shape == w.shape, f"{what}{path}: shape {g.shape} != {w.shape}"
        err = rel_err(g, w)
        assert err <= rtol, f"{what}{path}: relative error {err:.3g} > {rtol:.3g}"


def compiled(fn, *args):
    """``jax.jit(fn)(*args)`` compiled at XLA backend optimisation level ``JAXBP_TEST_XLA_LEVEL`` (1 in
    the fast tier: a third of the default compile time for these small one-shot programs, with the
    same float64 accuracy; level 0 is not exact: it approximates transcendental functions)."""
    level = int(os.environ.get("JAXBP_TEST_XLA_LEVEL", "1"))
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": level})(*args)


def draws(key) -> np.random.Generator:
    """A NumPy generator seeded from ``key`` (an int or a JAX PRNG key).

    The harness draws params, inputs and cotangents on the host, outside the compiled program:
    drawing them with ``jax.random`` inside it (threefry, then the float64 inverse-erf of
    ``normal``) made up ~90 % of each program's compile time for small layers."""
    if isinstance(key, int | np.integer):
        return np.random.default_rng(int(key))
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _normal_like(rng: np.random.Generator, struct, dtype, scale: float = 1.0):
    """A pytree of N(0, scale²) arrays with the shapes of ``struct``'s float leaves, cast to ``dtype``."""

    def leaf(a):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"non-float leaf {a}: pass it in, the harness draws float leaves only")
        return jnp.asarray(np.asarray(scale * rng.standard_normal(a.shape), jnp.dtype(dtype)))

    return jax.tree.map(leaf, struct)


def check_layer_against_vjp(
    layer: Layer,
    input_shape,
    *,
    key,
    dtype=jnp.float64,
    make_input=None,
    train: bool = True,
    jit: bool = True,
    rtol: float | None = None,
):
    """Assert ``layer.backward`` == ``jax.vjp`` of ``layer.forward`` for params and input.

    Params (N(0, 1), not their init values: a scale of 1 or a bias of 0 would hide a bug that
    forgets it), the input and the cotangent are drawn on the host from ``key`` (an int seed or
    a PRNG key) and cast to ``dtype``; one compiled program then runs the forward, ``jax.vjp``
    and the hand-written backward. ``make_input(key, shape, dtype)`` overrides the standard
    normal input (Embedding's integer ids). Stateful layers run with their initial state, a key
    drawn from ``key`` and mode ``train``. Integer inputs get no input gradient check.
    """
    shape = tuple(input_shape)
    rng = draws(key)
    struct = jax.eval_shape(lambda k: layer.init(k, shape)[1], jax.random.PRNGKey(0))
    params = _normal_like(rng, struct, dtype)
    if make_input is None or getattr(make_input, "__name__", "") == "normal_input":
        x = _normal_like(rng, jax.ShapeDtypeStruct(shape, jnp.float64), dtype)
    else:
        x = make_input(jax.random.PRNGKey(int(rng.integers(2**31))), shape, dtype)
    state = cast_floats(init_state(layer, shape), dtype)
    layer_key = jax.random.PRNGKey(int(rng.integers(2**31))) if is_stateful(layer) else None
    int_input = not jnp.issubdtype(x.dtype, jnp.floating)

    def fwd(p, x):
        return apply(layer, p, x, state=state, key=layer_key, train=train)[:2]

    g = _normal_like(rng, jax.eval_shape(lambda p, x: fwd(p, x)[0], params, x), dtype)

    def run(params, x, g):
        if int_input:
            _, vjp = jax.vjp(lambda p: fwd(p, x)[0], params)
            want = (*vjp(g), None)
        else:
            _, vjp = jax.vjp(lambda p, x: fwd(p, x)[0], params, x)
            want = vjp(g)
        _, res = fwd(params, x)
        return layer.backward(params, res, g), want

    (got_dp, got_dx), want = compiled(run, params, x, g) if jit else run(params, x, g)
    tol = rtol if rtol is not None else RTOL[jnp.dtype(dtype)]
    assert_trees_close(got_dp, want[0], tol, "dparams")
    if not int_input:
        assert_trees_close(got_dx, want[1], tol, "dx")
        assert got_dx.dtype == x.dtype, f"dx dtype {got_dx.dtype} != x dtype {x.dtype}"
    for leaf_g, leaf_p in zip(jax.tree.leaves(got_dp), jax.tree.leaves(params), strict=True):
        assert leaf_g.dtype == leaf_p.dtype, f"dparams dtype {leaf_g.dtype} != params dtype {leaf_p.dtype}"
    return got_dp, got_dx


def run_seed() -> int:
    """This run's seed for fresh random configurations: ``JAXBP_TEST_SEED`` if set (to reproduce a
    failure), else a new one per process, so every run explores new draws."""
    env = os.environ.get("JAXBP_TEST_SEED")
    return int(env) if env else int(np.random.SeedSequence().entropy % 2**31)


def edge_cases() -> dict[str, list[tuple[Layer, tuple[int, ...]]]]:
    """Configurations chosen ON PURPOSE, per catalogue entry, where a bug cannot hide.

    Random draws alone are small and often degenerate (head_dim 1, a normalisation over one
    element, pools without overlap); each case here exists because a specific bug would pass
    a degenerate draw: a missing 1/sqrt(d) in attention (head_dim > 1), a BatchNorm/LayerNorm
    backward that drops the variance terms (reductions over >= 3 elements, variance > 0),
    a pool that forgets overlapping windows or explicit padding, a conv that ignores groups.
    """
    import jaxbp
    from jaxbp.combinators import FanInConcat, FanInSum, FanOut, Identity, Residual, parallel
    from jaxbp.layers.attention import MultiHeadAttention
    from jaxbp.layers.conv import Conv1D, Conv2D
    from jaxbp.layers.dropout import Dropout
    from jaxbp.layers.embedding import Embedding
    from jaxbp.layers.group_norm import GroupNorm
    from jaxbp.layers.norm import BatchNorm, LayerNorm
    from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool
    from jaxbp.layers.recurrent import LSTM, RNN
    from jaxbp.layers.softmax import LogSoftmax, Softmax

    pad = ((1, 2), (2, 0))
    return {
        "Dense": [(jaxbp.Dense(3, use_bias=False), (1, 4)), (jaxbp.Dense(4), (3, 2, 5))],
        "MultiHeadAttention": [
            (MultiHeadAttention(2, causal=False), (2, 5, 6)),  # head_dim 3
            (MultiHeadAttention(1, causal=True), (1, 4, 4)),  # head_dim 4, causal
        ],
        "RNN": [(RNN(3), (2, 4, 2))],
        "LSTM": [(LSTM(3), (2, 4, 2))],
        "LayerNorm": [(LayerNorm(), (4, 5)), (LayerNorm(1e-2), (2, 3, 6))],
        "BatchNorm": [(BatchNorm(0.7), (5, 3)), (BatchNorm(), (2, 3, 2, 4))],
        "BatchNormEval": [(BatchNorm(), (5, 3)), (BatchNorm(), (1, 3, 3, 2))],
        # one group (LayerNorm over everything but the batch) and one channel per group (InstanceNorm)
        "GroupNorm": [(GroupNorm(1), (2, 3, 3, 4)), (GroupNorm(4), (3, 5, 4))],
        "MaxPool": [
            (MaxPool((3, 3), (2, 1), pad), (2, 6, 5, 2)),  # overlapping windows, explicit padding
            (MaxPool((2, 2), (1, 1), "SAME"), (1, 4, 4, 3)),
        ],
        "AvgPool": [
            (AvgPool((3, 2), (1, 1), ((1, 2), (1, 0)), count_include_pad=True), (2, 5, 4, 2)),
            (AvgPool((3, 3), (2, 2), pad, count_include_pad=False), (1, 6, 6, 2)),
        ],
        "GlobalAvgPool": [(GlobalAvgPool(), (2, 3, 4, 5))],
        "Conv2D": [
            (Conv2D(6, (3, 2), (2, 1), pad, (1, 2), 3), (2, 7, 8, 6)),  # 3 groups, strided, dilated
            (Conv2D(4, (2, 2), (1, 1), "VALID", (1, 1), 2, use_bias=False), (1, 4, 5, 4)),
        ],
        "Conv1D": [(Conv1D(4, 3, 2, ((2, 1),), 2, 2), (2, 9, 6))],
        "Dropout": [(Dropout(0.3), (3, 5))],
        "DropoutEval": [(Dropout(0.3), (3, 5))],
        "Embedding": [(Embedding(5, 3), (4, 6))],  # ids in [0, 5): repeated ids accumulate
        "Softmax": [(Softmax(0), (4, 3)), (Softmax(-1), (2, 3, 5))],
        "LogSoftmax": [(LogSoftmax(1), (2, 4, 3))],
        "Residual": [(Residual(jaxbp.serial(jaxbp.Dense(4), jaxbp.Tanh())), (3, 4))],
        "InceptionBranch": [
            (jaxbp.serial(FanOut(2), parallel(jaxbp.Dense(2), jaxbp.Dense(3)), FanInConcat()), (3, 4))
        ],
        "SumBranches": [
            (
                jaxbp.serial(FanOut(3), parallel(jaxbp.Dense(4), jaxbp.Tanh(), Identity()), FanInSum()),
                (3, 4),
            )
        ],
    }


def tiny_data(n_train=96, n_test=30, seed=0) -> Dataset:
    """A tiny training set (train and rules tests): 3 classes of noisy 4x4 images around patterns."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, 3, n).astype(np.int32)
        return (centres[y] + 0.5 * rng.normal(size=(n, 4, 4, 1))).astype(np.float32), y

    return Dataset(*draw(n_train), *draw(n_test), 3, "tiny")


def tiny_npz(path) -> str:
    """:func:`tiny_data` written as an ``.npz`` for ``jaxbp train --dataset npz --data-dir path``."""
    d = tiny_data()
    np.savez(path, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    return path


def one_line_error(capsys) -> str:
    """The command's stderr, which must be one line ``jaxbp train: ...``; returns it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxbp train: "), err
    return err[0]


def same_tree(a, b) -> bool:
    """Same structure, dtypes and bit-identical values (resume == uninterrupted)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )
