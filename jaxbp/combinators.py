"""Combinators: networks built from layers are layers themselves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

from jaxbp.core import Layer, LayerError, apply, init_state, is_stateful, layer_name, output_shape


@contextlib.contextmanager
def at_level(index: int, layer: Layer, kind: str = "level") -> Iterator[None]:
    """Re-raise shape and type errors from inside a level (or branch) with its index and name."""
    try:
        yield
    except (LayerError, ValueError, TypeError) as e:
        raise LayerError(f"{kind} {index} ({layer_name(layer)}): {e}") from e


def _check_levels(name: str, layers: tuple[Layer, ...], params) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
        raise LayerError(
            f"{name}: a network of {len(layers)} levels got params with {got} (params from another network?)"
        )


def serial(*layers: Layer) -> Layer:
    """Compose layers left to right; params, res and state are tuples with one entry per level.

    The forward runs the levels 0..N-1 keeping each level's ``res``; the backward
    walks them in reverse, turning dL/dx^{n+1} into (dL/dω^n, dL/dx^n) at each level.

    Args:
      *layers: the levels, bottom (applied to the input) first.

    Returns:
      A :class:`Layer`; stateful if any level is.
    """
    layers = tuple(layers)
    name = "serial(" + ", ".join(layer_name(l) for l in layers) + ")"

    def init(key, input_shape):
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)), strict=True)):
            with at_level(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return tuple(shape), tuple(params)

    def backward(params, res, g):
        # for n = N-1 ... 0:  (dω^n, g) = backward^n(ω^n, res^n, g)   — g is dL/dx^n on exit
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            with at_level(i, layers[i]):
                grads[i], g = layers[i].backward(params[i], res[i], g)
        return tuple(grads), g

    if not any(is_stateful(l) for l in layers):

        def forward(params, x):
            _check_levels(name, layers, params)
            res = []
            for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
                with at_level(i, layer):
                    x, r = layer.forward(p, x)
                res.append(r)
            return x, tuple(res)

        return Layer(init, forward, backward, name=name, layers=layers)

    def state_init(input_shape):
        shape, states = tuple(input_shape), []
        for i, layer in enumerate(layers):
            with at_level(i, layer):
                states.append(init_state(layer, shape))
                shape = output_shape(layer, shape)
        return tuple(states)

    def forward_stateful(params, x, *, state, key, train):
        _check_levels(name, layers, params)
        _check_levels(name + " state", layers, state)
        res, new_state = [], []
        for i, (layer, p, s) in enumerate(zip(layers, params, state, strict=True)):
            k = None if key is None else jax.random.fold_in(key, i)
            with at_level(i, layer):
                x, r, s = apply(layer, p, x, state=s, key=k, train=train)
            res.append(r)
            new_state.append(s)
        return x, tuple(res), tuple(new_state)

    return Layer(init, forward_stateful, backward, init_state=state_init, name=name, layers=layers)
