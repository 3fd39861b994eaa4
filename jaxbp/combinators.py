"""Combinators: networks built from layers are layers themselves.

``serial`` chains levels; skip connections, fan-out, parallel branches and fan-in.

Non-sequential networks are written as ``serial`` chains whose intermediate values
are tuples of arrays, in the style of stax::

    inception = serial(FanOut(2), parallel(Dense(3), Dense(4)), FanInConcat())
    block = Residual(serial(LayerNorm(), MultiHeadAttention(4)))

The fork rule: a value used by several branches receives the **sum** of the
branches' cotangents (``FanOut`` backward, the ``g +`` in ``Residual`` backward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.contract import Path, backprop, input_spec, path_str
from jaxbp.core import (
    LINEAR,
    Layer,
    Static,
    Walk,
    apply,
    init_state,
    is_stateful,
    layer_name,
    output_shape,
)
from jaxbp.errors import JaxbpError, LayerError, at_path


@contextlib.contextmanager
def at_level(index: int | str, layer: Layer, kind: str = "level", seg: str | None = None) -> Iterator[None]:
    """Locate errors raised inside a level (or branch) at its path segment, naming its layer.

    A :class:`~jaxbp.errors.JaxbpError` gets the segment (``seg``, default ``str(index)``) prepended to
    its level path (the innermost layer's name is kept), so an error from deep inside nested networks
    reads ``level 3/branch/1 (Dense(4)): ...``, once; a ``ValueError`` or ``TypeError`` from a user's
    layer becomes a located :class:`~jaxbp.errors.LayerError`. ``kind`` is kept for compatibility.
    """
    seg = str(index) if seg is None else seg
    try:
        yield
    except JaxbpError as e:
        raise at_path(e, (seg,), layer_name(layer)) from e.__cause__
    except (ValueError, TypeError) as e:
        raise at_path(LayerError(str(e)), (seg,), layer_name(layer)) from e


def at_branch(index: int, layer: Layer, seg: str | None = None):
    """:func:`at_level` for a branch (kept for compatibility: both locate by path)."""
    return at_level(index, layer, seg=seg)


def _check_children(kind: str, layers) -> tuple[Layer, ...]:
    """Refuse anything but Layers as children, naming the position."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            what = getattr(layer, "__name__", None) or type(layer).__name__
            raise LayerError(
                f"{kind}: argument {i} is {what!s:.60} ({type(layer).__name__}), not a Layer; build layers"
                " with their constructors (jaxbp.Dense(4)) or jaxbp.Layer(init, forward, backward)"
            )
    return tuple(layers)


def _check_levels(name: str, layers: tuple[Layer, ...], params, what: str = "params") -> None:
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
        hint = (
            "no state: pass state=jaxbp.init_state(net, input_shape)"
            if what == "state" and params == ()
            else f"{what} from another network?"
        )
        raise LayerError(f"{name}: a network of {len(layers)} levels got {what} with {got} ({hint})")


def _forward_child(seg: str, child: Layer, params, x, *, state, key, train):
    return apply(child, params, x, state=state, key=key, train=train)


def _backward_child(seg: str, child: Layer, params, res, g, spec):
    return backprop((), child, params, res, g, spec)


def combinator(kind: str, name: str, layers: tuple[Layer, ...], init, walk: Walk, state_init) -> Layer:
    """A combinator's Layer from its :class:`~jaxbp.core.Walk`: forward and backward are the walk with
    the default visitors (call the child; check its contract).

    Args:
      kind: what it is (descriptive: ``"serial"``, ``"parallel"``, ``"residual"``, ...).
      name: shown in messages.
      layers: its children.
      init: ``(key, input_shape) -> (output_shape, params)``.
      walk: how it runs its children.
      state_init: ``input_shape -> state`` when stateful (its forward then takes state, key, train).
    """

    def backward(params, res, g):
        return walk.backward(_backward_child, params, res, g)

    if state_init is None:

        def forward(params, x):
            y, res, _ = walk.forward(_forward_child, params, x, state=(), key=None, train=False)
            return y, res

    else:

        def forward(params, x, *, state, key, train):
            return walk.forward(_forward_child, params, x, state=state, key=key, train=train)

    return Layer(init, forward, backward, state_init, name=name, layers=layers, kind=kind, walk=walk)


def mirror(net: Layer, leaf, path: Path = ()) -> Layer:
    """``net`` with each leaf replaced by ``leaf(path, layer)``, built as the walk meets it.

    Combinators keep their walk, params and init; their children are mirrored when visited, so a
    leaf's replacement may close over values of that very call (a backward rule's feedback, the
    output's cotangent). Every mirrored combinator is stateful (its state is the original's), so
    keys and the mode reach the replaced leaves. A leaf itself is replaced directly.
    """
    if net.walk is None:
        return leaf(path, net)

    def wrap(visit):
        return lambda seg, child, *args, **kw: visit(seg, mirror(child, leaf, (*path, seg)), *args, **kw)

    walk = Walk(
        forward=lambda visit, *args, **kw: net.walk.forward(wrap(visit), *args, **kw),
        backward=lambda visit, *args: net.walk.backward(wrap(visit), *args),
        params=lambda visit, params: net.walk.params(wrap(visit), params),
    )
    return combinator(net.kind, net.name, net.layers, net.init, walk, lambda shape: init_state(net, shape))


def leaf_layers(net: Layer) -> tuple[Layer, ...]:
    """Every leaf of ``net`` (structurally: no params or input needed), in the order of its children."""
    return (net,) if net.walk is None else tuple(leaf for child in net.layers for leaf in leaf_layers(child))


def _descends(net: Layer, into: Callable[[Layer], bool] | None) -> bool:
    return net.walk is not None and (into is None or into(net))


def walk_backward(net: Layer, params, res, g, leaf, path: Path = (), spec=None, *, into=None):
    """The one backward walk: ``net``'s backward with every leaf visited by ``leaf``.

    Args:
      net: any layer; combinators are entered recursively through their :class:`~jaxbp.core.Walk`.
      params, res, g: as for ``net.backward``.
      leaf: ``(path, layer, params, res, g, spec) -> (out, dx)`` for each leaf, top level first;
        ``path`` is a tuple of segments such as ``("3", "branch", "1")``, ``spec`` the recorded
        structure, shapes and dtypes of the leaf's input (for the contract check). ``out`` is
        anything: the walk assembles the outs into the params' structure.
        :func:`jaxbp.contract.backprop` is the default (dparams, checked).
      path: the path of ``net`` itself.
      spec: the input spec of ``net`` itself, when known.
      into: ``layer -> bool``: enter only the combinators it accepts (the others are visited whole).

    Returns:
      ``(outs, dx)``; with ``leaf=backprop``, ``(dparams, dx)`` as from ``net.backward``.
    """
    if not _descends(net, into):
        return leaf(path, net, params, res, g, spec)

    def visit(seg, child, p, r, gg, sp):
        return walk_backward(child, p, r, gg, leaf, (*path, seg), sp, into=into)

    return net.walk.backward(visit, params, res, g)


def walk_forward(
    net: Layer, params, x, leaf, *, state=(), key=None, train: bool = False, path: Path = (), into=None
):
    """The one forward walk: ``apply(net, ...)`` with every leaf's forward replaced by ``leaf``.

    Keys are folded by the combinators exactly as their own forward does, so a visitor that calls
    :func:`~jaxbp.core.apply` reproduces the network bit for bit.

    Args:
      net: any layer.
      params, x: as for ``net.forward``.
      leaf: ``(path, layer, params, x, *, state, key, train) -> (y, res, new_state)`` for each leaf,
        bottom level first.
      state, key, train: as for :func:`~jaxbp.core.apply`.
      path: the path of ``net`` itself.
      into: ``layer -> bool``: enter only the combinators it accepts (the others are visited whole).

    Returns:
      ``(y, res, new_state)``.
    """
    if not _descends(net, into):
        return leaf(path, net, params, x, state=state, key=key, train=train)

    def visit(seg, child, p, xx, *, state, key, train):
        return walk_forward(
            child, p, xx, leaf, state=state, key=key, train=train, path=(*path, seg), into=into
        )

    return net.walk.forward(visit, params, x, state=state, key=key, train=train)


def walk_params(net: Layer, params, leaf, path: Path = (), *, into=None):
    """The params walk: ``leaf(path, layer, params)`` for every leaf, assembled into the params' structure.

    Needs no input: it answers which level owns a parameter (:func:`param_paths`), where a level's
    params sit, which leaves have a feedback hook.

    Args:
      net: any layer.
      params: its params (arrays, abstract values, or anything of the params' structure).
      leaf: ``(path, layer, params) -> out`` for each leaf, in the order of the params.
      path: the path of ``net`` itself.
      into: ``layer -> bool``: enter only the combinators it accepts.
    """
    if not _descends(net, into):
        return leaf(path, net, params)
    return net.walk.params(lambda seg, child, p: walk_params(child, p, leaf, (*path, seg), into=into), params)


class _Owner:
    """Which level owns a params leaf, and the leaf's key below that level (a plain object: a pytree leaf)."""

    __slots__ = ("key", "level")

    def __init__(self, level: str, key: str):
        self.level, self.key = level, key


def param_owners(net: Layer, params, *, into=None) -> list[tuple[str, str]]:
    """For each leaf of ``params`` (``jax.tree.leaves`` order): ``(level path, key below the level)``,
    e.g. ``("3/branch/1", "['W']")``. The params walk answers it; nothing is guessed."""

    def leaf(path, layer, p):
        level = path_str(path)
        return jax.tree_util.tree_map_with_path(lambda kp, _: _Owner(level, jax.tree_util.keystr(kp)), p)

    return [(o.level, o.key) for o in jax.tree.leaves(walk_params(net, params, leaf, into=into))]


def param_paths(net: Layer, params, *, into=None) -> list[str]:
    """The level path owning each leaf of ``params``, in ``jax.tree.leaves(params)`` order."""
    return [level for level, _ in param_owners(net, params, into=into)]


def path_order(path: str) -> tuple:
    """Sort key of a level path: segments compared as numbers where they are numbers (``"10"`` after ``"9"``).

    For ``serial``, ``parallel`` and ``Residual`` this is the order in which the forward visits the leaves.
    """
    return tuple((0, int(seg), "") if seg.isdigit() else (1, 0, seg) for seg in path.split("/"))


class LeafInfo(NamedTuple):
    """A leaf of a network as the forward walk meets it (bottom first).

    Attributes:
      path: the level path (``"3/branch/1"``; ``"0"`` for a network that is one layer).
      layer: the leaf.
      x: the leaf's input, abstract (``jax.ShapeDtypeStruct``, a tuple of them for fan-ins).
      y: its output, abstract.
    """

    path: str
    layer: Layer
    x: Any
    y: Any

    @property
    def x_shape(self):
        """The input's shape (a tuple of shapes for a tuple input)."""
        return jax.tree.map(lambda a: tuple(a.shape), self.x)


def _is_shape(s) -> bool:
    return isinstance(s, (tuple, list)) and all(isinstance(i, int) for i in s)


def leaves(net: Layer, input_shape, dtype=jnp.float32, *, into=None) -> list[LeafInfo]:
    """Every leaf of ``net`` with its level path and abstract input and output, in forward order.

    Runs :func:`walk_forward` abstractly (``jax.eval_shape``): nothing is computed or allocated.

    Args:
      net: any network a user can build.
      input_shape: the input shape (a tuple of shapes for a tuple input).
      dtype: the input's dtype (an integer dtype for token ids).
      into: as for :func:`walk_forward`.
    """
    found: list[LeafInfo] = []

    def record(path, layer, params, x, *, state, key, train):
        y, r, s = apply(layer, params, x, state=state, key=key, train=train)
        spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), (x, y))
        found.append(LeafInfo(path_str(path), layer, *spec))
        return y, r, s

    def run(key):
        x = jax.tree.map(lambda s: jnp.zeros(s, dtype), input_shape, is_leaf=_is_shape)
        params = net.init(key, input_shape)[1]
        walk_forward(net, params, x, record, state=init_state(net, input_shape), key=key, into=into)

    jax.eval_shape(run, jax.random.PRNGKey(0))
    return found


