"""One whole training step checked: params after a jaxbp step == params after a ``jax.grad`` step.

:func:`check_sgd_step` runs the library's own train step (:func:`jaxbp.step.train_step_fn`) and the
same optax update on ``jax.grad`` of the composed forward, and reports one row per parameter leaf,
named by the level path that owns it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.check import _setup
from jaxbp.check._rows import default_rtol, ratio
from jaxbp.check.report import WITNESSES, CheckReport, LeafCheck
from jaxbp.combinators import walk_forward
from jaxbp.contract import path_str
from jaxbp.core import Array, Layer, Loss, Params, State, apply, layer_name
from jaxbp.step import TrainState, train_step_fn

__all__ = ["check_sgd_step"]


def _level_paths(net: Layer, params, x, state, key) -> tuple[dict[str, str], list[str]]:
    """``{path: name}`` of every leaf in forward order and the path of each leaf of ``params`` (abstract)."""
    found = {}

    def run(params, x, state, key):
        seen = []

        def leaf(path, layer, p, xx, *, state, key, train):
            seen.append((path_str(path), layer, p))
            return apply(layer, p, xx, state=state, key=key, train=train)

        walk_forward(net, params, x, leaf, state=state, key=key, train=True)
        owner = {id(a): path for path, _, p in seen for a in jax.tree.leaves(p)}
        found["levels"] = {path: layer_name(layer) for path, layer, _ in seen}
        found["params"] = [owner.get(id(a), seen[0][0]) for a in jax.tree.leaves(params)]

    jax.eval_shape(run, params, x, state, key)
    return found["levels"], found["params"]


def check_sgd_step(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    optimizer: optax.GradientTransformation,
    *,
    state: State = (),
    key: Array | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> CheckReport:
    """Params after one jaxbp training step == params after one step with ``jax.grad`` and ``optimizer``.

    Args:
      net: the network.
      loss: the loss.
      params: the params before the step.
      x: the input batch.
      target: the targets.
      optimizer: the optax transformation both steps use.
      state: the network's state.
      key: the training PRNG key (the step splits it as :func:`jaxbp.step.train_step_fn` does).
      atol: absolute tolerance (default: rounding of adding the update to the params).
      rtol: relative tolerance on the update (default from the dtype and size).

    Returns:
      A :class:`~jaxbp.check.report.CheckReport` with one ``sgd`` row per parameter leaf.
    """
    _setup.check_arguments("check_sgd_step", rtol=rtol, atol=atol)
    key = jax.random.PRNGKey(0) if key is None else key
    ts = TrainState(params, optimizer.init(params), state, key, jnp.zeros((), jnp.int32))

    def reference(ts):
        _, step_key = jax.random.split(ts.key)

        def value(p):
            return loss.forward(apply(net, p, x, state=ts.state, key=step_key, train=True)[0], target)[0]

        updates, _ = optimizer.update(jax.grad(value)(ts.params), ts.opt_state, ts.params)
        return optax.apply_updates(ts.params, updates)

    got = jax.jit(lambda ts: train_step_fn(net, loss, optimizer)(ts, x, target)[0].params)(ts)
    want = jax.jit(reference)(ts)
    dtype = _setup.native_dtype(params)
    size = sum(a.size for a in jax.tree.leaves((params, x)))
    tol = rtol if rtol is not None else default_rtol(dtype, size)
    levels, param_levels = _level_paths(net, params, x, state, key)
    report = CheckReport(name=f"one {layer_name(net)} step", levels=levels)
    for (path, p0), p1, p2, level in zip(
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree.leaves(got),
        jax.tree.leaves(want),
        param_levels,
        strict=True,
    ):
        report.rows.append(
            _sgd_row(
                np.asarray(p0, np.float64),
                np.asarray(p1, np.float64),
                np.asarray(p2, np.float64),
                level=level,
                name=levels[level],
                leaf=jax.tree_util.keystr(path),
                dtype=dtype,
                tol=tol,
                atol=atol,
            )
        )
    return report


def _sgd_row(p0, p1, p2, *, level: str, name: str, leaf: str, dtype, tol: float, atol) -> LeafCheck:
    """One param leaf after a jaxbp step (``p1``) against the jax.grad step (``p2``), from ``p0``."""
    err, scale = np.abs(p1 - p2), np.max(np.abs(p2 - p0), initial=0.0)
    eps = float(jnp.finfo(dtype).eps)
    a = atol if atol is not None else 4 * eps * np.max(np.abs(p0), initial=0.0)
    worst = int(np.argmax(err)) if err.size else 0
    cos = float(np.vdot(p1 - p0, p2 - p0) / max(np.linalg.norm(p1 - p0) * np.linalg.norm(p2 - p0), 1e-300))
    max_err = float(err.max(initial=0))
    hand, ref = WITNESSES["sgd"]
    return LeafCheck(
        level=level,
        level_name=name,
        leaf=leaf,
        witness="sgd",
        dtype=str(jnp.dtype(dtype)),
        max_abs_err=max_err,
        max_rel_err=float(ratio(max_err, scale)),
        worst_index=tuple(int(i) for i in np.unravel_index(worst, p0.shape)),
        cosine=cos,
        tol=tol,
        atol=float(a),
        status="ok" if max_err <= a + tol * scale else "FAIL",
        hand=hand,
        reference=ref,
    )
