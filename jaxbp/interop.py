"""Interop with the rest of JAX: jaxbp layers as ``jax.custom_vjp`` functions, per-example gradients.

:func:`as_custom_vjp` turns a layer or network into an ordinary differentiable JAX
function whose VJP *is* the hand-written backward, so ``jax.grad``, ``jax.vmap``,
``jax.jit`` and libraries built on them (optax, flax, equinox training loops) run
jaxbp's backward wherever they differentiate through it.

:func:`per_example_grads` gives one gradient per example by vmapping the manual
``forward_backward`` over the batch, each example seen as a batch of one.

This module is one of the two places in the library (with ``jaxbp/check*.py``) allowed to
touch JAX's autodiff machinery, and it only *registers* the manual backward as a rule.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxbp.backprop import forward_backward
from jaxbp.core import Array, Layer, Loss, Params, State, is_stateful


def as_custom_vjp(layer: Layer, *, train: bool = True) -> Callable:
    """Wrap ``layer`` (any layer or network) as a JAX function with its manual backward as VJP.

    Args:
      layer: a plain or stateful :class:`~jaxbp.core.Layer`, e.g. a ``serial`` network.
      train: the mode passed to a stateful layer's forward (static; ignored for plain layers).

    Returns:
      For a plain layer, ``f(params, x) -> y``, differentiable in ``params`` and ``x``.
      For a stateful layer (BatchNorm, Dropout), ``f(params, x, state, key=None) -> (y, new_state)``;
      ``state`` and ``key`` are not differentiable (zero cotangents) and the cotangent of
      ``new_state`` is ignored: running statistics are bookkeeping, not part of the loss.
      ``jax.grad(lambda p: loss(f(p, x)))`` then calls ``layer.backward``; under ``jax.vmap``
      the backward runs batched (per-example gradients), under ``jax.jit`` it is compiled.
    """
    if is_stateful(layer):
        return _stateful_custom_vjp(layer, train)

    @jax.custom_vjp
    def f(params: Params, x: Array) -> Array:
        return layer.forward(params, x)[0]

    def f_fwd(params, x):
        y, res = layer.forward(params, x)
        return y, (params, res)

    def f_bwd(saved, g):
        params, res = saved
        dparams, dx = layer.backward(params, res, g)
        return dparams, dx

    f.defvjp(f_fwd, f_bwd)
    return f


def _stateful_custom_vjp(layer: Layer, train: bool) -> Callable:
    @jax.custom_vjp
    def f(params: Params, x: Array, state: State, key: Array | None = None) -> tuple[Array, State]:
        y, _, new_state = layer.forward(params, x, state=state, key=key, train=train)
        return y, new_state

    def f_fwd(params, x, state, key=None):
        y, res, new_state = layer.forward(params, x, state=state, key=key, train=train)
        return (y, new_state), (params, res)

    def f_bwd(saved, cotangents):
        params, res = saved
        g, _ = cotangents  # dL/dy; the cotangent of new_state is dropped (state is not differentiated)
        dparams, dx = layer.backward(params, res, g)
        return dparams, dx, None, None  # state and key: zero cotangents

    f.defvjp(f_fwd, f_bwd)
    return f


def per_example_grads(net: Layer, loss: Loss) -> Callable:
    """Per-example losses and gradients from the layer-wise manual backward, without a Python loop.

    Each example is run as a batch of one through ``forward_backward`` under ``jax.vmap``,
    so the gradient of example i is dL_i/dω with L_i the loss of that example alone; for a
    mean-reduced loss the batch gradient is their mean.

    Args:
      net: the network.
      loss: the loss (its per-example value is the loss of a batch of one).

    Returns:
      For a plain network, ``f(params, x, target) -> (losses, grads)``; for a stateful one
      ``f(params, x, target, *, state, key=None, train=False) -> (losses, grads)``, example i
      using ``fold_in(key, i)`` (in train mode BatchNorm would normalise each example by
      itself, so the default is eval mode). ``losses`` has shape (B,); every leaf of ``grads``
      has a leading axis B over the leaves of ``params``.
    """
    if not is_stateful(net):

        def one(params, x_i, t_i):
            value, grads, _ = forward_backward(net, loss, params, x_i[None], t_i[None])
            return value, grads

        def f(params: Params, x: Array, target: Array) -> tuple[Array, Params]:
            return jax.vmap(one, in_axes=(None, 0, 0))(params, x, target)

        return f

    def f_stateful(params, x, target, *, state, key=None, train=False):
        def one(i, x_i, t_i):
            k = None if key is None else jax.random.fold_in(key, i)
            value, grads, _ = forward_backward(
                net, loss, params, x_i[None], t_i[None], state=state, key=k, train=train
            )
            return value, grads

        return jax.vmap(one)(jnp.arange(x.shape[0]), x, target)

    return f_stateful