def serial(*layers: Layer) -> Layer:
    """Compose layers left to right; params, res and state are tuples with one entry per level.

    The forward runs the levels 0..N-1 keeping each level's ``res``; the backward
    walks them in reverse, turning dL/dx^{n+1} into (dL/dω^n, dL/dx^n) at each level.
    Level ``n`` gets ``fold_in(key, n)``; its path segment is ``str(n)``.

    Args:
      *layers: the levels, bottom (applied to the input) first.

    Returns:
      A :class:`Layer` of kind ``"serial"``; stateful if any level is.
    """
    layers = _check_children("serial", layers)
    n = len(layers)
    name = "serial(" + ", ".join(layer_name(l) for l in layers) + ")"
    stateful = any(is_stateful(l) for l in layers)

    def init(key, input_shape):
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, n), strict=True)):
            with at_level(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return tuple(shape), tuple(params)

    def state_init(input_shape):
        shape, states = tuple(input_shape), []
        for i, layer in enumerate(layers):
            with at_level(i, layer):
                states.append(init_state(layer, shape))
                shape = output_shape(layer, shape)
        return tuple(states)

    def forward(visit, params, x, *, state, key, train):
        _check_levels(name, layers, params)
        if stateful:
            _check_levels(name, layers, state, "state")
        res, new_state = [], []
        for i, (layer, p, s) in enumerate(zip(layers, params, state if stateful else ((),) * n, strict=True)):
            k = None if key is None else jax.random.fold_in(key, i)
            spec = input_spec(x)
            with at_level(i, layer):
                x, r, s = visit(str(i), layer, p, x, state=s, key=k, train=train)
            res.append((r, spec))
            new_state.append(s)
        return x, tuple(res), tuple(new_state) if stateful else ()

    def backward(visit, params, res, g):
        # for n = N-1 ... 0:  (dω^n, g) = backward^n(ω^n, res^n, g)   — g is dL/dx^n on exit
        outs = [None] * n
        for i in reversed(range(n)):
            r, spec = res[i]
            with at_level(i, layers[i]):
                outs[i], g = visit(str(i), layers[i], params[i], r, g, spec)
        return tuple(outs), g

    def each(visit, params):
        _check_levels(name, layers, params)
        outs = []
        for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
            with at_level(i, layer):
                outs.append(visit(str(i), layer, p))
        return tuple(outs)

    return combinator(
        "serial", name, layers, init, Walk(forward, backward, each), state_init if stateful else None
    )


def _init_same(key, input_shape):
    return tuple(input_shape), ()


def _shapes_of(name: str, input_shape, n: int | None = None) -> tuple:
    """Check that ``input_shape`` is a tuple of shapes (of length ``n`` when given)."""
    ok = isinstance(input_shape, (tuple, list)) and all(isinstance(s, (tuple, list)) for s in input_shape)
    if not ok or (n is not None and len(input_shape) != n):
        want = f"a tuple of {n} shapes" if n is not None else "a tuple of shapes"
        raise LayerError(f"{name}: expected {want}, got input shape {input_shape}")
    return tuple(tuple(s) for s in input_shape)


def _arrays_of(name: str, x, n: int | None = None) -> tuple:
    """Check that ``x`` is a tuple of arrays (of length ``n`` when given)."""
    if not isinstance(x, (tuple, list)) or (n is not None and len(x) != n):
        got = f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else f"an array of shape {jnp.shape(x)}"
        want = f"a tuple of {n} arrays" if n is not None else "a tuple of arrays"
        raise LayerError(f"{name}: expected {want}, got {got}")
    return tuple(x)


def Identity() -> Layer:
    """y = x: any shape (or pytree) -> the same."""

    def forward(params, x):
        return x, ()

    def backward(params, res, g):
        # dx = g
        return (), g

    return Layer(_init_same, forward, backward, name="Identity", per_example=LINEAR)


def FanOut(n: int) -> Layer:
    """x -> (x,) * n: shape -> (shape,) * n; backward sums the n cotangents (the fork rule)."""
    if n < 1:
        raise LayerError(f"FanOut: n must be >= 1, got {n}")
    name = f"FanOut({n})"

    def init(key, input_shape):
        return (tuple(input_shape),) * n, ()

    def forward(params, x):
        return (x,) * n, ()

    def backward(params, res, g):
        # dx = g_1 + g_2 + ... + g_n
        g = _arrays_of(name, g, n)
        dx = g[0]
        for gi in g[1:]:
            dx = dx + gi
        return (), dx

    return Layer(init, forward, backward, name=name, per_example=LINEAR)


def FanInSum() -> Layer:
    """(x_1, ..., x_n) -> x_1 + ... + x_n: n equal shapes -> that shape."""
    name = "FanInSum"

    def check(shapes):
        if len(shapes) < 1 or any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise LayerError(f"{name}: branches must have one shape, got {tuple(map(tuple, shapes))}")

    def init(key, input_shape):
        shapes = _shapes_of(name, input_shape)
        check(shapes)
        return shapes[0], ()

    def forward(params, xs):
        xs = _arrays_of(name, xs)
        check([x.shape for x in xs])
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y, Static(tuple(jnp.dtype(x.dtype) for x in xs))

    def backward(params, dtypes, g):
        # dx_i = g   for each branch i
        return (), tuple(g.astype(d) for d in dtypes.value)

    return Layer(init, forward, backward, name=name, per_example=LINEAR)


def FanInConcat(axis: int = -1) -> Layer:
    """(x_1, ..., x_n) -> concatenate(x_i, axis): shapes equal except on ``axis`` -> the joined shape."""
    name = f"FanInConcat(axis={axis})"

    def joined(shapes):
        rank = len(shapes[0]) if shapes else 0
        ax = axis % rank if rank else 0
        rest = {tuple(s[:ax]) + tuple(s[ax + 1 :]) for s in shapes}
        if not shapes or rank == 0 or any(len(s) != rank for s in shapes) or len(rest) != 1:
            raise LayerError(
                f"{name}: branches must agree on every axis but {axis}, got {tuple(map(tuple, shapes))}"
            )
        return (*shapes[0][:ax], sum(s[ax] for s in shapes), *shapes[0][ax + 1 :]), ax

    def init(key, input_shape):
        return joined(_shapes_of(name, input_shape))[0], ()

    def forward(params, xs):
        xs = _arrays_of(name, xs)
        _, ax = joined([x.shape for x in xs])
        sizes = tuple(x.shape[ax] for x in xs)
        return jnp.concatenate(xs, axis=ax), Static((ax, sizes, tuple(jnp.dtype(x.dtype) for x in xs)))

    def backward(params, res, g):
        # dx_i = g[..., offset_i : offset_i + size_i, ...]   (the slice of g along ``axis`` that x_i filled)
        ax, sizes, dtypes = res.value
        cuts = [sum(sizes[:i]) for i in range(1, len(sizes))]
        return (), tuple(p.astype(d) for p, d in zip(jnp.split(g, cuts, axis=ax), dtypes, strict=True))

    return Layer(init, forward, backward, name=name, per_example=LINEAR)


def _check_branches(name: str, n: int, tree, what: str) -> None:
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, (tuple, list)) else type(tree).__name__
        raise LayerError(f"{name}: {n} branches got {what} with {got} ({what} from another network?)")


