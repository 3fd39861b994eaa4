"""The quantities engine: one forward, the hand-written backward walk, and each leaf's extras.

First-order quantities come from the walk of the gradient itself: at every leaf the visitor calls
the layer's backward and the requested extras on the same ``(params, res, g)``. Curvature comes
from a second walk of the columns of the loss Hessian's square root, ``jax.vmap``-ed over the
column axis (a vmap of the hand-written backward). Each leaf's visitor hands its real dparams back
to the walk (the combinators check every level's contract) and keeps a :class:`Bundle` of its
quantities beside it; :func:`walk_bundles` assembles those into the params' tree structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbp.combinators import walk_backward
from jaxbp.core import Layer, Loss, apply, layer_name
from jaxbp.errors import LayerError, UsageError
from jaxbp.quantities.extras import Kron, squared_norms, sum_squares

FIRST_ORDER = ("batch_grad", "batch_l2", "sum_grad_squared", "variance")
SECOND_ORDER = ("diag_ggn", "diag_ggn_mc", "kfac", "kflr", "diag_hessian")
NAMES = FIRST_ORDER + SECOND_ORDER


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


def walk_bundles(net: Layer, params, res, g, leaf) -> tuple[Any, Any]:
    """``walk_backward`` with a visitor ``leaf -> (dparams, dx, Bundle)``; returns (tree of Bundles, dx).

    The Bundles are kept beside the walk by path and placed where the leaves' params sit.
    """
    bundles: dict = {}

    def visit(path, layer, p, r, gg):
        dparams, dx, bundles[path] = leaf(path, layer, p, r, gg)
        return dparams, dx

    _, dx = walk_backward(net, params, res, g, visit)
    return assemble(net, bundles), dx


def assemble(net: Layer, values: dict, path: tuple[str, ...] = ()):
    """The params-shaped tree of per-leaf ``values`` (by path): combinators by their explicit kind."""
    if net.walk is None:
        return values[path]
    if net.kind == "residual":  # the branch's params are the residual's params
        return assemble(net.layers[0], values, (*path, "branch"))
    if net.kind in ("serial", "parallel"):  # one params entry per level / branch
        return tuple(assemble(c, values, (*path, str(i))) for i, c in enumerate(net.layers))
    raise UsageError(f"quantities: {where(path, net)} is a combinator of unknown kind {net.kind!r}")


def where(path: tuple[str, ...], layer: Layer) -> str:
    """``level 3/branch/1 (Dense(4))``: the path of a leaf and its name, for messages."""
    return f"level {'/'.join(path) or '(the network itself)'} ({layer_name(layer)})"


def extra(path, layer: Layer, key: str, quantity: str) -> Callable:
    """The leaf's extra ``key``, or a LayerError naming the level, the layer and the quantity."""
    fn = layer.extras.get(key)
    if fn is None:
        raise LayerError(
            f"{where(path, layer)}: does not support the quantity {quantity!r}"
            f" (the layer has no hand-written extras[{key!r}])"
        )
    return fn


def has_params(params) -> bool:
    return bool(jax.tree_util.tree_leaves(params))


def first_order_leaf(names: tuple[str, ...], n: int, collect: dict | None, kron: str | None = None):
    """The visitor of the gradient walk: backward plus the first-order extras of each leaf.

    With ``kron`` (the quantity's name), each parameterised leaf also gives the input factors ``A``
    of its ``"kfac"`` extra, as part ``"kronA"`` (once here, not once per curvature column).
    """

    def leaf(path, layer, params, res, g):
        dparams, dx = layer.backward(params, res, g)
        parts: dict[str, Any] = {"grad": dparams}
        if kron is not None:
            parts["kronA"] = (
                jax.tree.map(
                    lambda k: Kron(k.A, None),
                    extra(path, layer, "kfac", kron)(params, res, g),
                    is_leaf=_is_kron,
                )
                if has_params(params)
                else dparams
            )
        if collect is not None:  # diag_hessian: the second-derivative residual wrt this leaf's input
            collect[path] = extra(path, layer, "diag_hessian", "diag_hessian")(params, res, g)
        if not has_params(params) or not names:
            return dparams, dx, Bundle(parts | {k: dparams for k in names})
        bg = None
        if "batch_grad" in names or any(extra_missing(layer, k) for k in names if k != "batch_grad"):
            bg = extra(path, layer, "batch_grad", names[0])(params, res, g)
        for k in names:
            if k == "batch_grad":
                parts[k] = bg
            elif k == "batch_l2":
                fn = layer.extras.get("batch_l2")
                parts[k] = fn(params, res, g) if fn else squared_norms(bg)
            else:  # sum_grad_squared, variance
                fn = layer.extras.get("sum_grad_squared")
                sgs = fn(params, res, g) if fn else sum_squares(bg)
                if k == "variance":  # BackPACK: mean of squares minus square of mean of batch_grad
                    parts[k] = jax.tree.map(lambda s, d: s / n - (d / n) ** 2, sgs, dparams)
                else:
                    parts[k] = sgs
        return dparams, dx, Bundle(parts)

    return leaf


