"""``python -m jaxbp train``: the textbook loop, compiled one epoch at a time.

For each epoch: shuffle with the run's key, then for each batch forward through the levels,
backward from the top level down by hand, optax update — the whole epoch one compiled
``lax.scan`` (see :mod:`jaxbp.train.epoch`) — then evaluate on the test split. The last partial
batch of each epoch is dropped (a fresh shuffle every epoch, so every example is seen).
Checkpoints are saved after every epoch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.combinators import leaves
from jaxbp.core import Layer, Loss, layer_name
from jaxbp.errors import NonFiniteError, UsageError
from jaxbp.step import TrainState
from jaxbp.train import checkpoint, rundir
from jaxbp.train.data import Dataset
from jaxbp.train.epoch import choose_epoch_builder
from jaxbp.train.pieces import (
    DEFAULT_LOSS,
    OptimizerArg,
    builder_devices,
    check_output_shape,
    compiled_epoch,
    compiled_evaluate,
    compiled_init,
    make_evaluate,
    make_optimizer,
    placed,
    raise_nonfinite,
    resolve_optimizer,
    total_steps,
)
from jaxbp.train.progress import Progress

__all__ = ["FitResult", "NonFiniteError", "fit", "make_evaluate", "make_optimizer"]


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      train_state: the final :class:`~jaxbp.step.TrainState`.
      history: per-epoch lists (``train_loss``, ``test_accuracy``, ``seconds``) and gradient flow
        (``dx_norms``, ``dparam_norms``: one row of N level norms before training and after each epoch,
        for the levels ``paths`` named ``levels``).
      test_accuracy: after the last epoch.
      train_loss: mean training loss of the last epoch.
      epochs: epochs completed (including those of a resumed run).
      seconds: wall time of this call, compilation included.
      steps_per_second: training steps per second over this call's epochs after the first
        (which includes compilation); over all of them when only one ran.
    """

    train_state: TrainState
    history: dict
    test_accuracy: float
    train_loss: float
    epochs: int
    seconds: float
    steps_per_second: float


def _new_history(net: Layer, in_shape: tuple, dtype) -> dict:
    named = leaves(net, in_shape, dtype)
    return {
        "epoch": [],
        "train_loss": [],
        "test_accuracy": [],
        "seconds": [],
        "levels": [layer_name(layer) for _, layer in named],
        "paths": [path for path, _ in named],
        "dx_norms": [],
        "dparam_norms": [],
    }


class _Run(NamedTuple):
    """What every epoch of one :func:`fit` call uses (built once)."""

    net: Layer
    loss: Loss
    data: Dataset
    x: jax.Array
    y: jax.Array
    probe: tuple
    evaluate: Callable
    num_batches: int
    epochs: int
    checkpoint_dir: str | None
    config: dict | None
    progress: Progress
    track: Callable | None
    track_label: str


def _start(net, optimizer, data: Dataset, *, batch_size, seed, checkpoint_dir, resume, config, log):
    """``(train_state, history, last epoch done)``: fresh from ``seed``, or resumed from a checkpoint."""
    in_shape = (batch_size, *data.x_train.shape[1:])
    ts = compiled_init(net, optimizer, in_shape)(jax.random.PRNGKey(seed))
    history, start = _new_history(net, in_shape, data.x_train.dtype), 0
    if checkpoint_dir:
        rundir.check_space(checkpoint_dir, ts)
    if resume and checkpoint_dir and checkpoint.exists(checkpoint_dir):
        ts, meta = checkpoint.load(checkpoint_dir, ts)
        checkpoint.refuse_nonfinite(checkpoint_dir, ts.params, name="params")
        checkpoint.refuse_nonfinite(checkpoint_dir, ts.state, name="state")
        checkpoint.refuse_nonfinite(
            checkpoint_dir, ts.opt_state, name="opt_state", nan_only=True
        )  # may hold inf
        if config is not None and meta.get("config") != config:
            raise checkpoint.CheckpointError(
                f"{checkpoint.path_in(checkpoint_dir)} was saved by another run configuration:"
                f" saved {meta.get('config')}, now {config}"
            )
        history, start = meta["history"], meta["epoch"]
        if log:
            log(f"resumed from {checkpoint.path_in(checkpoint_dir)} after epoch {start}")
    return ts, history, start


def _epoch_function(run: _Run, optimizer, batch_size: int, epoch_builder):
    """The compiled epoch, calling ``run.progress.tick`` when progress is shown."""
    epoch_builder = epoch_builder or choose_epoch_builder(run.net)
    if run.progress.active:
        return epoch_builder(run.net, run.loss, optimizer, batch_size, run.progress.tick)
    return compiled_epoch(epoch_builder, run.net, run.loss, optimizer, batch_size)


