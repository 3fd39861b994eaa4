"""``value_grad_and(net, loss, *names)``: the loss, its gradient and more from the same backward."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxbp.core import Array, Layer, Loss, Params, State, apply
from jaxbp.errors import UsageError
from jaxbp.quantities.engine import column_walks, pick, walk_parts
from jaxbp.quantities.registry import QUANTITIES, lookup


def value_grad_and(net: Layer, loss: Loss, *names: str, mc_samples: int = 1, train: bool = False) -> Callable:
    """The loss, its gradient and the requested quantities in one program.

    Args:
      net: the network, plain or made by a backward rule (then the gradient and the quantities are
        the rule's: the walk runs the rule's backward). Every parameterised leaf must have the
        :class:`~jaxbp.core.PerExample` hooks its quantities need.
      loss: a mean-reduced loss (its ``sqrt_hessian`` / ``sqrt_hessian_mc`` give the second-order ones).
      *names: names from :data:`jaxbp.quantities.QUANTITIES`: ``batch_grad``, ``batch_l2``,
        ``sum_grad_squared``, ``variance``, ``diag_ggn``, ``diag_ggn_mc``, ``kfac``, ``kflr``,
        ``diag_hessian`` and any registered since.
      mc_samples: samples of the loss Hessian's factor for the Monte Carlo quantities.
      train: the mode of stateful layers (default eval: BatchNorm uses its running statistics,
        Dropout is the identity; train-mode BatchNorm couples the examples and is refused).

    Returns:
      ``f(params, x, target, *, state=(), key=None) -> (value, grads, q)`` with ``q[name]`` in the
      params' tree structure (``kfac``/``kflr``: per param ``(A, G)``, or ``(G,)`` for a bias).
      ``key`` is needed by the Monte Carlo quantities (and by Dropout in train mode). Unsupported
      layers are refused at trace time with one line naming the level path, the layer and the quantity.
    """
    qs = lookup(names)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise UsageError(f"value_grad_and: mc_samples must be an integer >= 1, got {mc_samples!r}")
    first = tuple(q for q in qs if q.order == 1)
    second = tuple(q for q in qs if q.order == 2)
    factors = list(dict.fromkeys(q.factor for q in second))
    sampled = [q.name for q in second if q.factor.needs_key]

    def f(params: Params, x: Array, target: Array, *, state: State = (), key: Array | None = None):
        if sampled and key is None:
            raise UsageError(f"value_grad_and: {sampled} sample the loss Hessian and need key=")
        fkey, mkey = jax.random.split(key) if key is not None else (None, None)
        y, res, _ = apply(net, params, x, state=state, key=fkey, train=train)
        value, lres = loss.forward(y, target)
        n = x.shape[0] if hasattr(x, "shape") else jax.tree.leaves(x)[0].shape[0]
        parts = {q.name: q.leaf for q in first} | {f"aux:{q.name}": q.aux for q in second if q.aux}
        taps = {fac.name: fac.tap for fac in factors if fac.tap is not None}
        tree, tapped = walk_parts(net, params, res, loss.backward(lres), parts, n, quantities=qs, taps=taps)
        out = {q.name: pick(tree, q.name) for q in first}
        for fac in factors:
            mine = [q for q in second if q.factor is fac]
            S, weights, inject = fac.columns(
                loss, lres, mkey, mc_samples, tapped.get(fac.name, {}), mine[0].name
            )
            cols = column_walks(net, params, res, S, inject, {q.name: q.column for q in mine}, n, qs)
            for q in mine:
                aux = pick(tree, f"aux:{q.name}") if q.aux else None
                out[q.name] = q.finish(q.reduce(pick(cols, q.name), weights), aux)
        return value, pick(tree, "grad"), {q.name: out[q.name] for q in qs}

    return f


__all__ = ["QUANTITIES", "value_grad_and"]
