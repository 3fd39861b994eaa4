"""First-order quantities: per-example gradients and what is read from them (BackPACK's scaling).

For a mean-reduced loss over N examples, example n's share of the gradient is ``∇ℓ_n / N``
(``batch_grad``; the shares sum to the gradient). Under a backward rule the shares are those of
the rule's own update (the rule's backward is what the walk runs), and they sum to it.
"""

from __future__ import annotations

import jax

from jaxbp.quantities.registry import At, Quantity, register


def _variance(at: At):
    # BackPACK: the mean over examples of batch_grad² (times N²/N) minus the square of the mean
    sgs = at.sum_grad_squared("variance")
    return jax.tree.map(lambda s, d: s / at.n - (d / at.n) ** 2, sgs, at.dparams)


BATCH_GRAD = register(
    Quantity(
        "batch_grad",
        "example n's share of the gradient, ∇ℓ_n / N (batch axis first); sums to the gradient",
        oracle=lambda o: o.per_example,
        oracle_summary="vmap(jax.grad) per example / N",
        leaf=lambda at: at.batch_grad("batch_grad"),
    )
)
BATCH_L2 = register(
    Quantity(
        "batch_l2",
        "||∇ℓ_n / N||² per example, (N,) per param (the norm of example n's gradient is N sqrt(Σ batch_l2))",
        oracle=lambda o: jax.tree.map(lambda a: (a.reshape(a.shape[0], -1) ** 2).sum(1), o.per_example),
        oracle_summary="squared norms of vmap(jax.grad) per example / N",
        leaf=lambda at: at.batch_l2("batch_l2"),
    )
)
SUM_GRAD_SQUARED = register(
    Quantity(
        "sum_grad_squared",
        "Σ_n (∇ℓ_n / N)², elementwise",
        oracle=lambda o: jax.tree.map(lambda a: (a**2).sum(0), o.per_example),
        oracle_summary="sum of squares of vmap(jax.grad) per example / N",
        leaf=lambda at: at.sum_grad_squared("sum_grad_squared"),
    )
)
VARIANCE = register(
    Quantity(
        "variance",
        "sum_grad_squared / N - (grad / N)²: the variance over examples of ∇ℓ_n, divided by N²",
        oracle=lambda o: jax.tree.map(lambda a: a.var(0), o.per_example),
        oracle_summary="variance over examples of vmap(jax.grad) / N",
        leaf=_variance,
    )
)
