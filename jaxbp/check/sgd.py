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
from jaxbp.check._rows import default_rtol
from jaxbp.check.report import CheckReport, LeafCheck, compare_arrays
from jaxbp.combinators import param_paths, walk_forward
from jaxbp.contract import path_str
from jaxbp.core import Array, Layer, Loss, Params, State, apply, layer_name
from jaxbp.step import TrainState, train_step_fn

__all__ = ["check_sgd_step"]


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
    levels = _levels(net, params, x, state, key)
    report = CheckReport(name=f"one {layer_name(net)} step", levels=levels)
    for level, (path, p0), p1, p2 in zip(
        param_paths(net, params),
        jax.tree_util.tree_flatten_with_path(params)[0],
        jax.tree.leaves(got),
        jax.tree.leaves(want),
        strict=True,
    ):
        leaf = jax.tree_util.keystr(path)
        report.rows.append(
            _sgd_row(p0, p1, p2, level=level, name=levels[level], leaf=leaf, dtype=dtype, tol=tol, atol=atol)
        )
    return report


def _levels(net: Layer, params, x, state, key) -> dict[str, str]:
    """``{path: name}`` of every leaf in forward order (abstractly)."""
    found = {}

    def run(params, x, state, key):
        def leaf(path, layer, p, xx, *, state, key, train):
            found[path_str(path)] = layer_name(layer)
            return apply(layer, p, xx, state=state, key=key, train=train)

        walk_forward(net, params, x, leaf, state=state, key=key, train=True)

    jax.eval_shape(run, params, x, state, key)
    return found


def _sgd_row(p0, p1, p2, *, level: str, name: str, leaf: str, dtype, tol: float, atol) -> LeafCheck:
    """One param leaf after a jaxbp step (``p1``) against the jax.grad step (``p2``), from ``p0``:
    errors judged against the size of the update, the cosine of the two updates."""
    p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
    eps = float(jnp.finfo(dtype).eps)
    return compare_arrays(
        p1,
        p2,
        level=level,
        level_name=name,
        leaf=leaf,
        witness="sgd",
        dtype=str(jnp.dtype(dtype)),
        tol=tol,
        atol=float(atol if atol is not None else 4 * eps * np.max(np.abs(p0), initial=0.0)),
        scale=float(np.max(np.abs(p2 - p0), initial=0.0)),
        cosine_of=(p1 - p0, p2 - p0),
    )
