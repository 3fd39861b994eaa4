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
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from jaxbp.core import Layer, LayerError, Static, apply, init_state, is_stateful, layer_name, output_shape


@contextlib.contextmanager
def at_level(index: int, layer: Layer, kind: str = "level") -> Iterator[None]:
    """Re-raise shape and type errors from inside a level (or branch) with its index and name."""
    try:
        yield
    except (LayerError, ValueError, TypeError) as e:
        raise LayerError(f"{kind} {index} ({layer_name(layer)}): {e}") from e


def _check_levels(name: str, layers: tuple[Layer, ...], params) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != len(layers):
        got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
        raise LayerError(
            f"{name}: a network of {len(layers)} levels got params with {got} (params from another network?)"
        )


def serial(*layers: Layer) -> Layer:
    """Compose layers left to right; params, res and state are tuples with one entry per level.

    The forward runs the levels 0..N-1 keeping each level's ``res``; the backward
    walks them in reverse, turning dL/dx^{n+1} into (dL/dω^n, dL/dx^n) at each level.

    Args:
      *layers: the levels, bottom (applied to the input) first.

    Returns:
      A :class:`Layer`; stateful if any level is.
    """
    layers = tuple(layers)
    name = "serial(" + ", ".join(layer_name(l) for l in layers) + ")"

    def init(key, input_shape):
        shape, params = tuple(input_shape), []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)), strict=True)):
            with at_level(i, layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return tuple(shape), tuple(params)

    def backward(params, res, g):
        # for n = N-1 ... 0:  (dω^n, g) = backward^n(ω^n, res^n, g)   — g is dL/dx^n on exit
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            with at_level(i, layers[i]):
                grads[i], g = layers[i].backward(params[i], res[i], g)
        return tuple(grads), g

    if not any(is_stateful(l) for l in layers):

        def forward(params, x):
            _check_levels(name, layers, params)
            res = []
            for i, (layer, p) in enumerate(zip(layers, params, strict=True)):
                with at_level(i, layer):
                    x, r = layer.forward(p, x)
                res.append(r)
            return x, tuple(res)

        return Layer(init, forward, backward, name=name, layers=layers)

    def state_init(input_shape):
        shape, states = tuple(input_shape), []
        for i, layer in enumerate(layers):
            with at_level(i, layer):
                states.append(init_state(layer, shape))
                shape = output_shape(layer, shape)
        return tuple(states)

    def forward_stateful(params, x, *, state, key, train):
        _check_levels(name, layers, params)
        _check_levels(name + " state", layers, state)
        res, new_state = [], []
        for i, (layer, p, s) in enumerate(zip(layers, params, state, strict=True)):
            k = None if key is None else jax.random.fold_in(key, i)
            with at_level(i, layer):
                x, r, s = apply(layer, p, x, state=s, key=k, train=train)
            res.append(r)
            new_state.append(s)
        return x, tuple(res), tuple(new_state)

    return Layer(init, forward_stateful, backward, init_state=state_init, name=name, layers=layers)


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

    return Layer(_init_same, forward, backward, name="Identity")


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

    return Layer(init, forward, backward, name=name)


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

    return Layer(init, forward, backward, name=name)


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

    return Layer(init, forward, backward, name=name)


def at_branch(index: int, layer: Layer):
    """Re-raise shape and type errors from inside a branch with the branch's index and name."""
    return at_level(index, layer, kind="branch")


def _check_branches(name: str, n: int, tree, what: str) -> None:
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, (tuple, list)) else type(tree).__name__
        raise LayerError(f"{name}: {n} branches got {what} with {got} ({what} from another network?)")


