"""The benchmark's models: each a network, a loss, an input shape and a target maker.

Models whose layers are not (yet) in the library raise :class:`ModelUnavailableError`,
which the benchmark reports as a skipped row instead of failing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import jax

from jaxbp.combinators import serial
from jaxbp.core import Array, Layer, Loss, Shape
from jaxbp.layers.activations import Gelu, Relu
from jaxbp.layers.dense import Dense
from jaxbp.losses import MeanSquaredError, SoftmaxCrossEntropy


class ModelUnavailableError(RuntimeError):
    """A benchmark model needs a layer the library does not provide (yet)."""


class Model(NamedTuple):
    """One benchmark model.

    Attributes:
      name: the row name, e.g. "mlp_large".
      net: the network.
      loss: the loss on its output.
      x_shape: the input batch shape.
      make_target: ``(key, output_shape) -> target``.
      description: a short human description (sizes).
      dense_sizes: the layer widths for MLPs (used for the FLOP count), else ``()``.
      widths: the ``cnn`` preset's widths (conv channels ..., dense) for CNNs, else ``()``.
    """

    name: str
    net: Layer
    loss: Loss
    x_shape: Shape
    make_target: Callable[[Array, Shape], Array]
    description: str
    dense_sizes: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()


def class_labels(key: Array, out_shape: Shape) -> Array:
    """Integer labels for a classifier with output ``(..., C)``."""
    return jax.random.randint(key, out_shape[:-1], 0, out_shape[-1])


def regression_target(key: Array, out_shape: Shape) -> Array:
    """A standard normal target of the output's shape."""
    return jax.random.normal(key, out_shape, jax.numpy.float32)


def _need(module: str, *names: str):
    """Import ``names`` from ``module`` or raise :class:`ModelUnavailableError` naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ModelUnavailableError(f"{module} is not available ({e})") from e
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise ModelUnavailableError(f"{module} has no {', '.join(missing)}")
    return [getattr(mod, n) for n in names]


def mlp(name: str, sizes: tuple[int, ...], batch: int) -> Model:
    """A Dense/Relu MLP with ``sizes = (in, hidden..., classes)`` and softmax cross-entropy."""
    levels: list[Layer] = []
    for width in sizes[1:-1]:
        levels += [Dense(width), Relu()]
    net = serial(*levels, Dense(sizes[-1]))
    desc = "MLP " + "-".join(map(str, sizes)) + f", batch {batch}"
    return Model(name, net, SoftmaxCrossEntropy(), (batch, sizes[0]), class_labels, desc, tuple(sizes))


def cnn(name: str, batch: int, side: int = 28, widths: tuple[int, ...] | None = None) -> Model:
    """The ``cnn`` preset of :mod:`jaxbp.train.models` on ``side x side x 1``, 10 classes."""
    build_model, cnn_widths = _need("jaxbp.train.models", "build_model", "CNN_WIDTHS")
    widths = tuple(widths or cnn_widths["fashion-mnist"])
    net = build_model("cnn", "fashion-mnist", 10, widths)
    desc = f"CNN preset {widths}, {side}x{side}x1, batch {batch}"
    return Model(name, net, SoftmaxCrossEntropy(), (batch, side, side, 1), class_labels, desc, widths=widths)


def transformer(name: str, shape: Shape, heads: int = 4) -> Model:
    """A pre-LayerNorm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)), MSE on its output."""
    (LayerNorm,) = _need("jaxbp.layers.norm", "LayerNorm")
    (MultiHeadAttention,) = _need("jaxbp.layers.attention", "MultiHeadAttention")
    (Residual,) = _need("jaxbp.combinators", "Residual")
    F = shape[-1]
    net = serial(
        Residual(serial(LayerNorm(), MultiHeadAttention(heads))),
        Residual(serial(LayerNorm(), Dense(4 * F), Gelu(), Dense(F))),
    )
    desc = f"transformer block {shape}, {heads} heads, MLP x4"
    return Model(name, net, MeanSquaredError(), tuple(shape), regression_target, desc)


def lstm(name: str, shape: Shape) -> Model:
    """An LSTM over ``(batch, time, features)`` with hidden size ``features``, MSE on its outputs."""
    (LSTM,) = _need("jaxbp.layers.recurrent", "LSTM")
    net = serial(LSTM(shape[-1]))
    desc = f"LSTM {shape}, hidden {shape[-1]}"
    return Model(name, net, MeanSquaredError(), tuple(shape), regression_target, desc)


MODELS: dict[str, Callable[[bool], Model]] = {
    "mlp_large": lambda q: (
        mlp("mlp_large", (48, 32, 32, 10), 8) if q else mlp("mlp_large", (784, 1024, 1024, 10), 512)
    ),
    "mlp_small": lambda q: mlp("mlp_small", (16, 24, 10) if q else (64, 128, 10), 8 if q else 32),
    "cnn": lambda q: cnn("cnn", 4, 12, (4, 8)) if q else cnn("cnn", 128, 28),
    "transformer": lambda q: transformer("transformer", (2, 8, 16) if q else (32, 64, 128)),
    "lstm": lambda q: lstm("lstm", (2, 5, 8) if q else (32, 50, 64)),
}


def build(name: str, quick: bool = False) -> Model:
    """The model ``name`` (tiny sizes when ``quick``); raises :class:`ModelUnavailableError`."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](quick)
