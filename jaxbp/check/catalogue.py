"""The built-in layer catalogue: one entry per layer, used by ``python -m jaxbp check`` and the tests.

Each entry knows how to build a typical instance of its layer and input shape, and
how to draw a random configuration (sizes, strides, paddings ...) from a NumPy
generator, so that property tests and the checker sweep the same space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

import jaxbp
from jaxbp.combinators import FanInConcat, FanInSum, FanOut, Identity, Residual, parallel
from jaxbp.core import Layer, Shape
from jaxbp.layers.attention import MultiHeadAttention
from jaxbp.layers.conv import Conv1D, Conv2D
from jaxbp.layers.dropout import Dropout
from jaxbp.layers.embedding import Embedding
from jaxbp.layers.group_norm import GroupNorm
from jaxbp.layers.norm import BatchNorm, LayerNorm
from jaxbp.layers.pool import AvgPool, GlobalAvgPool, MaxPool
from jaxbp.layers.recurrent import LSTM, RNN
from jaxbp.layers.softmax import LogSoftmax, Softmax


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
        lambda rng: (
            jaxbp.Dense(_i(rng, 1, 9), use_bias=bool(rng.integers(2))),
            (_i(rng, 1, 6), _i(rng, 1, 9)),
        ),
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


def _perturbed(layer: Layer) -> Layer:
    """``layer`` with random params and non-zero running statistics, so scale != 1 etc. are checked too."""

    def init(key, input_shape):
        shape, params = layer.init(key, input_shape)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        noisy = [p + 0.5 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
        return shape, tree.unflatten(noisy)

    def state(input_shape):
        wave = lambda s: 0.5 * jax.numpy.sin(jax.numpy.arange(1, s.size + 1, dtype=s.dtype)).reshape(s.shape)  # noqa: E731
        return jax.tree.map(lambda s: s + wave(s), layer.init_state(input_shape))

    return layer._replace(init=init, init_state=state if layer.init_state else None)


def _shape(rng, lo_rank: int, hi_rank: int, hi: int = 5) -> tuple[int, ...]:
    return tuple(_i(rng, 1, hi) for _ in range(_i(rng, lo_rank, hi_rank)))


def _not_two(n: int) -> int:
    """Over exactly 2 elements a normalised value is +-sqrt(var / (var + eps)) whatever x is, so
    dx = O(eps / var) * g comes out of a cancellation (both the hand-written backward and
    jax.vjp are ~1e-11 off in float64, measured against long double): reduction sizes
    avoid 2 (1 is exact: var 0, dx 0)."""
    return 3 if n == 2 else n


def _ln_shape(rng) -> tuple[int, ...]:
    shape = _shape(rng, 1, 3, 6)
    return (*shape[:-1], _not_two(shape[-1]))


def _bn_shape(rng) -> tuple[int, ...]:
    """(B, C) as after Dense or (B, H, W, C) as after Conv2D; batch 1 included (var 0, dx 0)."""
    shape = _shape(rng, 2, 2, 6) if rng.integers(2) else _shape(rng, 4, 4, 3)
    return shape if math.prod(shape[:-1]) != 2 else (3, *shape[1:])


def _gn_sample(rng) -> tuple[Layer, tuple[int, ...]]:
    """GroupNorm with G groups on (B, [H, [W,]] G * k); no group of exactly two elements."""
    groups, per = _i(rng, 1, 3), _i(rng, 1, 3)
    spatial = tuple(_i(rng, 1, 3) for _ in range(_i(rng, 0, 2)))
    if per * math.prod(spatial) == 2:
        per = 3
    return _perturbed(GroupNorm(groups, float(rng.choice([1e-5, 1e-2])))), (
        _i(rng, 1, 3),
        *spatial,
        groups * per,
    )


def _softmax_entry(name: str, make: Callable[[int], Layer]) -> Entry:
    def sample(rng):
        shape = _shape(rng, 1, 3)
        return make(int(rng.integers(-len(shape), len(shape)))), shape

    return Entry(name, sample, lambda: (make(-1), (4, 7)))


NORM: list[Entry] = [
    Entry(
        "LayerNorm",
        lambda rng: (_perturbed(LayerNorm(float(rng.choice([1e-5, 1e-2])))), _ln_shape(rng)),
        lambda: (_perturbed(LayerNorm()), (4, 7)),
    ),
    Entry(
        "BatchNorm",
        lambda rng: (_perturbed(BatchNorm(float(rng.uniform(0.5, 0.99)))), _bn_shape(rng)),
        lambda: (_perturbed(BatchNorm()), (4, 7)),
    ),
    Entry(
        "BatchNormEval",
        lambda rng: (_perturbed(BatchNorm(float(rng.uniform(0.5, 0.99)))), _bn_shape(rng)),
        lambda: (_perturbed(BatchNorm()), (2, 3, 3, 4)),
        train=False,
    ),
    Entry("GroupNorm", _gn_sample, lambda: (_perturbed(GroupNorm(2)), (2, 3, 3, 4))),
    Entry(
        "Dropout",
        lambda rng: (Dropout(float(rng.uniform(0.1, 0.7))), _shape(rng, 1, 4)),
        lambda: (Dropout(0.5), (4, 7)),
    ),
    Entry(
        "DropoutEval",
        lambda rng: (Dropout(float(rng.uniform(0.1, 0.7))), _shape(rng, 1, 4)),
        lambda: (Dropout(0.5), (4, 7)),
        train=False,
    ),
    Entry(
        "Embedding",
        lambda rng: (_perturbed(Embedding(_i(rng, 5, 9), _i(rng, 1, 6))), _shape(rng, 1, 2)),
        lambda: (Embedding(7, 4), (4, 7)),
        make_input=integer_input(5),
    ),
    _softmax_entry("Softmax", lambda axis: Softmax(axis)),
    _softmax_entry("LogSoftmax", lambda axis: LogSoftmax(axis)),
]

# --- attention, recurrence, residual and graph combinators (layer catalogue) ---


def _odd(rng: np.random.Generator, hi: int) -> int:
    """An odd size in [1, hi]."""
    return 2 * _i(rng, 0, (hi - 1) // 2) + 1


def _attention_sample(rng):
    """Batch 1, odd time, head_dim odd (so features is odd whenever the head count is), causal or not."""
    heads = _i(rng, 1, 3)
    return MultiHeadAttention(heads, causal=bool(rng.integers(2))), (1, _odd(rng, 5), heads * _odd(rng, 3))


def _sequence_shape(rng) -> tuple[int, int, int]:
    return 1, _odd(rng, 5), _odd(rng, 5)


def _residual(features: int) -> Layer:
    return Residual(jaxbp.serial(jaxbp.Dense(features), jaxbp.Tanh()))


def _inception(a: int, b: int) -> Layer:
    return jaxbp.serial(FanOut(2), parallel(jaxbp.Dense(a), jaxbp.Dense(b)), FanInConcat())


def _sum_branches(features: int) -> Layer:
    return jaxbp.serial(FanOut(3), parallel(jaxbp.Dense(features), jaxbp.Tanh(), Identity()), FanInSum())


SEQUENCE: list[Entry] = [
    Entry("MultiHeadAttention", _attention_sample, lambda: (MultiHeadAttention(3, causal=True), (2, 5, 9))),
    Entry("RNN", lambda rng: (RNN(_i(rng, 1, 4)), _sequence_shape(rng)), lambda: (RNN(4), (2, 5, 3))),
    Entry("LSTM", lambda rng: (LSTM(_i(rng, 1, 4)), _sequence_shape(rng)), lambda: (LSTM(4), (2, 5, 3))),
    Entry(
        "Residual",
        lambda rng: (_residual(f := _odd(rng, 5)), (_i(rng, 1, 3), f)),
        lambda: (_residual(5), (4, 5)),
    ),
    Entry(
        "InceptionBranch",
        lambda rng: (_inception(_i(rng, 1, 4), _i(rng, 1, 4)), (_i(rng, 1, 3), _odd(rng, 5))),
        lambda: (_inception(3, 4), (4, 5)),
    ),
    Entry(
        "SumBranches",
        lambda rng: (_sum_branches(f := _odd(rng, 5)), (_i(rng, 1, 3), f)),
        lambda: (_sum_branches(5), (4, 5)),
    ),
]

CATALOGUE: dict[str, Entry] = {e.name: e for e in CORE + CONV + NORM + SEQUENCE}

__all__ = ["CATALOGUE", "Entry", "integer_input", "normal_input"]
