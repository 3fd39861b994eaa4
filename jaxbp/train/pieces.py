"""The pieces :func:`jaxbp.train.fit.fit` assembles: the optimizer, the evaluation, and a cache of
compiled functions (fitting the same network again -- resuming, a second run in one process --
does not compile again)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.core import Layer, Loss
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.step import init_train_state, make_predict


def make_optimizer(
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "constant",
    total_steps: int = 1,
    name: str = "sgd",
) -> optax.GradientTransformation:
    """SGD (with momentum) or Adam, with optional L2 weight decay and a cosine learning-rate schedule.

    Args:
      lr: peak learning rate.
      momentum: SGD momentum (0 for plain SGD); ignored by Adam.
      weight_decay: adds ``weight_decay * ω`` to the gradient before the update.
      schedule: "constant" or "cosine" (decay to 0 over ``total_steps``).
      total_steps: steps in the whole run, for the schedule.
      name: "sgd" or "adam".
    """
    if schedule == "cosine":
        rate = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    elif schedule == "constant":
        rate = lr
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose constant or cosine")
    base = optax.sgd(rate, momentum=momentum or None) if name == "sgd" else optax.adam(rate)
    return optax.chain(optax.add_decayed_weights(weight_decay), base) if weight_decay else base


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
