"""The compiled training step: forward, hand-written backward and the optax update in one program."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from jaxbp import xla
from jaxbp.backprop import forward_backward
from jaxbp.core import Array, Layer, Loss, Params, Shape, State, apply, init_state, is_stateful


class TrainState(NamedTuple):
    """Everything a training run carries from step to step (all plain pytrees).

    Attributes:
      params: the network's params.
      opt_state: the optax optimizer state.
      state: the network's state (BatchNorm running statistics), ``()`` when none.
      key: the PRNG key for random layers; split once per step when the net is stateful (on one
        device and on many alike: :func:`train_step_fn` is the one step).
      step: the number of steps taken, an int32 scalar.
    """

    params: Params
    opt_state: Any
    state: State
    key: Array
    step: Array


def init_train_state(
    net: Layer, optimizer: optax.GradientTransformation, key: Array, input_shape: Shape
) -> tuple[Shape, TrainState]:
    """Initialise params, optimizer state, network state and the step RNG.

    Args:
      net: the network.
      optimizer: an optax transformation, e.g. ``optax.sgd(0.1)``.
      key: a PRNG key; split into the init key and the training key.
      input_shape: the shape of one input batch.

    Returns:
      ``(output_shape, train_state)``.
    """
    init_key, train_key = jax.random.split(key)
    out_shape, params = net.init(init_key, tuple(input_shape))
    ts = TrainState(
        params=params,
        opt_state=optimizer.init(params),
        state=init_state(net, input_shape),
        key=train_key,
        step=jax.numpy.zeros((), jax.numpy.int32),
    )
    return out_shape, ts


class Reduction(NamedTuple):
    """How a data-parallel step combines its shards (:mod:`jaxbp.distributed` builds one); None on one device.

    Attributes:
      grads: ``(grads, loss_value) -> (grads, loss_value)`` averaged over the shards (``lax.pmean``).
      state: ``new_state -> new_state`` made equal on every shard again.
      key: ``step_key -> step_key`` of this shard (so each shard draws its own dropout masks).
    """

    grads: Callable
    state: Callable
    key: Callable


def train_step_fn(
    net: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    forward_backward: Callable = forward_backward,
    reduction: Reduction | None = None,
    needs_key: bool = False,
) -> Callable:
    """The uncompiled step ``(train_state, x, target) -> (train_state, loss_value)``.

    Use it inside larger compiled programs (``lax.scan`` over an epoch of batches);
    :func:`make_train_step` is the same function compiled with its state donated.
    ``forward_backward`` (same signature as :func:`jaxbp.backprop.forward_backward`) is
    replaceable, so a benchmark can build the identical step on ``jax.grad``. ``reduction``
    makes it the step of one shard of a data-parallel step
    (:func:`jaxbp.distributed.parallel_train_step_fn`): the key handling, the forward-backward
    and the update are this function's on one device and on many. ``needs_key``: the
    ``forward_backward`` draws (DP-SGD's noise, :mod:`jaxbp.quantities.dp`), so it gets a step key
    even for a network without random layers.
    """

    random = is_stateful(net) or needs_key  # only what draws consumes a key: no split otherwise

    def step(ts: TrainState, x: Array, target: Array) -> tuple[TrainState, Array]:
        key, step_key = jax.random.split(ts.key) if random else (ts.key, None)
        if reduction is not None and step_key is not None:
            step_key = reduction.key(step_key)
        value, grads, new_state = forward_backward(
            net, loss, ts.params, x, target, state=ts.state, key=step_key, train=True
        )
        if reduction is not None:
            grads, value = reduction.grads((grads, value))  # dL/dω = (1/N) Σ_d dL_d/dω: the all-reduce
            new_state = reduction.state(new_state)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)  # ω ← ω + update  (sgd: update = -η dL/dω)
        return TrainState(params, opt_state, new_state, key, ts.step + 1), value

    return step


def make_train_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation) -> Callable:
    """One ``jax.jit``-compiled training step with the train state donated.

    Args:
      net: the network.
      loss: the loss.
      optimizer: any optax ``GradientTransformation`` (``optax.sgd(eta)`` is
        ω ← ω − η·dL/dω; chains with momentum, weight decay, clipping, schedules work unchanged).

    Returns:
      ``step(train_state, x, target) -> (train_state, loss_value)``. It has no host
      callbacks, so it compiles unchanged for CPU, GPU or TPU. The passed
      ``train_state`` is donated: do not use it after the call.
    """
    return xla.jit(train_step_fn(net, loss, optimizer), donate_argnums=0)


def make_predict(net: Layer) -> Callable:
    """A compiled ``predict(params, x, state=()) -> y`` in eval mode (no dropout, running statistics)."""

    def predict(params, x, state=()):
        y, _, _ = apply(net, params, x, state=state, key=None, train=False)
        return y

    return xla.jit(predict)
