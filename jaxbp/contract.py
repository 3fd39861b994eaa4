"""The contract every backward keeps, checked at trace time: dparams like params, dx like the input.

A level's backward must return ``(dparams, dx)`` where ``dparams`` has exactly the tree structure,
shapes and dtypes of the level's params and ``dx`` those of its input. The combinators
(:mod:`jaxbp.combinators`) check every level they run, with the input's structure recorded in
``res`` by their forward (:func:`input_spec`); :func:`jaxbp.backprop.forward_backward` checks a
network that is a single layer. Only shapes, dtypes and structures are compared, while tracing:
no run-time cost. A violation raises :class:`~jaxbp.errors.ContractError` naming the level path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.core import Layer, Static, layer_name
from jaxbp.errors import ContractError, at_path
from jaxbp.errors import path_text as path_str

Path = tuple[str, ...]


def contract_error(path: Path, layer: str, detail: str) -> ContractError:
    """A :class:`~jaxbp.errors.ContractError` at ``path``, with ``path``, ``layer``, ``detail`` attributes."""
    return at_path(ContractError(detail), path, layer)


def input_spec(x, *, dtypes: bool = True) -> Static:
    """The tree structure, shapes and dtypes of a level's input, kept in ``res`` for the contract check.

    ``dtypes=False`` leaves the dtypes unchecked (``Residual`` takes the shape from the cotangent).
    """
    leaves, treedef = jax.tree.flatten(x)
    return Static(
        (treedef, tuple((tuple(jnp.shape(a)), jnp.result_type(a) if dtypes else None) for a in leaves))
    )


def contract_problems(params, dparams, spec: Static | None, dx) -> list[str]:
    """What is wrong with a backward's ``(dparams, dx)`` (empty when nothing is).

    ``dparams`` must have exactly the tree structure, shapes and dtypes of ``params``; ``dx`` those
    of the level's input (``spec`` from :func:`input_spec`; not checked when the input has
    non-floating leaves, e.g. token ids, or when ``spec`` is None).
    """
    out = _tree_problems("dparams", dparams, params)
    if spec is not None:
        treedef, leaves = spec.value
        if all(d is None or jnp.issubdtype(d, jnp.inexact) for _, d in leaves):
            want = treedef.unflatten([jax.ShapeDtypeStruct(s, d or jnp.float32) for s, d in leaves])
            out += _tree_problems("dx", dx, want, dtypes=all(d is not None for _, d in leaves))
    if out and jax.tree.leaves(params) and not _tree_problems("dparams", dx, params):
        out.append("(did the backward return (dx, dparams) instead of (dparams, dx)?)")
    return out


def _tree_problems(what: str, got, want, dtypes: bool = True) -> list[str]:
    if jax.tree.structure(got) != jax.tree.structure(want):
        return [f"{what} has tree structure {jax.tree.structure(got)}, expected {jax.tree.structure(want)}"]
    out = []
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got), strict=True):
        where = what + jax.tree_util.keystr(path)
        if not hasattr(g, "shape") or not hasattr(g, "dtype"):
            out.append(f"{where} is {type(g).__name__}, expected an array of shape {tuple(w.shape)}")
        elif tuple(g.shape) != tuple(w.shape):
            out.append(f"{where} has shape {tuple(g.shape)}, expected {tuple(w.shape)}")
        elif dtypes and jnp.dtype(g.dtype) != jnp.dtype(w.dtype):
            out.append(f"{where} has dtype {jnp.dtype(g.dtype)}, expected {jnp.dtype(w.dtype)}")
    return out


def check_contract(layer: Layer, params, spec: Static | None, result, path: Path = ()) -> tuple:
    """Raise :class:`~jaxbp.errors.ContractError` (at ``path`` relative to where the caller stands:
    the walk prepends the levels above) unless ``result`` is a valid ``(dparams, dx)`` for ``params``
    and the input ``spec``; return it.

    Only shapes, dtypes and tree structures are compared, at trace time: no run-time cost.
    """
    if not (isinstance(result, tuple) and len(result) == 2):
        raise contract_error(
            path, layer_name(layer), f"backward returned {type(result).__name__}, expected (dparams, dx)"
        )
    problems = contract_problems(params, result[0], spec, result[1])
    if problems:
        raise contract_error(path, layer_name(layer), "; ".join(problems))
    return result


def backprop(path: Path, layer: Layer, params, res, g, spec: Static | None) -> tuple:
    """The default visitor of :func:`~jaxbp.combinators.walk_backward`: the leaf's own backward, its
    contract checked. Other visitors call it where they need the leaf's ``(dparams, dx)``."""
    return check_contract(layer, params, spec, layer.backward(params, res, g))


__all__ = [
    "Path",
    "backprop",
    "check_contract",
    "contract_error",
    "contract_problems",
    "input_spec",
    "path_str",
]