def parallel(*layers: Layer) -> Layer:
    """Apply branch i to input i: a tuple of n inputs -> a tuple of n outputs.

    Args:
      *layers: the branches; each has its own params (and state, when stateful).

    Returns:
      A :class:`Layer` of kind ``"parallel"`` whose params, res and state are tuples with one entry
      per branch; stateful if any branch is. Branch i gets ``fold_in(key, i)``; its path segment
      is ``str(i)``.
    """
    layers = _check_children("parallel", layers)
    n = len(layers)
    name = "parallel(" + ", ".join(layer_name(l) for l in layers) + ")"
    stateful = any(is_stateful(l) for l in layers)

    def init(key, input_shape):
        shapes = _shapes_of(name, input_shape, n)
        out, params = [], []
        for i, (layer, k, s) in enumerate(zip(layers, jax.random.split(key, n), shapes, strict=True)):
            with at_branch(i, layer):
                o, p = layer.init(k, s)
            out.append(tuple(o))
            params.append(p)
        return tuple(out), tuple(params)

    def state_init(input_shape):
        shapes = _shapes_of(name, input_shape, n)
        states = []
        for i, (layer, s) in enumerate(zip(layers, shapes, strict=True)):
            with at_branch(i, layer):
                states.append(init_state(layer, s))
        return tuple(states)

    def forward(visit, params, xs, *, state, key, train):
        _check_branches(name, n, params, "params")
        if stateful:
            _check_branches(name, n, state, "state")
        xs = _arrays_of(name, xs, n)
        ys, res, new_state = [], [], []
        states = state if stateful else ((),) * n
        for i, (layer, p, x, s) in enumerate(zip(layers, params, xs, states, strict=True)):
            k = None if key is None else jax.random.fold_in(key, i)
            with at_branch(i, layer):
                y, r, s = visit(str(i), layer, p, x, state=s, key=k, train=train)
            ys.append(y)
            res.append((r, input_spec(x)))
            new_state.append(s)
        return tuple(ys), tuple(res), tuple(new_state) if stateful else ()

    def backward(visit, params, res, g):
        # (dω_i, dx_i) = backward_i(ω_i, res_i, g_i)   for each branch i
        g = _arrays_of(name, g, n)
        outs, dxs = [], []
        for i, layer in enumerate(layers):
            r, spec = res[i]
            with at_branch(i, layer):
                out, dx = visit(str(i), layer, params[i], r, g[i], spec)
            outs.append(out)
            dxs.append(dx)
        return tuple(outs), tuple(dxs)

    def each(visit, params):
        _check_branches(name, n, params, "params")
        outs = []
        for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
            with at_branch(i, layer):
                outs.append(visit(str(i), layer, p))
        return tuple(outs)

    return combinator(
        "parallel", name, layers, init, Walk(forward, backward, each), state_init if stateful else None
    )


