"""The one harness every layer goes through: hand-written backward vs jax.vjp of its own forward."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core import Layer, apply, init_state, is_stateful

# Relative tolerance (max-norm of the error over max-norm of the reference) per dtype.
RTOL = {jnp.dtype(jnp.float64): 1e-12, jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.bfloat16): 3e-2}


def cast_floats(tree, dtype):
    """Cast the floating leaves of ``tree`` to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def perturb(params, key, scale: float = 0.5):
    """Add noise to every float leaf, so a backward is not only checked at init values (scale 1, bias 0)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))[: len(leaves)]
    noisy = [
        a + scale * jax.random.normal(k, a.shape, a.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
        for a, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


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
    """``jax.jit(fn)(*args)`` compiled at XLA backend optimisation level 1: a third of the default
    compile time for these small one-shot programs, with the same float64 accuracy (level 0 is not:
    it approximates transcendental functions)."""
    level = int(os.environ.get("JAXBP_TEST_XLA_LEVEL", "1"))
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": level})(*args)


def vjp_pair(vjp, key, y):
    """Apply ``vjp`` to the random cotangent that the manual backward also receives."""
    out = vjp(jax.tree.map(lambda a: jax.random.normal(key, a.shape, a.dtype), y))
    return out if len(out) == 2 else (out[0], None)


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

    Params and the input are drawn at random (cast to ``dtype``), the cotangent too.
    Stateful layers run with their initial state, a fixed key and mode ``train``.
    Integer inputs (Embedding) get no input gradient check, as they have none.
    """
    shape = tuple(input_shape)
    make_input = make_input or jax.random.normal
    stateful = is_stateful(layer)

    def run(key):
        kp, kx, kg, kl = jax.random.split(key, 4)
        params = perturb(cast_floats(layer.init(kp, shape)[1], dtype), kp)
        x = make_input(kx, shape, dtype)
        state = cast_floats(init_state(layer, shape), dtype)
        layer_key = kl if stateful else None

        def fwd(p, x):
            return apply(layer, p, x, state=state, key=layer_key, train=train)[:2]

        int_input = not jnp.issubdtype(x.dtype, jnp.floating)
        if int_input:
            y, vjp = jax.vjp(lambda p: fwd(p, x)[0], params)
            want = vjp_pair(vjp, kg, y)
        else:
            y, vjp = jax.vjp(lambda p, x: fwd(p, x)[0], params, x)
            want = vjp_pair(vjp, kg, y)
        g = jax.tree.map(lambda a: jax.random.normal(kg, a.shape, a.dtype), y)
        _, res = fwd(params, x)
        got = layer.backward(params, res, g)
        return got, want, params, x

    (got_dp, got_dx), want, params, x = compiled(run, key) if jit else run(key)
    int_input = not jnp.issubdtype(x.dtype, jnp.floating)
    tol = rtol if rtol is not None else RTOL[jnp.dtype(dtype)]
    assert_trees_close(got_dp, want[0], tol, "dparams")
    if not int_input:
        assert_trees_close(got_dx, want[1], tol, "dx")
        assert got_dx.dtype == x.dtype, f"dx dtype {got_dx.dtype} != x dtype {x.dtype}"
    for leaf_g, leaf_p in zip(jax.tree.leaves(got_dp), jax.tree.leaves(params), strict=True):
        assert leaf_g.dtype == leaf_p.dtype, f"dparams dtype {leaf_g.dtype} != params dtype {leaf_p.dtype}"
    return got_dp, got_dx
