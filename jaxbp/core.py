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
    walk.backward(visit, params, res, g) -> (outs, dx)
        visit(seg, child, child_params, child_res, child_g, spec) -> (out, dx)
    walk.params(visit, params) -> outs
        visit(seg, child, child_params) -> out

``seg`` is the child's path segment (``"3"`` for level 3 of ``serial``, ``"branch"`` for the
branch of ``Residual``); ``spec`` is the structure, shapes and dtypes of the child's input,
recorded by the forward (:func:`jaxbp.contract.input_spec`). The walk hands the cotangents down
(the fork rule included) and assembles whatever the visitor returns for each child -- dparams,
per-example quantities, the level's path -- into the params' structure. The combinator's own
``forward``/``backward`` are its walk with the default visitor (call the child, check its
contract); :func:`jaxbp.combinators.walk_backward`, :func:`~jaxbp.combinators.walk_forward` and
:func:`~jaxbp.combinators.walk_params` recurse with any other visitor, so one walk serves
backprop, the checker, gradient flow, backward rules, quantities and ownership.

A leaf extends its backward in **typed** fields next to it: :class:`PerExample` (per-example and
curvature contributions), :class:`Feedback` (the weights a backward rule's feedback replaces) and
``check_forward`` (the oracle of a backward that is not the derivative by design).

A **loss** is two functions bundled in a :class:`Loss`::

    forward(pred, target) -> (value, res)
    backward(res)         -> dL/dpred        (for the scalar, mean-reduced loss)
"""

from __future__ import annotations

from collections.abc import Callable
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
      backward: ``(visit, params, res, g) -> (outs, dx)``; ``outs`` assembles what ``visit``
        returned for each child into the params' structure.
      params: ``(visit, params) -> outs``: ``visit(seg, child, child_params)`` for each child,
        assembled into the params' structure (no data needed: ownership, lookups by path).
    """

    forward: Callable[..., tuple]
    backward: Callable[..., tuple]
    params: Callable[..., Any]


class Kron(NamedTuple):
    """Kronecker factors of a curvature block: the block of a param ``W (in, out)`` is ``A ⊗ G``.

    ``A`` (in, in) is None for params without an input factor (biases, scales); then the block is
    ``G``. A layer's :attr:`PerExample.kron` hook returns them per param leaf.
    """

    A: Any
    G: Any


class PerExample(NamedTuple):
    """A leaf's hand-written per-example and curvature contributions, read by :mod:`jaxbp.quantities`.

    Each hook takes the leaf's own ``(params, res, g)``, as its backward does, with ``g`` the
    cotangent of the *mean-reduced* loss (or one column of the loss Hessian's square root); a
    hook left None is unsupported (``batch_l2`` and ``sum_grad_squared`` are then derived from
    ``batch_grad``). Helpers for writing them are in :mod:`jaxbp.layers.per_example`.

    Attributes:
      batch_grad: ``-> per-example dparams``: each leaf with a leading batch axis, summing to the
        backward's dparams.
      batch_l2: ``-> per leaf (B,)``: the squared norms of the per-example dparams.
      sum_grad_squared: ``-> per leaf``: the sum over the batch of the squared per-example dparams.
      kron: ``-> per leaf Kron(A, G)``: ``A`` from the input (None for a bias), ``G`` the outer
        products of the (per-example summed) cotangent of this column.
      hessian_residual: ``-> r or None``: the second-derivative residual wrt the input,
        ``r = g ⊙ f''(x)`` for an element-wise ``f`` (``x``'s shape); None when the layer is linear
        in its input (and its params enter linearly): what ``diag_hessian`` propagates.
    """

    batch_grad: Callable | None = None
    batch_l2: Callable | None = None
    sum_grad_squared: Callable | None = None
    kron: Callable | None = None
    hessian_residual: Callable | None = None


def linear_residual(params, res, g) -> None:
    """The :attr:`PerExample.hessian_residual` of a layer linear in its input (and in its params)."""
    return None


LINEAR = PerExample(hessian_residual=linear_residual)  # parameter-free linear layers: reshape, fans, pools


class Feedback(NamedTuple):
    """The weights a backward rule's feedback stands in for (:mod:`jaxbp.rules`).

    A rule hands down the dx of the layer's own backward run with each weight replaced by its
    feedback array (B in place of W), and keeps the backward's dparams: nothing else of the layer
    is rewritten. Make one with :func:`feedback_of` for dict params.

    Attributes:
      weights: ``params -> W``: the weight (an array, or a pytree of them) that feedback replaces.
      replace: ``(params, B) -> params`` with ``W`` replaced by ``B`` (same structure as ``W``).
    """

    weights: Callable[[Params], Any]
    replace: Callable[[Params, Any], Params]


def feedback_of(*keys: str) -> Feedback:
    """The :class:`Feedback` of the dict params ``keys``: one key gives the array, several a dict."""
    if len(keys) == 1:
        (k,) = keys
        return Feedback(weights=lambda params: params[k], replace=lambda params, B: {**params, k: B})
    return Feedback(
        weights=lambda params: {k: params[k] for k in keys}, replace=lambda params, B: {**params, **B}
    )


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
      kind: ``"layer"`` for a leaf; ``"serial"``, ``"residual"`` or ``"parallel"`` for a combinator
        (descriptive only: code goes through :attr:`walk`).
      walk: a combinator's :class:`Walk`, else None (a leaf: one level of its own).
      per_example: the :class:`PerExample` hooks extending the backward, None when unsupported.
      feedback: the :class:`Feedback` hook of a layer with a weight matrix or kernel, for rules.
      check_forward: for a backward that is not the forward's derivative by design (a straight-through
        estimator, a backward rule): a forward of the same signature whose autodiff VJP is that
        backward's definition. The checker uses it as the oracle of this layer (and of everything
        below it, for a combinator).
      rule: set by :mod:`jaxbp.rules` on what a rule made (its record); None otherwise.
    """

    init: InitFn
    forward: ForwardFn
    backward: BackwardFn
    init_state: Callable[[Shape], State] | None = None
    name: str = ""
    layers: tuple[Layer, ...] = ()
    kind: str = "layer"
    walk: Walk | None = None
    per_example: PerExample | None = None
    feedback: Feedback | None = None
    check_forward: ForwardFn | None = None
    rule: Any = None


def is_combinator(layer: Layer) -> bool:
    """True when ``layer`` runs children through a :class:`Walk` (``serial``, ``Residual``, ``parallel``)."""
    return layer.walk is not None


class Loss(NamedTuple):
    """A loss: ``forward(pred, target) -> (value, res)``, ``backward(res) -> dL/dpred``.

    Attributes:
      forward: ``(pred, target) -> (value, res)``, the mean-reduced loss.
      backward: ``res -> dL/dpred``.
      name: shown in messages and reports.
      sqrt_hessian: ``res -> S`` of shape ``(K, *pred.shape)`` with ``sum_k S_kn S_knᵀ = H_n``, the
        block of example n of the Hessian of the mean loss wrt ``pred`` (for the curvature
        quantities of :mod:`jaxbp.quantities`); None when not provided.
      sqrt_hessian_mc: ``(res, key, samples) -> S`` with ``E[sum_k S_kn S_knᵀ] = H_n`` (Monte Carlo).
    """

    forward: Callable[[Array, Array], tuple[Array, Residuals]]
    backward: Callable[[Residuals], Array]
    name: str = ""
    sqrt_hessian: Callable | None = None
    sqrt_hessian_mc: Callable | None = None


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
    if not isinstance(train, bool):
        raise LayerError(f"{layer_name(layer)}: train must be True or False, got {train!r}")
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