def Residual(layer: Layer) -> Layer:
    """y = x + layer(x): shape -> the same shape (``layer`` must keep it); params are ``layer``'s.

    A combinator of kind ``"residual"``; the branch's path segment is ``"branch"``.
    """
    (layer,) = _check_children("Residual", (layer,))
    name = f"Residual({layer_name(layer)})"

    def check(x_shape, y_shape):
        if tuple(x_shape) != tuple(y_shape):
            raise LayerError(
                f"{name}: the branch maps shape {tuple(x_shape)} to {tuple(y_shape)};"
                " a residual branch must keep the shape"
            )

    def init(key, input_shape):
        with at_branch(0, layer):
            shape, params = layer.init(key, tuple(input_shape))
        check(input_shape, shape)
        return tuple(input_shape), params

    def state_init(input_shape):
        with at_branch(0, layer):
            shape, state = output_shape(layer, input_shape), init_state(layer, input_shape)
        check(input_shape, shape)
        return state

    def forward(visit, params, x, *, state, key, train):
        with at_branch(0, layer, seg="branch"):
            f, res, new_state = visit("branch", layer, params, x, state=state, key=key, train=train)
        check(x.shape, f.shape)
        return x + f, res, new_state

    def backward(visit, params, res, g):
        # dx = g + dx_f;  (dω, dx_f) = backward_f(ω, res, g)   — the fork rule at x
        # res is the branch's own (Residual adds nothing); x has the shape of y, so of g
        with at_branch(0, layer, seg="branch"):
            out, dx_f = visit("branch", layer, params, res, g, input_spec(g, dtypes=False))
        return out, g + dx_f

    def each(visit, params):
        with at_branch(0, layer, seg="branch"):
            return visit("branch", layer, params)

    state_init = state_init if is_stateful(layer) else None
    return combinator("residual", name, (layer,), init, Walk(forward, backward, each), state_init)


__all__ = [
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "Identity",
    "LeafInfo",
    "Residual",
    "at_branch",
    "at_level",
    "combinator",
    "leaf_layers",
    "leaves",
    "mirror",
    "parallel",
    "param_owners",
    "param_paths",
    "path_order",
    "serial",
    "walk_backward",
    "walk_forward",
    "walk_params",
]