def parallel(*layers: Layer) -> Layer:
    """Apply branch i to input i: a tuple of n inputs -> a tuple of n outputs.

    Args:
      *layers: the branches; each has its own params (and state, when stateful).

    Returns:
      A :class:`Layer` whose params, res and state are tuples with one entry per
      branch; stateful if any branch is. Branch i gets ``fold_in(key, i)``.
    """
    layers = tuple(layers)
    n = len(layers)
    name = "parallel(" + ", ".join(layer_name(l) for l in layers) + ")"

    def init(key, input_shape):
        shapes = _shapes_of(name, input_shape, n)
        out, params = [], []
        for i, (layer, k, s) in enumerate(zip(layers, jax.random.split(key, n), shapes, strict=True)):
            with at_branch(i, layer):
                o, p = layer.init(k, s)
            out.append(tuple(o))
            params.append(p)
        return tuple(out), tuple(params)

    def backward(params, res, g):
        # (dω_i, dx_i) = backward_i(ω_i, res_i, g_i)   for each branch i
        g = _arrays_of(name, g, n)
        grads, dxs = [], []
        for i, layer in enumerate(layers):
            with at_branch(i, layer):
                dp, dx = layer.backward(params[i], res[i], g[i])
            grads.append(dp)
            dxs.append(dx)
        return tuple(grads), tuple(dxs)

    if not any(is_stateful(l) for l in layers):

        def forward(params, xs):
            _check_branches(name, n, params, "params")
            xs = _arrays_of(name, xs, n)
            ys, res = [], []
            for i, (layer, p, x) in enumerate(zip(layers, params, xs, strict=True)):
                with at_branch(i, layer):
                    y, r = layer.forward(p, x)
                ys.append(y)
                res.append(r)
            return tuple(ys), tuple(res)

        return Layer(init, forward, backward, name=name, layers=layers)

    def state_init(input_shape):
        shapes = _shapes_of(name, input_shape, n)
        states = []
        for i, (layer, s) in enumerate(zip(layers, shapes, strict=True)):
            with at_branch(i, layer):
                states.append(init_state(layer, s))
        return tuple(states)

    def forward_stateful(params, xs, *, state, key, train):
        _check_branches(name, n, params, "params")
        _check_branches(name, n, state, "state")
        xs = _arrays_of(name, xs, n)
        ys, res, new_state = [], [], []
        for i, (layer, p, x, s) in enumerate(zip(layers, params, xs, state, strict=True)):
            k = None if key is None else jax.random.fold_in(key, i)
            with at_branch(i, layer):
                y, r, s = apply(layer, p, x, state=s, key=k, train=train)
            ys.append(y)
            res.append(r)
            new_state.append(s)
        return tuple(ys), tuple(res), tuple(new_state)

    return Layer(init, forward_stateful, backward, init_state=state_init, name=name, layers=layers)


def Residual(layer: Layer) -> Layer:
    """y = x + layer(x): shape -> the same shape (``layer`` must keep it); params are ``layer``'s."""
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

    def backward(params, res, g):
        # dx = g + dx_f;  (dω, dx_f) = backward_f(ω, res, g)   — the fork rule at x
        with at_branch(0, layer):
            dparams, dx_f = layer.backward(params, res, g)
        return dparams, g + dx_f

    if not is_stateful(layer):

        def forward(params, x):
            with at_branch(0, layer):
                f, res = layer.forward(params, x)
            check(x.shape, f.shape)
            return x + f, res

        return Layer(init, forward, backward, name=name, layers=(layer,))

    def state_init(input_shape):
        with at_branch(0, layer):
            shape, state = output_shape(layer, input_shape), init_state(layer, input_shape)
        check(input_shape, shape)
        return state

    def forward_stateful(params, x, *, state, key, train):
        with at_branch(0, layer):
            f, res, new_state = apply(layer, params, x, state=state, key=key, train=train)
        check(x.shape, f.shape)
        return x + f, res, new_state

    return Layer(init, forward_stateful, backward, init_state=state_init, name=name, layers=(layer,))


__all__ = ["FanInConcat", "FanInSum", "FanOut", "Identity", "Residual", "at_branch", "parallel"]
