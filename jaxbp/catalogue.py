"""The built-in layer catalogue: one entry per layer, used by ``python -m jaxbp check`` and the tests.

Each entry knows how to build a typical instance of its layer and input shape, and
how to draw a random configuration (sizes, strides, paddings ...) from a NumPy
generator, so that property tests and the checker sweep the same space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

import numpy as np

import jaxbp
from jaxbp.core import Layer, Shape


def normal_input(key, shape, dtype):
    """Standard normal input (never exactly at a kink such as ReLU's 0)."""
    return jax.random.normal(key, shape, dtype)


def integer_input(high: int):
    """Integer inputs in [0, high), for layers such as Embedding."""
    return lambda key, shape, dtype: jax.random.randint(key, shape, 0, high)


class Entry(NamedTuple):
    """A catalogue entry.

    Attributes:
      name: the constructor's name, e.g. "Dense".
      sample: ``rng -> (layer, input_shape)``; a random configuration of the layer.
      default: ``() -> (layer, input_shape)``; a typical fixed configuration.
      make_input: ``(key, shape, dtype) -> x``.
      train: the mode used when checking a stateful layer.
    """

    name: str
    sample: Callable[[np.random.Generator], tuple[Layer, Shape]]
    default: Callable[[], tuple[Layer, Shape]]
    make_input: Callable = normal_input
    train: bool = True


def _i(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _elementwise(name: str, make: Callable[[], Layer]) -> Entry:
    def sample(rng):
        return make(), tuple(_i(rng, 1, 5) for _ in range(_i(rng, 1, 4)))

    return Entry(name, sample, lambda: (make(), (4, 7)))


# --- core layers (foundation) ---
CORE = [
    Entry(
        "Dense",
        lambda rng: (jaxbp.Dense(_i(rng, 1, 9), use_bias=bool(rng.integers(2))), (_i(rng, 1, 6), _i(rng, 1, 9))),
        lambda: (jaxbp.Dense(5), (4, 7)),
    ),
    Entry(
        "Dense3D",
        lambda rng: (jaxbp.Dense(_i(rng, 1, 6)), (_i(rng, 1, 4), _i(rng, 1, 5), _i(rng, 1, 6))),
        lambda: (jaxbp.Dense(3), (2, 5, 4)),
    ),
    _elementwise("Relu", jaxbp.Relu),
    _elementwise("LeakyRelu", lambda: jaxbp.LeakyRelu(0.1)),
    _elementwise("Tanh", jaxbp.Tanh),
    _elementwise("Sigmoid", jaxbp.Sigmoid),
    _elementwise("Gelu", lambda: jaxbp.Gelu(approximate=True)),
    _elementwise("GeluExact", lambda: jaxbp.Gelu(approximate=False)),
    _elementwise("Softplus", jaxbp.Softplus),
    _elementwise("Elu", lambda: jaxbp.Elu(0.7)),
    Entry(
        "Flatten",
        lambda rng: (jaxbp.Flatten(), tuple(_i(rng, 1, 4) for _ in range(_i(rng, 1, 4)))),
        lambda: (jaxbp.Flatten(), (2, 3, 4)),
    ),
    Entry(
        "Reshape",
        lambda rng: (jaxbp.Reshape((-1, 2)), (_i(rng, 1, 4), 2 * _i(rng, 1, 4))),
        lambda: (jaxbp.Reshape((3, -1)), (2, 12)),
    ),
    Entry(
        "serial",
        lambda rng: (
            jaxbp.serial(jaxbp.Dense(_i(rng, 1, 6)), jaxbp.Tanh(), jaxbp.Dense(_i(rng, 1, 6))),
            (_i(rng, 1, 5), _i(rng, 1, 6)),
        ),
        lambda: (jaxbp.serial(jaxbp.Dense(6), jaxbp.Relu(), jaxbp.Dense(3)), (4, 5)),
    ),
]

# --- convolution and pooling (layer catalogue) ---
from jaxbp.layers.conv import Conv1D, Conv2D  # noqa: E402
from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool  # noqa: E402


def _padding(rng, window: tuple[int, ...]):
    """Padding "SAME", "VALID" or explicit (lo, hi) pairs, each side below ``window``."""
    kind = int(rng.integers(3))
    if kind < 2:
        return ("SAME", "VALID")[kind]
    return tuple((_i(rng, 0, w - 1), _i(rng, 0, w - 1)) for w in window)


def _conv_sample(rng, rank: int) -> tuple[Layer, Shape]:
    """Odd sizes, batch 1 or 2, strides, dilations, groups and all three padding forms."""
    G = _i(rng, 1, 3)
    ks = tuple(_i(rng, 1, 3) for _ in range(rank))
    dil = tuple(_i(rng, 1, 2) for _ in range(rank))
    eff = tuple((k - 1) * d + 1 for k, d in zip(ks, dil, strict=True))
    make = Conv1D if rank == 1 else Conv2D
    strides = tuple(_i(rng, 1, 3) for _ in range(rank))
    pad = _padding(rng, tuple(e + 1 for e in eff))  # up to a whole window of padding on a side
    layer = make(G * _i(rng, 1, 2), ks, strides, pad, dil, G, use_bias=bool(rng.integers(2)))
    return layer, (_i(rng, 1, 2), *(_i(rng, e, e + 4) for e in eff), G * _i(rng, 1, 2))


def _pool_sample(make: Callable[..., Layer]) -> Callable[[np.random.Generator], tuple[Layer, Shape]]:
    def sample(rng):
        ws = tuple(_i(rng, 1, 3) for _ in range(_i(rng, 1, 2)))
        strides = None if rng.integers(2) else tuple(_i(rng, 1, 3) for _ in ws)
        shape = (_i(rng, 1, 2), *(_i(rng, w, w + 4) for w in ws), _i(rng, 1, 3))
        return make(ws, strides, _padding(rng, ws), rng), shape

    return sample


CONV: list[Entry] = [
    Entry("Conv2D", lambda rng: _conv_sample(rng, 2), lambda: (Conv2D(4, (3, 3)), (2, 7, 7, 3))),
    Entry("Conv1D", lambda rng: _conv_sample(rng, 1), lambda: (Conv1D(4, 3, strides=2), (2, 9, 3))),
    Entry(
        "MaxPool",
        _pool_sample(lambda ws, st, pad, rng: MaxPool(ws, st, pad)),
        lambda: (MaxPool((2, 2)), (2, 6, 6, 3)),
    ),
    Entry(
        "AvgPool",
        _pool_sample(lambda ws, st, pad, rng: AvgPool(ws, st, pad, count_include_pad=bool(rng.integers(2)))),
        lambda: (AvgPool((3, 3), (2, 2), "SAME", count_include_pad=False), (2, 7, 7, 2)),
    ),
    Entry(
        "GlobalAvgPool",
        lambda rng: (GlobalAvgPool(), (_i(rng, 1, 2), *(_i(rng, 1, 5) for _ in range(_i(rng, 1, 2))), 3)),
        lambda: (GlobalAvgPool(), (2, 5, 5, 3)),
    ),
]

# --- normalisation, dropout, embedding, softmax layers (layer catalogue) ---
NORM: list[Entry] = []

# --- attention, recurrence, residual and graph combinators (layer catalogue) ---
SEQUENCE: list[Entry] = []

CATALOGUE: dict[str, Entry] = {e.name: e for e in CORE + CONV + NORM + SEQUENCE}

__all__ = ["CATALOGUE", "Entry", "integer_input", "normal_input"]