def _record_flow(history: dict, norms) -> None:
    history["dx_norms"].append(np.asarray(norms[0]).tolist())
    history["dparam_norms"].append(np.asarray(norms[1]).tolist())


def _track_start(run: _Run, ts, history: dict, start: int) -> None:
    """The tracked value at the start point: index 0 before training, ``start`` when resuming.

    A resumed run whose checkpoint was not tracked gets ``None`` for the epochs it did not see (the
    plot leaves them blank; the resume point is never drawn as "before training").
    """
    if run.track is None or len(history.get("tracked") or []) > start:
        return
    before = (list(history.get("tracked") or []) + [None] * start)[:start]
    history["tracked"] = [*before, run.track(ts)]


def _train_epoch(run: _Run, ts, e: int, epoch_fn, history: dict):
    """One epoch: train, stop on non-finite values, evaluate; returns ``(ts, train_loss, acc)``."""
    run.progress.start(e, run.epochs, run.num_batches)
    ts, losses, bad, bad_rows, before, after = epoch_fn(ts, run.x, run.y, run.probe)
    losses, bad = np.asarray(losses), int(bad)
    if not history["dx_norms"]:
        _record_flow(history, before)
    if bad >= 0:
        run.progress.close()
        xb, yb = run.x[bad_rows], run.y[bad_rows]
        raise_nonfinite(run.net, run.loss, ts, xb, yb, e, bad, float(losses[bad]), run.checkpoint_dir)
    acc = run.evaluate(ts.params, ts.state, run.data.x_test, run.data.y_test)
    _record_flow(history, after)
    return ts, float(losses.mean()), acc


def _epochs(run: _Run, ts, history: dict, start: int, epoch_fn, log, on_epoch):
    """Epochs ``start + 1 .. run.epochs``; returns the final state and each epoch's seconds."""
    seconds = []
    try:
        for e in range(start + 1, run.epochs + 1):
            te = time.perf_counter()
            ts, train_loss, acc = _train_epoch(run, ts, e, epoch_fn, history)
            seconds.append(time.perf_counter() - te)
            values = {"epoch": e, "train_loss": train_loss, "test_accuracy": acc, "seconds": seconds[-1]}
            _report_epoch(run, ts, e, history, values, log, on_epoch)
    finally:
        run.progress.close()
    return ts, seconds


def _report_epoch(run: _Run, ts, e: int, history: dict, values: dict, log, on_epoch) -> None:
    """Append the epoch's values to ``history``, log a line (or finish the bar), save the checkpoint."""
    for k, v in values.items():
        history[k].append(v)
    tracked = ""
    if run.track is not None:
        history["tracked"].append(run.track(ts))
        items = history["tracked"][-1].items()
        tracked = f"  {run.track_label} " + "  ".join(f"{k}: {v:.1f}" for k, v in items)
    loss, acc, secs = values["train_loss"], values["test_accuracy"], values["seconds"]
    if not run.progress.finish(f"loss {loss:.4f} acc {acc:.4f}{tracked}") and log:
        log(f"epoch {e:3d}/{run.epochs}  train loss {loss:.4f}  test acc {acc:.4f}  {secs:.1f}s{tracked}")
    if run.checkpoint_dir:
        checkpoint.save(run.checkpoint_dir, ts, {"epoch": e, "history": history, "config": run.config})
    if on_epoch:
        on_epoch(e, history)


