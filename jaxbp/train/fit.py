"""``python -m jaxbp train``: the textbook loop, compiled one epoch at a time.

For each epoch: shuffle with the run's key, then for each batch forward through the levels,
backward from the top level down by hand, optax update — the whole epoch one compiled
``lax.scan`` (see :mod:`jaxbp.train.epoch`) — then evaluate on the test split. The last partial
batch of each epoch is dropped (a fresh shuffle every epoch, so every example is seen).
Checkpoints are saved after every epoch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.combinators import leaves
from jaxbp.core import Layer, Loss, layer_name
from jaxbp.errors import NonFiniteError
from jaxbp.flow import NonFinite, locate_nonfinite
from jaxbp.step import TrainState
from jaxbp.train import checkpoint
from jaxbp.train.data import Dataset
from jaxbp.train.epoch import choose_epoch_builder
from jaxbp.train.pieces import (
    DEFAULT_LOSS,
    compiled_epoch,
    compiled_evaluate,
    compiled_init,
    make_evaluate,
    make_optimizer,
)

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


def _start(net, optimizer, data: Dataset, *, batch_size, seed, checkpoint_dir, resume, config, log):
    """``(train_state, history, last epoch done)``: fresh from ``seed``, or resumed from a checkpoint."""
    if not 0 < batch_size <= len(data.x_train):
        raise ValueError(
            f"batch size {batch_size} must lie in [1, {len(data.x_train)}] (the training set's size)"
        )
    in_shape = (batch_size, *data.x_train.shape[1:])
    ts = compiled_init(net, optimizer, in_shape)(jax.random.PRNGKey(seed))
    history, start = _new_history(net, in_shape, data.x_train.dtype), 0
    if resume and checkpoint_dir and checkpoint.exists(checkpoint_dir):
        ts, meta = checkpoint.load(checkpoint_dir, ts)
        if config is not None and meta.get("config") != config:
            raise checkpoint.CheckpointError(
                f"{checkpoint.path_in(checkpoint_dir)} was saved by another run configuration:"
                f" saved {meta.get('config')}, now {config}"
            )
        history, start = meta["history"], meta["epoch"]
        if log:
            log(f"resumed from {checkpoint.path_in(checkpoint_dir)} after epoch {start}")
    return ts, history, start


def _epoch_function(run: _Run, optimizer, batch_size: int, epoch_builder, progress: bool):
    """``(epoch, bar_holder)``: the compiled epoch, with a tqdm bar's tick when ``progress``."""
    holder: list = [None]  # the current epoch's tqdm bar

    def tick(i):
        if holder[0] is not None:
            holder[0].update(int(i) + 1 - holder[0].n)

    epoch_builder = epoch_builder or choose_epoch_builder(run.net)
    if progress:
        return epoch_builder(run.net, run.loss, optimizer, batch_size, tick), holder
    return compiled_epoch(epoch_builder, run.net, run.loss, optimizer, batch_size), holder


def _record_flow(history: dict, norms) -> None:
    history["dx_norms"].append(np.asarray(norms[0]).tolist())
    history["dparam_norms"].append(np.asarray(norms[1]).tolist())


def _train_epoch(run: _Run, ts, e: int, epoch_fn, holder: list, history: dict, progress: bool):
    """One epoch: train, stop on non-finite values, evaluate; returns ``(ts, train_loss, acc)``."""
    if progress:
        from tqdm.auto import tqdm

        holder[0] = tqdm(
            total=run.num_batches, desc=f"epoch {e}/{run.epochs}", unit="batch", leave=True, file=sys.stderr
        )
    ts, losses, bad, bad_rows, before, after = epoch_fn(ts, run.x, run.y, run.probe)
    losses, bad = np.asarray(losses), int(bad)
    if not history["dx_norms"]:
        _record_flow(history, before)
    if bad >= 0:
        if holder[0] is not None:
            holder[0].close()
        xb, yb = run.x[bad_rows], run.y[bad_rows]
        _raise_nonfinite(run.net, run.loss, ts, xb, yb, e, bad, float(losses[bad]), run.checkpoint_dir)
    acc = run.evaluate(ts.params, ts.state, run.data.x_test, run.data.y_test)
    _record_flow(history, after)
    return ts, float(losses.mean()), acc


def _report_epoch(run: _Run, ts, e: int, history: dict, values: dict, holder: list, log, on_epoch) -> None:
    """Append the epoch's values to ``history``, log a line (or finish the bar), save the checkpoint."""
    for k, v in values.items():
        history[k].append(v)
    train_loss, acc, secs = values["train_loss"], values["test_accuracy"], values["seconds"]
    bar = holder[0]
    if bar is not None:
        bar.set_postfix_str(f"loss {train_loss:.4f} acc {acc:.4f}")
        bar.update(run.num_batches - bar.n)
        bar.close()
    elif log:
        log(f"epoch {e:3d}/{run.epochs}  train loss {train_loss:.4f}  test acc {acc:.4f}  {secs:.1f}s")
    if run.checkpoint_dir:
        checkpoint.save(run.checkpoint_dir, ts, {"epoch": e, "history": history, "config": run.config})
    if on_epoch:
        on_epoch(e, history)


