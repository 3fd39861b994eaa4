"""The contract every jaxbp layer and loss follows.

A **layer** is three pure functions bundled in a :class:`Layer`::

    init(key, input_shape)   -> (output_shape, params)
    forward(params, x)       -> (y, res)
    backward(params, res, g) -> (dparams, dx)

``params`` is a plain pytree (tuples / dicts of arrays). ``res`` ("residuals",
as in ``jax.custom_vjp``) holds exactly what this layer's backward needs and is
chosen by the layer. ``g`` is dL/dy, the cotangent handed down from the level
above; ``dparams`` has the structure of ``params`` and is dL/dω of this level;
``dx`` is dL/dx, handed down to the level below. A user can write a layer with
these three functions and nothing else.

**Stateful and random layers** (BatchNorm, Dropout) extend the contract in one
uniform way: they set ``init_state`` and their forward takes three keyword-only
arguments and returns the new state as a third value::

    init_state(input_shape)                     -> state
    forward(params, x, *, state, key, train)    -> (y, res, new_state)

``state`` is a pytree carried beside params (running statistics; ``()`` when a
layer needs only a key or a mode), ``key`` a PRNG key or None, ``train`` a
Python bool. The backward is unchanged. Layers with ``init_state is None`` are
*plain*; :func:`apply` calls either kind, so combinators treat both alike.

**Combinators** (``serial``, ``Residual``, ``parallel``) are layers too, and say so: their
``kind`` names what they are and their ``walk`` runs the children through a *visitor*::

    walk.forward(visit, params, x, *, state, key, train) -> (y, res, new_state)
        visit(seg, child, child_params, child_x, *, state, key, train) -> (y, res, new_state)
    walk.backward(visit, params, res, g) -> (dparams, dx)
        visit(seg, child, child_params, child_res, child_g) -> (dparams, dx)

``seg`` is the child's path segment (``"3"`` for level 3 of ``serial``, ``"branch"`` for the
branch of ``Residual``). The combinator's own ``forward``/``backward`` are its walk with the
visitor that calls the child; :func:`jaxbp.combinators.walk_backward` and
:func:`jaxbp.combinators.walk_forward` recurse with any other visitor, so one walk serves
backprop, the checker, gradient flow, backward rules and quantities.

A **loss** is two functions bundled in a :class:`Loss`::

    forward(pred, target) -> (value, res)
    backward(res)         -> dL/dpred        (for the scalar, mean-reduced loss)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.errors import LayerError

Array = jax.Array
Shape = tuple[int, ...]
Params = Any  # a pytree of arrays
State = Any  # a pytree of arrays carried beside params (running statistics)
Residuals = Any  # whatever a layer's backward needs, chosen by the layer
Cotangent = Any  # dL/dy, same structure and shape as y

InitFn = Callable[[Array, Shape], tuple[Shape, Params]]
ForwardFn = Callable[..., tuple]
BackwardFn = Callable[[Params, Residuals, Cotangent], tuple[Params, Cotangent]]


class Walk(NamedTuple):
    """How a combinator runs its children; see the module docstring for the visitor signatures.

    Attributes:
      forward: ``(visit, params, x, *, state, key, train) -> (y, res, new_state)``.
      backward: ``(visit, params, res, g) -> (dparams, dx)``.
    """

    forward: Callable[..., tuple]
    backward: Callable[..., tuple]


NO_EXTRAS: Mapping[str, Callable] = MappingProxyType({})


class Layer(NamedTuple):
    """A layer: ``init``, ``forward`` and its hand-written ``backward``.

    Attributes:
      init: ``(key, input_shape) -> (output_shape, params)``.
      forward: ``(params, x) -> (y, res)``; for stateful layers
        ``(params, x, *, state, key, train) -> (y, res, new_state)``.
      backward: ``(params, res, g) -> (dparams, dx)``.
      init_state: ``(input_shape) -> state`` for stateful/random layers, else None.
      name: shown in error messages and reports; constructors fill it in.
      layers: the children of a combinator (``serial`` levels, a residual branch), else ``()``.
      kind: ``"layer"`` for a leaf; ``"serial"``, ``"residual"`` or ``"parallel"`` for a combinator.
      walk: a combinator's :class:`Walk`, else None (a leaf: one level of its own).
      extras: hand-written functions that extend this layer's backward, keyed by name, next to it in
        the constructor: backward rules' variants and per-example or curvature contributions.
    """

    init: InitFn
    forward: ForwardFn
    backward: BackwardFn
    init_state: Callable[[Shape], State] | None = None
    name: str = ""
    layers: tuple[Layer, ...] = ()
    kind: str = "layer"
    walk: Walk | None = None
    extras: Mapping[str, Callable] = NO_EXTRAS


def is_combinator(layer: Layer) -> bool:
    """True when ``layer`` runs children through a :class:`Walk` (``serial``, ``Residual``, ``parallel``)."""
    return layer.walk is not None


class Loss(NamedTuple):
    """A loss: ``forward(pred, target) -> (value, res)``, ``backward(res) -> dL/dpred``.

    ``extras``: hand-written pieces that extend the backward (for :mod:`jaxbp.quantities`:
    ``"sqrt_hessian"`` and ``"sqrt_hessian_mc"``, symmetric factors of the loss Hessian wrt pred).
    """

    forward: Callable[[Array, Array], tuple[Array, Residuals]]
    backward: Callable[[Residuals], Array]
    name: str = ""
    extras: Mapping[str, Callable] = NO_EXTRAS


def is_stateful(layer: Layer) -> bool:
    """True when ``layer`` uses the extended (state, key, train) forward."""
    return layer.init_state is not None


def layer_name(layer: Layer) -> str:
    """A readable name for ``layer`` (its ``name``, else the forward's qualname)."""
    if layer.name:
        return layer.name
    qual = getattr(layer.forward, "__qualname__", "layer")
    return qual.split(".<locals>")[0] or "layer"


def apply(
    layer: Layer,
    params: Params,
    x: Array,
    *,
    state: State = (),
    key: Array | None = None,
    train: bool = False,
) -> tuple[Array, Residuals, State]:
    """Run ``layer.forward`` whatever its kind; always returns ``(y, res, new_state)``.

    Plain layers ignore ``key`` and ``train`` and return ``state`` unchanged.
    """
    if is_stateful(layer):
        return layer.forward(params, x, state=state, key=key, train=train)
    y, res = layer.forward(params, x)
    return y, res, state


def init_state(layer: Layer, input_shape: Shape) -> State:
    """The initial state of ``layer`` for ``input_shape`` (``()`` for plain layers)."""
    return layer.init_state(tuple(input_shape)) if is_stateful(layer) else ()


def output_shape(layer: Layer, input_shape: Shape) -> Shape:
    """The output shape of ``layer`` for ``input_shape``, without allocating params."""
    box: list[Shape] = []

    def run(key):
        shape, params = layer.init(key, tuple(input_shape))
        box.append(tuple(shape))
        return params

    jax.eval_shape(run, jax.random.PRNGKey(0))
    return box[0]


def check_param_shapes(name: str, expected: dict[str, Shape], params: dict[str, Array]) -> None:
    """Raise :class:`LayerError` when ``params`` do not have the ``expected`` shapes."""
    if not isinstance(params, dict) or set(params) != set(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise LayerError(f"{name}: expected params with keys {sorted(expected)}, got {got}")
    for k, shape in expected.items():
        if tuple(jnp.shape(params[k])) != tuple(shape):
            raise LayerError(
                f"{name}: param {k!r} has shape {tuple(jnp.shape(params[k]))}, expected {tuple(shape)}"
                " (params from another network?)"
            )


@jax.tree_util.register_static
class Static:
    """A pytree node with no leaves that carries a static Python value (e.g. a shape).

    Put shapes or other static facts into ``res`` with it: they survive ``jax.jit``
    and ``jax.custom_vjp`` residual plumbing as part of the tree structure.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"Static({self.value!r})"
