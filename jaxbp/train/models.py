"""Model presets for ``jaxbp train``: ``mlp`` and ``cnn``, sized for the data set."""

from __future__ import annotations

import math
from collections.abc import Sequence

from jaxbp.combinators import serial
from jaxbp.core import Layer, LayerError
from jaxbp.layers.activations import Relu
from jaxbp.layers.dense import Dense
from jaxbp.layers.shape import Flatten

MODELS = ("mlp", "cnn")
NORMS = ("batch", "group")  # the cnn preset's normalisation: BatchNorm, or GroupNorm (per example: DP-SGD)

# Default widths per data set: MLP hidden widths; CNN (conv channels per block ..., dense width).
MLP_WIDTHS = {"digits": (128,), "fashion-mnist": (512, 256), "mnist": (512, 256)}
CNN_WIDTHS = {"digits": (16, 32, 64), "fashion-mnist": (32, 64, 256), "mnist": (32, 64, 256)}
DEFAULT_MLP, DEFAULT_CNN = (256, 128), (32, 64, 128)


def mlp(widths: Sequence[int], num_classes: int, dropout: float = 0.0) -> Layer:
    """Flatten -> [Dense(w) -> Relu (-> Dropout)] per width -> Dense(classes): (B, ...) -> (B, classes)."""
    layers = [Flatten()]
    for w in widths:
        layers += [Dense(w), Relu()]
        if dropout:
            from jaxbp.layers.dropout import Dropout

            layers.append(Dropout(dropout))
    return serial(*layers, Dense(num_classes))


def _norm(kind: str, channels: int) -> Layer:
    """BatchNorm (statistics synchronised across data-parallel shards) or GroupNorm of 8 groups (or fewer)."""
    if kind == "group":
        from jaxbp.layers.group_norm import GroupNorm

        return GroupNorm(math.gcd(channels, 8))
    if kind != "batch":
        raise LayerError(f"unknown normalisation {kind!r}; choose one of {', '.join(NORMS)}")
    from jaxbp.distributed import AXIS
    from jaxbp.layers.norm import BatchNorm

    return BatchNorm(axis_name=AXIS)


def cnn(widths: Sequence[int], num_classes: int, dropout: float = 0.0, norm: str = "batch") -> Layer:
    """[Conv3x3 -> MaxPool2 -> Norm -> Relu] per width -> Flatten -> Dense -> Norm -> Relu -> Dense(classes).

    ``widths = (c1, ..., ck, d)``: k convolution blocks (each halving height and width) and a
    dense hidden layer of width ``d`` with BatchNorm, Relu and, when ``dropout > 0``, Dropout.
    Pooling before normalisation gives the same function class as after (for positive BN scales)
    at a quarter of the BatchNorm cost. ``norm``: ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm,
    whose statistics stay within each example: per-example gradients, hence DP-SGD, are defined).
    Input ``(B, H, W, C)`` -> ``(B, num_classes)``.
    """
    from jaxbp.layers.conv import Conv2D
    from jaxbp.layers.dropout import Dropout
    from jaxbp.layers.pool import MaxPool

    if len(widths) < 2:
        raise LayerError(f"cnn: widths needs at least one conv width and a dense width, got {tuple(widths)}")
    *channels, hidden = widths
    layers: list[Layer] = []
    for c in channels:
        layers += [Conv2D(c, (3, 3), use_bias=False), MaxPool((2, 2)), _norm(norm, c), Relu()]
    layers += [Flatten(), Dense(hidden, use_bias=False), _norm(norm, hidden), Relu()]
    if dropout:
        layers.append(Dropout(dropout))
    return serial(*layers, Dense(num_classes))


def build_model(
    name: str,
    dataset: str,
    num_classes: int,
    widths: Sequence[int] | None = None,
    dropout: float = 0.0,
    norm: str = "batch",
) -> Layer:
    """The preset ``name`` ("mlp" or "cnn") for ``dataset``, with default or custom ``widths``."""
    if name == "mlp":
        return mlp(widths or MLP_WIDTHS.get(dataset, DEFAULT_MLP), num_classes, dropout)
    if name == "cnn":
        return cnn(widths or CNN_WIDTHS.get(dataset, DEFAULT_CNN), num_classes, dropout, norm)
    raise LayerError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
