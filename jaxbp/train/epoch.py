"""One training epoch: shuffle, every batch's forward / hand-written backward / update, gradient-flow probe.

Two builders with one signature ``(net, loss, optimizer, batch_size, tick) -> epoch`` and one
result, ``epoch(ts, x, y, probe) -> EpochOut`` (``ts`` donated):

* :func:`make_epoch` compiles the whole epoch as one program (``lax.scan`` over batches), so
  small models are not bound by Python dispatch.
* :func:`make_epoch_loop` runs a compiled step per batch from Python: for layers whose compiled
  step is slower inside a loop body than at top level. XLA:CPU hands a convolution to its fast
  kernels inside a loop body only when it already has the forward's dimension numbers
  (``benchmarks/loop_conv_repro.py``: a ``jax.vjp`` weight gradient runs ~70x slower in a scan);
  jaxbp's convolutions emit only that form on CPU, so conv nets scan too.

:func:`choose_epoch_builder` picks one. Both take ``devices=N`` for data-parallel training
(``--devices``): the step is then :func:`jaxbp.distributed.parallel_train_step_fn` on an N-device mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxbp import xla
from jaxbp.core import Layer, Loss
from jaxbp.distributed import train_step_fn_for
from jaxbp.flow import flow_norms
from jaxbp.step import TrainState


class EpochOut(NamedTuple):
    """What an epoch returns.

    ``losses`` has one entry per batch (NaN after a bad batch). When a step's loss or new params
    are non-finite, that step and all after it are not applied: ``train_state`` is the state just
    before batch ``bad_batch`` (``-1`` when all were finite), whose example indices are ``bad_rows``.
    ``flow_before`` / ``flow_after`` are ``(dx_norms, dparam_norms)`` on the probe batch.
    """

    train_state: TrainState
    losses: jax.Array
    bad_batch: jax.Array
    bad_rows: jax.Array
    flow_before: tuple[jax.Array, jax.Array]
    flow_after: tuple[jax.Array, jax.Array]


def _all_finite(tree) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)]).all()


def _parts(
    net: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    devices: int | None,
    step_fn: Callable | None = None,
):
    """(shuffle, guarded step, flow) shared by both builders; all traceable."""
    if step_fn is not None:  # another step of train_step_fn's signature (DP-SGD: jaxbp.quantities.dp)
        step = step_fn(net, loss, optimizer)
    else:
        step, _ = train_step_fn_for(net, loss, optimizer, devices)

    def shuffle(ts: TrainState, n: int):
        # key -> (next key, shuffle key); the last partial batch is dropped (a new one each epoch)
        key, shuffle_key = jax.random.split(ts.key)
        num_batches = n // batch_size
        rows = jax.random.permutation(shuffle_key, n)[: num_batches * batch_size]
        return ts._replace(key=key), rows.reshape(num_batches, batch_size)

    def guarded(ts: TrainState, x, y, idx, clean):
        new, value = step(ts, x[idx], y[idx])
        ok = jnp.isfinite(value) & _all_finite(new.params) & clean
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, ts), value, ok

    def flow(ts: TrainState, probe):
        px, py, pkey = probe
        return flow_norms(net, loss, ts.params, ts.state, pkey, px, py)

    return shuffle, guarded, flow


def make_epoch(
    net: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    tick: Callable[[Any], None] | None = None,
    devices: int | None = 1,
    step_fn: Callable | None = None,
) -> Callable:
    """The whole epoch as one compiled program: ``lax.scan`` of the train step over the batches.

    Args:
      net, loss, optimizer: as for :func:`jaxbp.step.train_step_fn`.
      batch_size: examples per step.
      tick: called as ``tick(i)`` from the device every ~2% of the batches (progress bars).
      devices: data-parallel over this many devices (None: all); 1 is the plain step.
      step_fn: ``(net, loss, optimizer) -> step`` replacing the train step (e.g. DP-SGD).

    Returns:
      ``epoch(ts, x, y, probe) -> EpochOut`` with ``ts`` donated; ``probe = (x, target, key)``.
    """
    shuffle, guarded, flow = _parts(net, loss, optimizer, batch_size, devices, step_fn)

    def epoch(ts: TrainState, x, y, probe) -> EpochOut:
        before = flow(ts, probe)
        ts, rows = shuffle(ts, x.shape[0])
        every = max(1, rows.shape[0] // 50)

        def body(carry, i_idx):
            ts, bad = carry
            i, idx = i_idx
            ts, value, ok = guarded(ts, x, y, idx, bad < 0)
            bad = jnp.where((bad < 0) & ~ok, i, bad)
            if tick is not None:
                lax.cond(i % every == 0, lambda: jax.debug.callback(tick, i), lambda: None)
            return (ts, bad), value

        steps = jnp.arange(rows.shape[0], dtype=jnp.int32)
        (ts, bad), losses = lax.scan(body, (ts, jnp.int32(-1)), (steps, rows))
        ran = jnp.where(bad < 0, len(losses), bad + 1)  # steps up to and including the bad one
        losses = jnp.where(jnp.arange(len(losses)) < ran, losses, jnp.nan)
        return EpochOut(ts, losses, bad, rows[jnp.maximum(bad, 0)], before, flow(ts, probe))

    return xla.jit(epoch, donate_argnums=0)


def make_epoch_loop(
    net: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    tick: Callable[[Any], None] | None = None,
    devices: int | None = 1,
    step_fn: Callable | None = None,
) -> Callable:
    """The epoch as a Python loop over one compiled, donated step (for steps slow inside loop bodies).

    Same arguments and result as :func:`make_epoch`; ``tick(i)`` is called after every batch.
    """
    shuffle, guarded, flow = _parts(net, loss, optimizer, batch_size, devices, step_fn)
    start = xla.jit(lambda ts, probe, n: (*shuffle(ts, n), flow(ts, probe)), static_argnums=2)
    step = xla.jit(guarded, donate_argnums=0)
    end = xla.jit(flow)

    def epoch(ts: TrainState, x, y, probe) -> EpochOut:
        ts, rows, before = start(ts, probe, x.shape[0])
        losses, bad, clean = [], -1, jnp.bool_(True)
        for i in range(rows.shape[0]):
            ts, value, ok = step(ts, x, y, rows[i], clean)
            losses.append(value)
            if tick is not None:
                tick(i)
            if not bool(ok):
                bad = i
                break
        losses = jnp.concatenate([jnp.stack(losses), jnp.full(rows.shape[0] - len(losses), jnp.nan)])
        return EpochOut(ts, losses, jnp.int32(bad), rows[max(bad, 0)], before, end(ts, probe))

    return epoch


def choose_epoch_builder(net: Layer, loop: str = "auto") -> Callable:
    """``make_epoch`` (``loop="scan"`` or ``"auto"``) or ``make_epoch_loop`` (``"python"``).

    ``"auto"`` is the scan for every network, convolutional ones on CPU included: the library's
    layers compile to programs as fast inside the scan's loop body as at top level
    (``benchmarks/cnn_epoch.py`` times both builders). ``net`` is accepted for callers that pick
    per network; a user layer whose step is slow in a loop body takes ``loop="python"``.
    """
    del net
    if loop in ("scan", "auto"):
        return make_epoch
    if loop == "python":
        return make_epoch_loop
    raise ValueError(f"unknown loop {loop!r}; choose auto, scan or python")
