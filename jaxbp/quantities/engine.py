"""The quantities engine: one visitor of the backward walk, and the column walks of the curvature.

At every leaf the visitor runs the leaf's backward (its contract checked, as backprop does) and
the requested leaf functions of the registry (:mod:`jaxbp.quantities.registry`) on the same
``(params, res, g)``; it returns a :class:`Bundle` of them in place of the dparams, and the walk
(:func:`jaxbp.combinators.walk_backward`) assembles the Bundles into the params' structure.
Curvature walks the columns of a factor of the loss Hessian the same way, ``jax.vmap``-ed over
the column axis (a vmap of the hand-written backward, not autodiff).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxbp.combinators import walk_backward
from jaxbp.contract import backprop
from jaxbp.core import Layer, layer_name
from jaxbp.errors import JaxbpError, LayerError, at_path
from jaxbp.quantities.registry import At, Quantity


@jax.tree_util.register_pytree_node_class
class Bundle:
    """What the quantities visitor returns for a leaf in place of its dparams: a dict of trees."""

    def __init__(self, parts: dict):
        self.parts = parts

    def tree_flatten(self):
        keys = tuple(sorted(self.parts))
        return tuple(self.parts[k] for k in keys), keys

    @classmethod
    def tree_unflatten(cls, keys, children):
        return cls(dict(zip(keys, children, strict=True)))


def _is_bundle(v) -> bool:
    return isinstance(v, Bundle)


def pick(tree, part: str):
    """The tree of ``part`` from a walked tree of :class:`Bundle`\\ s (params' structure)."""
    return jax.tree.map(lambda b: b.parts[part], tree, is_leaf=_is_bundle)


def has_params(params) -> bool:
    return bool(jax.tree_util.tree_leaves(params))


def _refuse_under_rule(layer: Layer, quantities: tuple[Quantity, ...]) -> None:
    """A quantity without a meaning under backward rules, at a leaf a rule made: one clear line."""
    if layer.rule is None:
        return
    for q in quantities:
        if q.under_rules is not None:
            raise LayerError(
                f"{layer_name(layer)}: the quantity {q.name!r} is not defined under the backward rule"
                f" {layer.rule.name!r} ({q.under_rules})"
            )


def walk_parts(
    net: Layer,
    params,
    res,
    g,
    parts: dict[str, Callable],
    n: int,
    *,
    quantities: tuple[Quantity, ...] = (),
    taps: dict[str, Callable] | None = None,
    inject: dict | None = None,
    keep_grad: bool = True,
):
    """``walk_backward`` with the quantities visitor.

    Args:
      net, params, res, g: as for ``net.backward``.
      parts: ``{part: At -> value}`` read at every leaf with params (a leaf without params gets its
        empty dparams).
      n: the batch size.
      quantities: the quantities asked for (refused at leaves of a backward rule where undefined).
      taps: ``{name: At -> value}`` read at every leaf, kept by path (not in the params' structure).
      inject: ``{path: array}`` added to the dx the leaf at ``path`` hands down.
      keep_grad: also keep each leaf's dparams, as part ``"grad"``.

    Returns:
      ``(tree of Bundles in the params' structure, {tap: {path: value}})``.
    """
    tapped: dict[str, dict] = {t: {} for t in taps or {}}

    def leaf(path, layer, p, r, gg, spec):
        dparams, dx = backprop(path, layer, p, r, gg, spec)
        _refuse_under_rule(layer, quantities)
        at = At(layer, p, r, gg, dparams, n)
        out = {"grad": dparams} if keep_grad else {}
        with_params = has_params(p)
        for name, fn in parts.items():
            out[name] = fn(at) if with_params else dparams
        for name, fn in (taps or {}).items():
            tapped[name][path] = fn(at)
        if inject is not None and path in inject:
            dx = dx + inject[path]
        return Bundle(out), dx

    try:
        tree, _ = walk_backward(net, params, res, g, leaf)
    except JaxbpError as e:
        if net.walk is None and getattr(e, "path", None) is None:  # a network of one leaf: level 0
            raise at_path(e, (), layer_name(net)) from None
        raise
    return tree, tapped


def column_walks(net: Layer, params, res, S, inject, parts: dict[str, Callable], n: int, quantities):
    """Walk every column of ``S`` (K, *pred.shape) down the network: per-column Bundles, vmapped."""

    def one(col, inj):
        tree, _ = walk_parts(
            net, params, res, col, parts, n, quantities=quantities, inject=inj, keep_grad=False
        )
        return tree

    return jax.vmap(one)(S, inject)


__all__ = ["Bundle", "column_walks", "has_params", "pick", "walk_parts"]
