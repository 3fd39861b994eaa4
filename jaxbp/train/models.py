"""Model presets for ``jaxbp train``: ``mlp`` and ``cnn``, sized for the data set; or the user's own
network, ``--model module:factory``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

from jaxbp.combinators import serial
from jaxbp.core import Layer, LayerError
from jaxbp.errors import UsageError
from jaxbp.layers.activations import Relu, Tanh
from jaxbp.layers.dense import Dense
from jaxbp.layers.shape import Flatten

MODELS = ("mlp", "cnn")
ACTIVATIONS: dict[str, Callable[[], Layer]] = {"relu": Relu, "tanh": Tanh}  # --activation
NORMS = ("batch", "group")  # the cnn preset's normalisation: BatchNorm, or GroupNorm (per example: DP-SGD)

# Default widths per data set: MLP hidden widths; CNN (conv channels per block ..., dense width).
MLP_WIDTHS = {"digits": (128,), "fashion-mnist": (512, 256), "mnist": (512, 256)}
CNN_WIDTHS = {"digits": (16, 32, 64), "fashion-mnist": (32, 64, 256), "mnist": (32, 64, 256)}
DEFAULT_MLP, DEFAULT_CNN = (256, 128), (32, 64, 128)


def mlp(widths: Sequence[int], num_classes: int, dropout: float = 0.0, activation: str = "relu") -> Layer:
    """Flatten -> [Dense(w) -> Relu (-> Dropout)] per width -> Dense(classes): (B, ...) -> (B, classes).

    ``activation``: a name in :data:`ACTIVATIONS` (``"tanh"``: the MLP of docs/rules.md's table).
    """
    layers = [Flatten()]
    for w in widths:
        layers += [Dense(w), ACTIVATIONS[activation]()]
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


def cnn(
    widths: Sequence[int],
    num_classes: int,
    dropout: float = 0.0,
    activation: str = "relu",
    norm: str = "batch",
) -> Layer:
    """[Conv3x3 -> MaxPool2 -> Norm -> Relu] per width -> Flatten -> Dense -> Norm -> Relu -> Dense(classes).

    ``widths = (c1, ..., ck, d)``: k convolution blocks (each halving height and width) and a
    dense hidden layer of width ``d`` with the normalisation, Relu and, when ``dropout > 0``, Dropout.
    Pooling before normalisation gives the same function class as after (for positive BN scales)
    at a quarter of the BatchNorm cost. ``norm``: ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm,
    whose statistics stay within each example: per-example gradients, hence DP-SGD, are defined).
    Input ``(B, H, W, C)`` -> ``(B, num_classes)``. ``activation`` replaces Relu (see :func:`mlp`).
    """
    from jaxbp.layers.conv import Conv2D
    from jaxbp.layers.dropout import Dropout
    from jaxbp.layers.pool import MaxPool

    if len(widths) < 2:
        raise LayerError(f"cnn: widths needs at least one conv width and a dense width, got {tuple(widths)}")
    *channels, hidden = widths
    layers: list[Layer] = []
    for c in channels:
        layers += [
            Conv2D(c, (3, 3), use_bias=False),
            MaxPool((2, 2)),
            _norm(norm, c),
            ACTIVATIONS[activation](),
        ]
    layers += [Flatten(), Dense(hidden, use_bias=False), _norm(norm, hidden), ACTIVATIONS[activation]()]
    if dropout:
        layers.append(Dropout(dropout))
    return serial(*layers, Dense(num_classes))


def preset_widths(name: str, dataset: str) -> tuple[int, ...]:
    """The widths the preset ``name`` uses for ``dataset`` when ``--widths`` is not given."""
    if name == "mlp":
        return MLP_WIDTHS.get(dataset, DEFAULT_MLP)
    return CNN_WIDTHS.get(dataset, DEFAULT_CNN)


def build_model(
    name: str,
    dataset: str,
    num_classes: int,
    widths: Sequence[int] | None = None,
    dropout: float = 0.0,
    activation: str = "relu",
    norm: str = "batch",
) -> Layer:
    """The preset ``name`` ("mlp" or "cnn") for ``dataset``, with default or custom ``widths``; or,
    for ``name = "module:factory"``, the network the user's factory returns (:func:`load_factory`)."""
    if name in MODELS:
        if name == "mlp":
            return mlp(widths or preset_widths(name, dataset), num_classes, dropout, activation)
        return cnn(widths or preset_widths(name, dataset), num_classes, dropout, activation, norm)
    if ":" in name:
        return load_factory(name)
    raise LayerError(f"unknown model {name!r}; choose one of {', '.join(MODELS)} or module:factory")


def model_spec(text: str) -> str:
    """An argparse ``type`` for ``--model``: a preset name or ``module:factory`` (imported later)."""
    module, colon, factory = text.partition(":")
    if text in MODELS or (colon and module and factory.isidentifier()):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(MODELS)}, or MODULE:FACTORY for your own network)"
    )


def load_factory(spec: str, flag: str = "--model") -> Layer:
    """The network ``factory()`` returns, for ``spec = "module:factory"`` (the spelling of ``jaxbp check``).

    ``module`` is a module name importable from the current directory, or a ``.py`` path. The
    factory takes no arguments and returns a :class:`~jaxbp.core.Layer`, or ``(layer, input_shape)``
    as for ``jaxbp check`` (the shape is then ignored: the data set decides it).

    Raises:
      UsageError: the module cannot be imported, has no such factory, or the factory raises or
        returns something else, each in one line.
    """
    from jaxbp.cli import import_object

    factory = import_object(spec, flag)
    if not callable(factory):
        raise UsageError(f"{flag} {spec}: {type(factory).__name__} is not callable")
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001  (a user's factory may raise anything)
        raise UsageError(f"{flag} {spec}: {spec}() raised {type(e).__name__}: {e}") from e
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], Layer):
        made = made[0]
    if not isinstance(made, Layer):
        raise UsageError(f"{flag} {spec}: {spec}() returned {type(made).__name__}, expected a jaxbp Layer")
    return made
