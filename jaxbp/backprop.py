"""Backpropagation over a network and a loss: the manual counterpart of ``jax.value_and_grad``."""

from __future__ import annotations

from collections.abc import Callable

from jaxbp.contract import backprop, input_spec
from jaxbp.core import Array, Layer, Loss, Params, State, apply, is_stateful


def forward_backward(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State = (),
    key: Array | None = None,
    train: bool = True,
) -> tuple[Array, Params, State]:
    """One forward and one hand-written backward pass.

    Args:
      net: the network (any Layer, plain or stateful).
      loss: the loss applied to the network's output.
      params: the network's params.
      x: the input batch.
      target: the targets for ``loss``.
      state: the network's state (``()`` for plain networks).
      key: PRNG key for random layers (Dropout), or None.
      train: the mode passed to stateful layers.

    Returns:
      ``(loss_value, grads, new_state)``; ``grads`` has the structure of ``params``.
      dL/dx of the bottom level is discarded, so under ``jax.jit`` XLA never computes it.

    Raises:
      ContractError: at trace time, when a level's backward returns dparams or dx whose tree
        structure, shapes or dtypes differ from its params' and input's (combinators check their
        levels, the network itself is checked here). Nothing is updated.
    """
    y, res, new_state = apply(net, params, x, state=state, key=key, train=train)
    value, loss_res = loss.forward(y, target)
    g = loss.backward(loss_res)  # dL/dx^{N}: the cotangent entering the top level
    grads, _ = backprop((), net, params, res, g, input_spec(x))  # every level's contract checked
    return value, grads, new_state


def value_and_grad(net: Layer, loss: Loss) -> Callable:
    """The manual counterpart of ``jax.value_and_grad(lambda p: loss(net(p, x), target))``.

    Args:
      net: the network.
      loss: the loss.

    Returns:
      For a plain network, ``f(params, x, target) -> (loss_value, grads)``.
      For a stateful network (BatchNorm, Dropout),
      ``f(params, x, target, *, state, key=None, train=True) -> ((loss_value, new_state), grads)``,
      shaped like ``jax.value_and_grad(..., has_aux=True)``. Both are jit-able and keep the dtype of x.
    """
    if is_stateful(net):

        def f_stateful(params, x, target, *, state, key=None, train=True):
            value, grads, new_state = forward_backward(
                net, loss, params, x, target, state=state, key=key, train=train
            )
            return (value, new_state), grads

        return f_stateful

    def f(params, x, target):
        value, grads, _ = forward_backward(net, loss, params, x, target)
        return value, grads

    return f


def grad(net: Layer, loss: Loss) -> Callable:
    """Like :func:`value_and_grad` but returns only the gradients (plus new state when stateful)."""
    vg = value_and_grad(net, loss)
    if is_stateful(net):

        def g_stateful(params, x, target, **kw):
            (_, new_state), grads = vg(params, x, target, **kw)
            return grads, new_state

        return g_stateful

    return lambda params, x, target: vg(params, x, target)[1]
