"""The quantity registry: a quantity is one entry (name, leaf contribution, oracle), as BackPACK maps
layers to extensions and kfac-jax maps tags to curvature blocks.

A **first-order** quantity is read at every parameterised leaf of the gradient's own walk from
that leaf's :class:`~jaxbp.core.PerExample` hooks (:class:`At`). A **second-order** quantity walks
the columns of a factor of the loss Hessian (:data:`FACTORS`) down the same hand-written backward
and reads one contribution per column, which are then summed. :func:`register` adds an entry;
:func:`jaxbp.quantities.value_grad_and`, the checker and the command line iterate :data:`QUANTITIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core import Layer, PerExample, layer_name
from jaxbp.errors import LayerError, UsageError
from jaxbp.layers.per_example import squared_norms, sum_squares


class At:
    """What a quantity's leaf function gets at one leaf: the leaf's ``(params, res, g)``, its
    dparams from the walk, the batch size, and its hooks (shared computations are made once)."""

    def __init__(self, layer: Layer, params, res, g, dparams, n: int):
        self.layer, self.params, self.res, self.g, self.dparams, self.n = layer, params, res, g, dparams, n
        self._memo: dict[str, Any] = {}

    def hook(self, name: str, quantity: str) -> Callable:
        """The leaf's :class:`~jaxbp.core.PerExample` hook ``name``, or a refusal naming what is missing."""
        fn = getattr(self.layer.per_example or PerExample(), name)
        if fn is None:
            raise LayerError(
                f"{layer_name(self.layer)}: does not support the quantity {quantity!r}"
                f" (its PerExample has no hand-written {name} hook)"
            )
        return fn

    def call(self, name: str, quantity: str):
        """The hook ``name`` on this leaf's ``(params, res, g)``, computed once per leaf."""
        if name not in self._memo:
            self._memo[name] = self.hook(name, quantity)(self.params, self.res, self.g)
        return self._memo[name]

    def batch_grad(self, quantity: str):
        return self.call("batch_grad", quantity)

    def optional(self, name: str):
        """The hook ``name`` if the leaf has it, else None."""
        return getattr(self.layer.per_example or PerExample(), name)

    def sum_grad_squared(self, quantity: str):
        """``sum_n batch_grad_n²`` from its hook, else from ``batch_grad``."""
        if self.optional("sum_grad_squared") is not None:
            return self.call("sum_grad_squared", quantity)
        return sum_squares(self.batch_grad(quantity))

    def batch_l2(self, quantity: str):
        """``||batch_grad_n||²`` from its hook, else from ``batch_grad``."""
        if self.optional("batch_l2") is not None:
            return self.call("batch_l2", quantity)
        return squared_norms(self.batch_grad(quantity))


class Factor(NamedTuple):
    """The columns a second-order quantity walks down the network.

    Attributes:
      name: the factor's name.
      columns: ``(loss, loss_res, key, samples, taps) -> (S, weights, inject)``: ``S`` of shape
        ``(K, *pred.shape)``, ``weights`` (K,) or None (all 1), ``inject`` ``{path: (K, *x.shape)}``
        extra columns added to the dx a leaf hands down (or None).
      tap: ``At -> value`` read at every leaf of the gradient walk (by path) for ``columns``, or None.
      needs_key: whether ``columns`` draws (a Monte Carlo factor).
    """

    name: str
    columns: Callable
    tap: Callable | None = None
    needs_key: bool = False


class Quantity(NamedTuple):
    """One quantity.

    Attributes:
      name: the name users pass (``value_grad_and(net, loss, "batch_l2")``).
      summary: one line: what it is, with its scaling.
      oracle: ``Oracle -> reference`` in the params' structure, from autodiff (the checker's
        :class:`jaxbp.quantities.check.Oracle`: per-example gradients, the GGN, the Hessian); only
        the checker calls it.
      oracle_summary: one line: what the oracle is.
      leaf: first order: ``At -> value`` at a leaf with params.
      factor: second order: the :class:`Factor` whose columns it walks.
      column: second order: ``At -> value`` per column at a leaf with params.
      reduce: second order: ``(stacked over columns, weights) -> value``.
      aux: second order: ``At -> value`` at a leaf with params on the gradient walk, or None.
      finish: second order: ``(reduced tree, aux tree or None) -> result``.
      under_rules: None when the quantity has one meaning under any backward rule (the rule's own
        backward is walked); else why it has none there (it is refused).
      compare: the checker's comparison of one param leaf (see :mod:`jaxbp.quantities.check`).
    """

    name: str
    summary: str
    oracle: Callable
    oracle_summary: str
    leaf: Callable | None = None
    factor: Factor | None = None
    column: Callable | None = None
    reduce: Callable | None = None
    aux: Callable | None = None
    finish: Callable | None = None
    under_rules: str | None = None
    compare: Callable | None = None

    @property
    def order(self) -> int:
        return 1 if self.factor is None else 2


QUANTITIES: dict[str, Quantity] = {}


def register(quantity: Quantity) -> Quantity:
    """Add ``quantity`` to :data:`QUANTITIES` (replacing one of the same name); returns it."""
    if (quantity.leaf is None) == (quantity.factor is None):
        raise UsageError(f"quantity {quantity.name!r}: give a first-order leaf or a second-order factor")
    QUANTITIES[quantity.name] = quantity
    return quantity


def lookup(names, where: str = "value_grad_and") -> tuple[Quantity, ...]:
    """The registered quantities ``names`` (duplicates dropped), or a UsageError naming the choices."""
    if not names:
        raise UsageError(f"{where}: name at least one quantity; choose from {', '.join(QUANTITIES)}")
    unknown = [n for n in names if n not in QUANTITIES]
    if unknown:
        raise UsageError(f"{where}: unknown quantities {unknown}; choose from {', '.join(QUANTITIES)}")
    return tuple(QUANTITIES[n] for n in dict.fromkeys(names))


def weighted_sum(stacked, weights):
    """Sum over the column axis, each column weighted (all 1 when ``weights`` is None)."""
    if weights is None:
        return jax.tree.map(lambda a: a.sum(0), stacked)
    return jax.tree.map(lambda a: jnp.tensordot(weights.astype(a.dtype), a, 1), stacked)


__all__ = ["QUANTITIES", "At", "Factor", "Quantity", "lookup", "register", "weighted_sum"]