def extra_missing(layer: Layer, name: str) -> bool:
    """Whether first-order ``name`` must be derived from ``batch_grad`` at this leaf."""
    key = {"batch_l2": "batch_l2", "sum_grad_squared": "sum_grad_squared", "variance": "sum_grad_squared"}
    return key[name] not in layer.extras


def curvature_leaf(diag: bool, kron: bool, inject: dict | None, quantity: str):
    """The visitor of one column's walk: per-leaf sum of squared per-example grads and/or Kron factors.

    ``inject`` maps a leaf's path to this column's extra cotangent at the leaf's input (the
    residual columns of diag_hessian), added to the dx the leaf hands down.
    """

    def leaf(path, layer, params, res, g):
        dparams, dx = layer.backward(params, res, g)
        parts: dict[str, Any] = {}
        if has_params(params):
            if diag:
                fn = layer.extras.get("sum_grad_squared")
                parts["diag"] = (
                    fn(params, res, g)
                    if fn
                    else sum_squares(extra(path, layer, "batch_grad", quantity)(params, res, g))
                )
            if kron:  # G only: the input factors A come from the gradient walk
                factors = extra(path, layer, "kfac", quantity)(params, res, g)
                parts["kron"] = jax.tree.map(lambda k: Kron(None, k.G), factors, is_leaf=_is_kron)
        else:
            if diag:
                parts["diag"] = dparams
            if kron:
                parts["kron"] = dparams
        if inject is not None and path in inject:
            dx = dx + inject[path]
        return dparams, dx, Bundle(parts)

    return leaf


def _is_kron(v) -> bool:
    return isinstance(v, Kron)


def reduce_kron(tree):
    """Sum the G factors over the column axis."""
    return jax.tree.map(lambda k: Kron(None, k.G.sum(0)), tree, is_leaf=_is_kron)


def join_kron(a_tree, g_tree):
    """Kron(A, _) from the gradient walk and Kron(_, G) from the columns -> (A, G), or (G,) for a bias."""
    return jax.tree.map(lambda a, g: (g.G,) if a.A is None else (a.A, g.G), a_tree, g_tree, is_leaf=_is_kron)


def curvature_walk(net, params, res, S, *, diag, kron, quantity, weights=None, inject=None):
    """Walk every column of ``S`` (K, *pred.shape) down the network; returns (diag, kron) trees."""

    def one(col, inj):
        tree, _ = walk_bundles(net, params, res, col, curvature_leaf(diag, kron, inj, quantity))
        return tree

    trees = jax.vmap(one)(S, inject)
    d = k = None
    if diag:
        w = jnp.ones(S.shape[0], S.dtype) if weights is None else weights
        d = jax.tree.map(lambda a: jnp.tensordot(w, a, 1), pick(trees, "diag"))
    if kron:
        k = reduce_kron(pick(trees, "kron"))
    return d, k


def loss_sqrt(loss: Loss, which: str, quantity: str) -> Callable:
    fn = loss.extras.get(which)
    if fn is None:
        raise LayerError(
            f"loss {loss.name or 'loss'}: does not support the quantity {quantity!r}"
            f" (no hand-written extras[{which!r}])"
        )
    return fn


def check_names(names) -> tuple[str, ...]:
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise UsageError(f"value_grad_and: unknown quantities {unknown}; choose from {', '.join(NAMES)}")
    return tuple(dict.fromkeys(names))


__all__ = [
    "FIRST_ORDER",
    "NAMES",
    "SECOND_ORDER",
    "Bundle",
    "apply",
    "curvature_walk",
    "pick",
    "walk_bundles",
]
