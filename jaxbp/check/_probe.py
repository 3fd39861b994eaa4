"""The checker's traced probe: every leaf of a network checked in place, the loss, and the whole gradient.

:func:`probe` runs under one trace. It walks the network (:func:`jaxbp.combinators.walk_forward`),
recording what reaches each leaf (its params, input, state, key and residuals) wherever it sits
(inside ``serial``, ``Residual``, ``parallel``, nested), takes the true cotangent at every leaf's
output by autodiff of everything above it, and runs each leaf's own backward against the
witnesses of :mod:`jaxbp.check._witness` (the values they need; their statistics are reduced on
the host); then the loss as one more level and the whole network's backward against autodiff.
Static facts (paths, names, leaf names, contract problems) come back beside the values in a
:class:`~jaxbp.core.Static`, so nothing is mutated while tracing. :mod:`jaxbp.check._rows` turns
the result into report rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.check._witness import cast, is_float, witness_values
from jaxbp.combinators import param_paths, walk_forward
from jaxbp.contract import contract_problems, input_spec, path_str
from jaxbp.core import Layer, Static, apply, is_combinator, layer_name
from jaxbp.errors import ContractError


class Top(NamedTuple):
    """What sits on top of the checked network.

    Attributes:
      value: ``y -> scalar``: ``<g, y>`` for a layer check, the loss for a network check.
      hand_g: ``y -> dL/dy`` by hand (the loss's backward), or None when there is no loss.
      g: the cotangent of the output when known (``check_layer``), else None.
    """

    value: Callable
    hand_g: Callable | None
    g: Any


class LevelInfo(NamedTuple):
    """Static facts about one checked level (a leaf, or the whole network for ``e2e``).

    Attributes:
      path: the level path (``"3/branch/1"``); for ``e2e`` the path of the first leaf.
      name: the layer's name.
      leaves: the checked leaves' names (``"['W']"``, ``"x"``).
      shapes: their shapes.
      size: the number of elements the computation touches (for the default tolerance).
      problem: what is wrong with the backward's structure, shapes or dtypes ("" when nothing).
      fatal: the problem prevents any comparison (wrong structure or shape).
      leaf_levels: for ``e2e``: the path of the level each checked leaf belongs to.
    """

    path: str
    name: str
    leaves: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    size: int
    problem: str = ""
    fatal: bool = False
    leaf_levels: tuple[str, ...] = ()


class ProbeInfo(NamedTuple):
    """Static facts of one probe: the levels in forward order, the loss and the end-to-end check."""

    levels: tuple[LevelInfo, ...]
    loss_size: int | None
    e2e: LevelInfo | None


class _Seen(NamedTuple):
    """What reached one leaf in the forward walk."""

    path: str
    layer: Layer
    params: Any
    x: Any
    state: Any
    key: Any
    res: Any


def oracle_apply(layer: Layer, params, x, *, state, key, train):
    """``apply`` with the layer's ``check_forward`` (when it has one) as its forward.

    The autodiff VJP of ``check_forward`` is by definition what the layer's backward computes
    (a straight-through estimator, a backward rule), so it is the oracle of that backward.
    """
    if layer.check_forward is not None:
        layer = layer._replace(forward=layer.check_forward)
    return apply(layer, params, x, state=state, key=key, train=train)


def _oracle_leaf(path, layer, params, x, *, state, key, train):
    return oracle_apply(layer, params, x, state=state, key=key, train=train)


def unit(layer: Layer) -> bool:
    """Whether the checker enters ``layer``: a combinator with a ``check_forward`` (a DFA net) is one
    level of its own, its oracle covering its whole subtree."""
    return layer.check_forward is None


def oracle_forward(net: Layer, params, x, *, state, key, train):
    """The network's output with every level's oracle forward: autodiff of it is the network's
    hand-written backward *by definition* (backprop where there is no ``check_forward``)."""
    return walk_forward(net, params, x, _oracle_leaf, state=state, key=key, train=train, into=unit)[0]


def _record(net: Layer, params, x, state, key, train) -> tuple[list[_Seen], Any]:
    """Walk the network once with the real forwards; what reached every leaf, and the output."""
    seen: list[_Seen] = []

    def leaf(path, layer, p, xx, *, state, key, train):
        y, r, s = apply(layer, p, xx, state=state, key=key, train=train)
        seen.append(_Seen(path=path_str(path), layer=layer, params=p, x=xx, state=state, key=key, res=r))
        return y, r, s

    y, _, _ = walk_forward(net, params, x, leaf, state=state, key=key, train=train, into=unit)
    return seen, y


def _cotangents(net: Layer, params, x, state, key, train, top: Top, seen: list[_Seen]) -> list:
    """The true dL/dy at every leaf's output: autodiff (through the oracles) of everything above it."""
    if not is_combinator(net) and top.g is not None:
        return [top.g]
    index = {s.path: i for i, s in enumerate(seen)}

    def value(deltas):
        def leaf(path, layer, p, xx, *, state, key, train):
            y, r, s = oracle_apply(layer, p, xx, state=state, key=key, train=train)
            return jax.tree.map(jnp.add, y, deltas[index[path_str(path)]]), r, s

        return top.value(walk_forward(net, params, x, leaf, state=state, key=key, train=train, into=unit)[0])

    zeros = [
        jax.tree.map(
            jnp.zeros_like, oracle_apply(s.layer, s.params, s.x, state=s.state, key=s.key, train=train)[0]
        )
        for s in seen
    ]
    return jax.grad(value)(zeros)


def _leaf_names(D, int_x: bool) -> tuple[str, ...]:
    names = [jax.tree_util.keystr(p) or "." for p, _ in jax.tree_util.tree_flatten_with_path(D[0])[0]]
    if not int_x:
        names += ["x" + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(D[1])[0]]
    return tuple(names)


def _hand_like(D, result) -> tuple[Any, str, bool]:
    """The backward's ``result`` shaped like ``D`` (dtype-cast), what is wrong with it (the contract's
    own check, :func:`jaxbp.contract.contract_problems`), and whether that prevents any comparison."""
    if not (isinstance(result, tuple) and len(result) == 2):
        return None, f"backward returned {type(result).__name__}, expected (dparams, dx)", True
    int_x = len(D) == 1
    problem = "; ".join(contract_problems(D[0], result[0], None if int_x else input_spec(D[1]), result[1]))
    want, got = (D, result) if not int_x else ((D[0],), (result[0],))
    same_shapes = jax.tree.structure(got) == jax.tree.structure(want) and all(
        getattr(g, "shape", None) == w.shape
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )
    if not same_shapes:
        return None, problem, True
    return jax.tree.map(lambda g, w: g.astype(w.dtype), got, want), problem, False


def _split(s: _Seen) -> tuple[Any, bool]:
    int_x = not all(is_float(a) for a in jax.tree.leaves(s.x))
    return ((s.params,) if int_x else (s.params, s.x)), int_x


def _check_leaf(s: _Seen, g, V, train: bool, fd: bool) -> tuple[dict | None, LevelInfo]:
    """One leaf's own backward at the cotangent ``g`` against vjp, dot and (float64) fd witnesses
    (``V``: the random tangent, flat).

    A leaf with a ``check_forward`` skips finite differences: they measure the true
    derivative, which such a backward (a rule, not the gradient) does not compute by design.
    """
    D, int_x = _split(s)

    def F(D):
        xx = s.x if int_x else D[1]
        return oracle_apply(s.layer, D[0], xx, state=s.state, key=s.key, train=train)[0]

    hand, problem, fatal = _hand_like(D, s.layer.backward(s.params, s.res, g))
    info = LevelInfo(
        path=s.path,
        name=layer_name(s.layer),
        leaves=_leaf_names(D, int_x),
        shapes=tuple(a.shape for a in jax.tree.leaves(D)),
        size=sum(a.size for a in jax.tree.leaves((D, g))),
        problem=problem,
        fatal=fatal,
    )
    use_fd = fd and s.layer.check_forward is None
    stats = None if fatal else witness_values(F, D, hand, g, V(_size(D)), dot=fd, fd=use_fd)
    return stats, info


def _check_loss(top: Top, y, dtype, V, fd: bool) -> tuple[dict, int]:
    """The loss as one more level: pred -> scalar, cotangent 1."""
    stats = witness_values(
        lambda D: top.value(D[0]), (y,), (top.hand_g(y),), jnp.ones((), dtype), V(_size(y)), dot=fd, fd=fd
    )
    return stats, sum(a.size for a in jax.tree.leaves(y))


def _check_e2e(net: Layer, params, x, state, lkey, train, top: Top, seen) -> tuple[dict | None, LevelInfo]:
    """The whole hand-written gradient (params and input) against autodiff of the network of oracles."""
    int_x = not all(is_float(a) for a in jax.tree.leaves(x))
    D = (params,) if int_x else (params, x)

    def F_all(D):
        xx = x if int_x else D[1]
        return oracle_forward(net, D[0], xx, state=state, key=lkey, train=train)

    y, res, _ = apply(net, params, x, state=state, key=lkey, train=train)
    g_true = jax.grad(top.value)(y)
    first = seen[0].path if seen else "0"
    info = LevelInfo(
        path=first,
        name=layer_name(net),
        leaves=_leaf_names(D, int_x),
        shapes=tuple(a.shape for a in jax.tree.leaves(D)),
        size=sum(a.size for a in jax.tree.leaves((D, y))),
        leaf_levels=tuple(param_paths(net, params, into=unit))
        + (() if int_x else (first,) * len(jax.tree.leaves(x))),
    )
    try:
        result = net.backward(params, res, top.hand_g(y) if top.hand_g is not None else g_true)
    except ContractError as e:  # a leaf broke the contract: its own row says how
        return None, info._replace(path=path_str(e.path), problem=e.detail, fatal=True)
    hand, problem, fatal = _hand_like(D, result)
    info = info._replace(problem=problem, fatal=fatal)
    return (None if fatal else witness_values(F_all, D, hand, g_true, dot=False)), info


def _size(tree) -> int:
    return sum(a.size for a in jax.tree.leaves(tree))


def _slice(pool, i: int, n: int):
    """``n`` draws of ``pool`` for level ``i``: a static slice, so no random op enters the program."""
    if pool is None:
        return None
    o = (7919 * i) % (pool.shape[0] - n + 1)
    return pool[o : o + n]


def tangent_size(net: Layer, params, x, state, lkey, *, train: bool) -> int:
    """The length of the ``pool`` that :func:`probe` needs: the largest (params, input) of any leaf,
    or the network's output (the loss level), computed abstractly."""

    def sizes(params, x, state, lkey):
        seen, y = _record(net, params, x, state, lkey, train)
        return [_split(s)[0] for s in seen] + [y]

    shapes = jax.eval_shape(sizes, params, x, state, lkey)
    return max([_size(D) for D in shapes] + [1])


def probe(net: Layer, params, x, state, lkey, *, train: bool, top: Top, pool, dtype, fd: bool) -> dict:
    """One pass in ``dtype``: every leaf's own backward in place, the loss and the whole-network gradient.

    Args:
      net: the layer or network.
      params, x, state: cast to ``dtype`` here.
      lkey: the key the network's random layers get (folded per level by the walk).
      train: the mode for stateful layers.
      top: what sits on top (see :class:`Top`).
      pool: standard normal draws (flat float64, at least :func:`tangent_size` long) for the witnesses'
        random tangents; leaf ``i`` gets a slice that starts at a place of its own. Used when ``fd``.
      dtype: the dtype of this pass.
      fd: run the dot-product and finite-difference witnesses (the float64 pass).

    Returns:
      ``{"levels": [stats or None per leaf], "loss": stats or None, "e2e": stats or None,
      "info": Static(ProbeInfo)}``.
    """
    params, x, state = cast(params, dtype), cast(x, dtype), cast(state, dtype)
    seen, y = _record(net, params, x, state, lkey, train)
    gs = _cotangents(net, params, x, state, lkey, train, top, seen)
    checked = [
        _check_leaf(s, g, functools.partial(_slice, pool, i), train, fd)
        for i, (s, g) in enumerate(zip(seen, gs, strict=True))
    ]
    out = {"levels": [c[0] for c in checked], "loss": None, "e2e": None}
    loss_size = e2e = None
    if top.hand_g is not None:
        out["loss"], loss_size = _check_loss(top, y, dtype, functools.partial(_slice, pool, len(seen)), fd)
    if is_combinator(net) or top.hand_g is not None:
        out["e2e"], e2e = _check_e2e(net, params, x, state, lkey, train, top, seen)
    out["info"] = Static(ProbeInfo(levels=tuple(c[1] for c in checked), loss_size=loss_size, e2e=e2e))
    return out