def fit(
    net: Layer,
    data: Dataset,
    optimizer: optax.GradientTransformation,
    *,
    epochs: int,
    batch_size: int,
    loss: Loss | None = None,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    config: dict | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
    on_epoch: Callable[[int, dict], None] | None = None,
    track: Callable[[TrainState], dict[str, float]] | None = None,
    epoch_builder: Callable | None = None,
    devices: int | None = None,
) -> FitResult:
    """Train ``net`` on ``data`` with the hand-written backward.

    Args:
      net: the network; every leaf is a level of the gradient flow and of non-finite localisation
        (``history["paths"]`` names them: ``"3"``, ``"3/branch/1"``).
      data: the train/test split.
      optimizer: an optax transformation (see :func:`make_optimizer`).
      epochs: total epochs of the run (a resumed run continues up to this number).
      batch_size: examples per step; the last partial batch of each epoch is dropped.
      loss: default softmax cross-entropy.
      seed: initialises params and the run's PRNG key (shuffling, dropout).
      checkpoint_dir: save params, optimizer state, RNG state and epoch here after every epoch.
      resume: continue from ``checkpoint_dir`` when it holds a checkpoint.
      config: JSON-able description of the run, stored with checkpoints; resuming with a
        different one is refused.
      progress: show a tqdm bar per epoch (for terminals).
      log: called with one line per epoch (None: silent).
      on_epoch: called as ``on_epoch(epoch, history)`` after each epoch's checkpoint.
      track: ``train_state -> {name: float}``, called before training and after each epoch; the
        values go to ``history["tracked"]`` (one dict per point, saved with the checkpoint; e.g. the
        per-level angle between a backward rule's dL/dx and backprop's, which ``--plot`` draws).
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
      CheckpointError: resuming from a checkpoint of another run.
      ValueError: a batch size larger than the training set.
    """
    t0 = time.perf_counter()
    loss = loss or DEFAULT_LOSS
    ts, history, start = _start(
        net,
        optimizer,
        data,
        batch_size=batch_size,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        config=config,
        log=log,
    )
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
        num_batches=len(data.x_train) // batch_size,
        epochs=epochs,
        checkpoint_dir=checkpoint_dir,
        config=config,
    )
    epoch_fn, holder = _epoch_function(run, optimizer, batch_size, epoch_builder, progress)
    ts = _placed(ts, devices if devices is not None else _builder_devices(epoch_builder))
    epoch_seconds = []
    if track and not history.get("tracked"):
        history["tracked"] = [track(ts)]  # before training
    for e in range(start + 1, epochs + 1):
        te = time.perf_counter()
        ts, train_loss, acc = _train_epoch(run, ts, e, epoch_fn, holder, history, progress)
        epoch_seconds.append(time.perf_counter() - te)
        if track:
            history["tracked"].append(track(ts))
        values = {"epoch": e, "train_loss": train_loss, "test_accuracy": acc, "seconds": epoch_seconds[-1]}
        _report_epoch(run, ts, e, history, values, holder, log, on_epoch)
    timed = epoch_seconds[1:] or epoch_seconds
    return FitResult(
        train_state=ts,
        history=history,
        test_accuracy=history["test_accuracy"][-1] if history["test_accuracy"] else float("nan"),
        train_loss=history["train_loss"][-1] if history["train_loss"] else float("nan"),
        epochs=len(history["epoch"]),
        seconds=time.perf_counter() - t0,
        steps_per_second=run.num_batches * len(timed) / sum(timed) if timed else 0.0,
    )


def _builder_devices(epoch_builder) -> int | None:
    keywords = getattr(epoch_builder, "keywords", None) or {}
    return keywords.get("devices", 1)


def _placed(ts, devices: int | None):
    """``ts`` replicated over the data-parallel mesh of ``devices`` (unchanged for one device).

    The epoch returns the state replicated over the mesh; a state still on one device would make
    the second epoch a new compilation (the first one's input sharding differs).
    """
    from jaxbp.distributed import make_mesh, replicate

    if devices == 1:
        return ts
    mesh = make_mesh(devices)
    return ts if mesh.devices.size == 1 else replicate(mesh, ts)


def _raise_nonfinite(net, loss, ts, xb, yb, epoch, batch, value, checkpoint_dir) -> None:
    _, step_key = jax.random.split(ts.key)  # the key train_step_fn used for this batch
    where = locate_nonfinite(net, loss, ts.params, xb, yb, state=ts.state, key=step_key, train=True)
    where = where or NonFinite("update", None, "")
    kept = (
        f"; the last good checkpoint ({checkpoint.path_in(checkpoint_dir)}) is kept"
        if checkpoint_dir and checkpoint.exists(checkpoint_dir)
        else ""
    )
    raise NonFiniteError(
        f"non-finite values at epoch {epoch}, batch {batch} (loss {value}): {where.describe()}{kept}"
    )
