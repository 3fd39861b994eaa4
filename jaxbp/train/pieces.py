"""The pieces :func:`jaxbp.train.fit.fit` assembles: the optimizer (or a function of the run's total
steps that makes it), the checks before training, the evaluation, the placement on devices, the
non-finite report, and a cache of compiled functions (fitting the same network again -- resuming,
a second run in one process -- does not compile again)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.core import Layer, LayerError, Loss
from jaxbp.errors import NonFiniteError, UsageError
from jaxbp.flow import NonFinite, locate_nonfinite
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.step import init_train_state, make_predict
from jaxbp.train import checkpoint
from jaxbp.train.data import Dataset

HUGE_INPUT = (
    1e6  # a non-finite report mentions inputs beyond this magnitude (pixels are ~1 after standardising)
)

# What fit takes as its optimizer: a transformation, or a function of the run's total steps.
OptimizerArg = Union[optax.GradientTransformation, Callable[..., optax.GradientTransformation]]  # noqa: UP007


def make_optimizer(
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    total_steps: int | None = None,
    name: str = "sgd",
) -> optax.GradientTransformation:
    """SGD (with momentum) or Adam, with optional L2 weight decay and a cosine learning-rate schedule.

    Args:
      lr: peak learning rate.
      momentum: SGD momentum (0 for plain SGD); ignored by Adam.
      weight_decay: adds ``weight_decay * ω`` to the gradient before the update.
      schedule: "constant" or "cosine" (decay to 0 over ``total_steps``).
      total_steps: steps in the whole run, for the schedule. Leave it out and hand :func:`fit`
        the function instead (``functools.partial(make_optimizer, lr, schedule="cosine")``): it
        passes the run's total steps.
      name: "sgd" or "adam".

    Raises:
      UsageError: a cosine schedule without ``total_steps``.
    """
    if schedule == "cosine":
        if total_steps is None:
            raise UsageError(
                "make_optimizer: a cosine schedule needs total_steps; or give fit the function,"
                f" functools.partial(make_optimizer, {lr}, schedule='cosine'), and fit passes the run's steps"
            )
        rate = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    elif schedule == "constant":
        rate = lr
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose constant or cosine")
    base = optax.sgd(rate, momentum=momentum or None) if name == "sgd" else optax.adam(rate)
    return optax.chain(optax.add_decayed_weights(weight_decay), base) if weight_decay else base


def total_steps(n_train: int, batch_size: int, epochs: int) -> int:
    """The steps of a whole run: ``epochs`` epochs of ``n_train // batch_size`` batches (the last
    partial batch of each epoch is dropped). What a schedule must span."""
    return epochs * (n_train // batch_size)


def resolve_optimizer(optimizer: OptimizerArg, total_steps: int) -> optax.GradientTransformation:
    """``optimizer`` itself, or what the function ``optimizer(total_steps=...)`` makes (cached: the
    same function and steps give the same transformation, so a second fit does not compile again).
    """
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if not callable(optimizer):
        raise UsageError(
            f"fit: optimizer must be an optax transformation or a function of total_steps, got {optimizer!r}"
        )
    return _built_optimizer(optimizer, total_steps)


def check_output_shape(net: Layer, data: Dataset, batch_size: int) -> None:
    """Before training: ``net`` must map a batch of ``data``'s examples to ``(batch, num_classes)`` logits.

    Raises:
      LayerError: naming both shapes, and the missing ``Flatten`` when images reach a Dense level whole.
    """
    in_shape = (batch_size, *data.x_train.shape[1:])
    out: list = []

    def init(key):
        shape, params = net.init(key, in_shape)
        out.append(tuple(shape))
        return params

    jax.eval_shape(init, jax.random.PRNGKey(0))
    want = (batch_size, data.num_classes)
    if out[0] != want:
        hint = (
            f"; the examples of {data.name} are {data.x_train.shape[1:]} arrays:"
            " start the network with Flatten()"
            if len(out[0]) > 2 and len(in_shape) > 2
            else ""
        )
        raise LayerError(
            f"{net.name}: maps a batch of shape {in_shape} to {out[0]}, but the loss needs logits of shape"
            f" {want} (batch, classes) for the {data.num_classes} classes of {data.name}{hint}"
        )


def make_evaluate(net: Layer, chunk: int = 1000) -> Callable:
    """``evaluate(params, state, x, y) -> accuracy`` over fixed-size chunks (one compilation)."""
    predict = make_predict(net)

    def evaluate(params, state, x: np.ndarray, y: np.ndarray) -> float:
        n = len(x)
        size = min(chunk, n)
        correct = 0
        for start in range(0, n, size):
            xb = x[start : start + size]
            pad = size - len(xb)
            if pad:
                xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            pred = np.asarray(predict(params, jnp.asarray(xb), state)).argmax(-1)[: size - pad]
            correct += int((pred == y[start : start + size]).sum())
        return correct / n

    return evaluate


DEFAULT_LOSS = SoftmaxCrossEntropy()


def cached(make: Callable, size: int = 8) -> Callable:
    """``make`` memoised on its arguments: by value when hashable, else by identity (a ``Layer``
    made by a backward rule holds its key, an array, so it is not hashable). A cached entry keeps its
    arguments alive, so an identity key cannot be reused by another object while it is cached."""
    memo: dict = {}

    def key(a):
        try:
            hash(a)
        except TypeError:
            return ("id", id(a))
        return ("value", a)

    def get(*args):
        k = tuple(key(a) for a in args)
        if k not in memo:
            if len(memo) >= size:
                memo.pop(next(iter(memo)))
            memo[k] = (args, make(*args))
        return memo[k][1]

    return get


# Compiled pieces are cached per (network, loss, optimizer, ...) object, so fitting the same
# model again (resuming, several data sets of one shape) does not compile again.
@cached
def compiled_init(net: Layer, optimizer: optax.GradientTransformation, in_shape: tuple) -> Callable:
    """The jitted ``key -> TrainState`` of ``net`` and ``optimizer`` for inputs of ``in_shape``."""
    return jax.jit(lambda key: init_train_state(net, optimizer, key, in_shape)[1])


@cached
def compiled_epoch(builder: Callable, net: Layer, loss: Loss, optimizer, batch_size: int) -> Callable:
    """The compiled epoch ``builder`` makes (no progress bar)."""
    return builder(net, loss, optimizer, batch_size, None)


compiled_evaluate = cached(make_evaluate)


@cached
def _built_optimizer(make: Callable, total_steps: int) -> optax.GradientTransformation:
    built = make(total_steps=total_steps)
    if not isinstance(built, optax.GradientTransformation):
        raise UsageError(
            f"fit: optimizer(total_steps={total_steps}) returned {built!r}, not an optax transformation"
        )
    return built


def builder_devices(epoch_builder) -> int | None:
    """The ``devices`` keyword of a ``functools.partial`` epoch builder (1 without one)."""
    keywords = getattr(epoch_builder, "keywords", None) or {}
    return keywords.get("devices", 1)


def placed(ts, devices: int | None):
    """``ts`` replicated over the data-parallel mesh of ``devices`` (unchanged for one device).

    The epoch returns the state replicated over the mesh; a state still on one device would make
    the second epoch a new compilation (the first one's input sharding differs).
    """
    from jaxbp.distributed import make_mesh, replicate

    if devices == 1:
        return ts
    mesh = make_mesh(devices)
    return ts if mesh.devices.size == 1 else replicate(mesh, ts)


def raise_nonfinite(net, loss, ts, xb, yb, epoch, batch, value, checkpoint_dir) -> None:
    """Raise the NonFiniteError of a bad batch: the data when its inputs are non-finite, else the level."""
    kept = (
        f"; the last good checkpoint ({checkpoint.path_in(checkpoint_dir)}) is kept"
        if checkpoint_dir and checkpoint.exists(checkpoint_dir)
        else ""
    )
    bad_rows = np.flatnonzero(~np.isfinite(np.asarray(xb)).reshape(len(xb), -1).all(1))
    if bad_rows.size:  # the data, not a level: say so (a level would only pass the values on)
        raise NonFiniteError(
            f"non-finite values at epoch {epoch}, batch {batch}: the input batch itself holds NaN or"
            f" infinity (rows {bad_rows[:5].tolist()} of the batch): a data problem, before level 0{kept}"
        )
    _, step_key = jax.random.split(ts.key)  # the key train_step_fn used for this batch
    where = locate_nonfinite(net, loss, ts.params, xb, yb, state=ts.state, key=step_key, train=True)
    where = where or NonFinite("update", None, "")
    largest = float(np.abs(np.asarray(xb, np.float64)).max())
    huge = (
        f"; the input batch holds values up to {largest:.3g}: a data problem? (standardise or rescale it)"
        if largest > HUGE_INPUT
        else ""
    )
    raise NonFiniteError(
        f"non-finite values at epoch {epoch}, batch {batch} (loss {value}): {where.describe()}{huge}{kept}"
    )
