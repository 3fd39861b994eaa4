"""What every backward rule shares: level paths as strings, the leaves a rule acts on, its description.

A rule net carries its description in ``extras["rule"]`` (a function returning a :class:`RuleSpec`),
so :func:`~jaxbp.rules.alignment`, :func:`~jaxbp.rules.feedback_like` and
:func:`~jaxbp.rules.check_rule` can find the network it was made from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.combinators import walk_forward
from jaxbp.core import Array, Layer, Params, Shape, apply, init_state
from jaxbp.errors import UsageError

Path = tuple[str, ...]


def path_str(path: Path) -> str:
    """``("3", "branch", "1")`` -> ``"3/branch/1"``; the network's own root is ``"."``."""
    return "/".join(path) or "."


def sub_feedback(feedback: dict, seg: str) -> dict:
    """The entries of ``feedback`` below segment ``seg``, keyed by their path relative to it."""
    pre = seg + "/"
    return {
        ("." if k == seg else k[len(pre) :]): v for k, v in feedback.items() if k == seg or k.startswith(pre)
    }


def has_feedback(layer: Layer) -> bool:
    """True for a weight level a feedback rule acts on: a leaf whose constructor defines the variant."""
    return layer.walk is None and "feedback_backward" in layer.extras


class LeafInfo(NamedTuple):
    """A leaf of a network as the forward walk meets it (bottom first)."""

    path: Path
    layer: Layer
    x_shape: Any  # the leaf's input shape (a tuple of shapes for fan-in leaves)
    y_shape: Any


def leaves(net: Layer, input_shape: Shape, dtype=jnp.float32) -> list[LeafInfo]:
    """Every leaf of ``net`` with its path and input/output shapes, in forward order (no FLOPs)."""
    found: list[LeafInfo] = []

    def run(key):
        _, params = net.init(key, tuple(input_shape))

        def leaf(path, layer, p, x, *, state, key, train):
            y, r, s = apply(layer, p, x, state=state, key=key, train=train)
            shape = jax.tree.map(lambda a: tuple(a.shape), (x, y))
            found.append(LeafInfo(path=path, layer=layer, x_shape=shape[0], y_shape=shape[1]))
            return y, r, s

        x = jnp.zeros(tuple(input_shape), dtype)
        walk_forward(net, params, x, leaf, state=init_state(net, input_shape), key=key, train=False)

    jax.eval_shape(run, jax.random.PRNGKey(0))
    return found


def at_path(net: Layer, params: Params, path: Path) -> tuple[Layer, Params]:
    """The level at ``path`` and its params (serial and parallel: entry ``seg``; residual: the branch)."""
    for seg in path:
        if net.kind in ("serial", "parallel"):
            net, params = net.layers[int(seg)], params[int(seg)]
        elif net.kind == "residual":
            net = net.layers[0]
        else:
            raise UsageError(
                f"cannot find the params of path {path_str(path)} inside a {net.kind!r} combinator"
            )
    return net, params


def draw_weight(layer: Layer, key: Array, x_shape: Shape) -> Array:
    """A fresh sample of the weight that feedback stands in for, from the layer's own initialiser."""
    return layer.extras["feedback_weight"](layer.init(key, tuple(x_shape))[1])


class RuleSpec(NamedTuple):
    """What a rule net is.

    Attributes:
      name: "fa", "usf", "frsf", "brsf" or "dfa".
      net: the network the rule was made from (same init, params and forward).
      key: the key the feedback is drawn from (by ``init_state``).
      backward_leaf: ``(g_top) -> leaf`` for :func:`~jaxbp.combinators.walk_backward` over the rule
        net (FA, sign symmetry) or over ``net`` (DFA): the rule's backward as the walk runs it.
      walk_net: the network that ``backward_leaf``'s walk runs over.
    """

    name: str
    net: Layer
    key: Array
    backward_leaf: Callable
    walk_net: Layer


def rule_spec(layer: Layer) -> RuleSpec | None:
    """The :class:`RuleSpec` of a rule net, None for any other network (plain backprop)."""
    get = layer.extras.get("rule")
    return get() if get is not None else None


def as_key(key: Array | int) -> Array:
    """A PRNG key from a key or an int seed."""
    return jax.random.PRNGKey(key) if isinstance(key, int) else key