def fit(
    net: Layer,
    data: Dataset,
    optimizer: OptimizerArg,
    *,
    epochs: int,
    batch_size: int,
    loss: Loss | None = None,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    config: dict | None = None,
    progress: bool | str = False,
    progress_every: float = 10.0,
    log: Callable[[str], None] | None = print,
    on_epoch: Callable[[int, dict], None] | None = None,
    track: Callable[[TrainState], dict[str, float]] | None = None,
    track_label: str = "tracked",
    plot: str | None = None,
    epoch_builder: Callable | None = None,
    devices: int | None = None,
) -> FitResult:
    """Train ``net`` on ``data`` with the hand-written backward.

    Args:
      net: the network; every leaf is a level of the gradient flow and of non-finite localisation
        (``history["paths"]`` names them: ``"3"``, ``"3/branch/1"``). It must map a batch of
        ``data``'s examples to ``(batch, num_classes)`` logits (refused before training otherwise).
      data: the train/test split.
      optimizer: an optax transformation, or a function ``total_steps -> transformation`` that
        ``fit`` calls with the run's total steps (:func:`~jaxbp.train.pieces.total_steps`), e.g.
        ``functools.partial(make_optimizer, 0.05, schedule="cosine")``: a schedule then spans the run.
      epochs: total epochs of the run (a resumed run continues up to this number).
      batch_size: examples per step; the last partial batch of each epoch is dropped.
      loss: default softmax cross-entropy.
      seed: initialises params and the run's PRNG key (shuffling, dropout).
      checkpoint_dir: save params, optimizer state, RNG state and epoch here after every epoch. The
        directory is locked for the run and proven writable before the first step.
      resume: continue from ``checkpoint_dir`` when it holds a checkpoint.
      config: JSON-able description of the run, stored with checkpoints; resuming with a
        different one is refused.
      progress: progress within an epoch (:mod:`jaxbp.train.progress`): True or ``"bar"`` a tqdm
        bar, ``"lines"`` a plain stderr line every ``progress_every`` seconds, False or ``"none"``.
      progress_every: seconds between the lines of ``progress="lines"``.
      log: called with one line per epoch (None: silent).
      on_epoch: called as ``on_epoch(epoch, history)`` after each epoch's checkpoint.
      track: ``train_state -> {name: float}``, called before training and after each epoch; the
        values go to ``history["tracked"]`` (one dict per point, saved with the checkpoint; ``None``
        for the points of a resumed run that was not tracked) and to each epoch's line, after
        ``track_label``: e.g. the per-level angle between a backward rule's dL/dx and backprop's.
      track_label: names the tracked values in the epoch line.
      plot: write the curves and the gradient-flow heatmap here at the end
        (:func:`~jaxbp.train.plot.plot_history`); the path is checked before training.
      epoch_builder: ``(net, loss, optimizer, batch_size, tick) -> epoch`` (see :mod:`jaxbp.train.epoch`);
        default :func:`~jaxbp.train.epoch.choose_epoch_builder`'s pick.
      devices: the data-parallel device count the epoch builder was built for (``--devices``); when
        more than one, the train state is replicated over them before the first epoch, so it enters
        every epoch with one sharding and the epoch compiles once (not again in epoch 2). None: the
        ``devices`` keyword of a ``functools.partial`` builder, else 1.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteError: a loss or gradient became non-finite (the last good checkpoint is kept).
      CheckpointError: resuming from a checkpoint of another run, or of non-finite weights; a
        directory another run holds, or that cannot be written.
      LayerError: a network whose output is not ``(batch, num_classes)``.
      UsageError: a batch size larger than the training set, a ``plot`` path that cannot be written.
    """
    from jaxbp.train import plot as plotting

    t0 = time.perf_counter()
    if not 0 < batch_size <= len(data.x_train):
        raise UsageError(
            f"batch size {batch_size} must lie in [1, {len(data.x_train)}] (the training set's size)"
        )
    if plot is not None:
        plotting.check_path(plot)
    num_batches = len(data.x_train) // batch_size
    optimizer = resolve_optimizer(optimizer, total_steps(len(data.x_train), batch_size, epochs))
    loss = loss or DEFAULT_LOSS
    if loss is DEFAULT_LOSS:
        check_output_shape(net, data, batch_size)
    run = _Run(
        net=net,
        loss=loss,
        data=data,
        x=jnp.asarray(data.x_train),
        y=jnp.asarray(data.y_train),
        probe=(
            jnp.asarray(data.x_train[:batch_size]),
            jnp.asarray(data.y_train[:batch_size]),
            jax.random.PRNGKey(seed + 1),
        ),
        evaluate=compiled_evaluate(net),
        num_batches=num_batches,
        epochs=epochs,
        checkpoint_dir=checkpoint_dir,
        config=config,
        progress=Progress({True: "bar", False: "none"}.get(progress, progress), progress_every),
        track=track,
        track_label=track_label,
    )
    with rundir.locked(checkpoint_dir) if checkpoint_dir else contextlib.nullcontext():
        where = dict(checkpoint_dir=checkpoint_dir, resume=resume, config=config, log=log)
        ts, history, start = _start(net, optimizer, data, batch_size=batch_size, seed=seed, **where)
        epoch_fn = _epoch_function(run, optimizer, batch_size, epoch_builder)
        ts = placed(ts, devices if devices is not None else builder_devices(epoch_builder))
        _track_start(run, ts, history, start)
        ts, epoch_seconds = _epochs(run, ts, history, start, epoch_fn, log, on_epoch)
    if plot is not None:
        plotting.write(history, plot, log)
    timed = epoch_seconds[1:] or epoch_seconds
    return FitResult(
        train_state=ts,
        history=history,
        test_accuracy=history["test_accuracy"][-1] if history["test_accuracy"] else float("nan"),
        train_loss=history["train_loss"][-1] if history["train_loss"] else float("nan"),
        epochs=len(history["epoch"]),
        seconds=time.perf_counter() - t0,
        steps_per_second=num_batches * len(timed) / sum(timed) if timed else 0.0,
    )
