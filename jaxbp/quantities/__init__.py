"""More from one backward: per-example gradients, their norms, variance and curvature.

:func:`value_grad_and` walks the network with :func:`jaxbp.combinators.walk_backward` and reads
each leaf's hand-written :class:`~jaxbp.core.PerExample` hooks. Every quantity is an entry of
the registry :data:`QUANTITIES` (:mod:`jaxbp.quantities.registry`: :func:`register` adds one).
Scalings follow BackPACK for a mean-reduced loss over N examples:

* ``batch_grad``: the gradient of example n's share of the loss, ``∇ℓ_n / N``; sums to the gradient.
* ``batch_l2``: ``||batch_grad_n||²`` per example, shape (N,) per param.
* ``sum_grad_squared``: ``sum_n batch_grad_n²``; ``variance``: ``sgs / N - (grad / N)²``.
* ``diag_ggn`` / ``diag_ggn_mc``: the diagonal of ``(1/N) sum_n J_nᵀ H_n J_n`` (exact / one MC sample).
* ``kflr`` / ``kfac``: per Dense/Conv param ``(A, G)`` with ``A = sum x xᵀ / N`` and ``G`` from the
  exact / MC factor of the loss Hessian; the block of ``W (in, out)`` is approximated by ``A ⊗ G``.
* ``diag_hessian``: the diagonal of the Hessian of the loss wrt the params.

Under a backward rule (:mod:`jaxbp.rules`) the walk runs the rule's backward, so each quantity is
the rule's (see docs/quantities.md for the table); ``diag_hessian`` is refused there.
:func:`dp_train_step_fn` (in :mod:`jaxbp.quantities.dp`) trains with DP-SGD by ghost clipping.
"""

from jaxbp.quantities import first_order as _first_order  # noqa: F401  (registers the first-order ones)

# isort: split
from jaxbp.quantities import curvature as _curvature  # noqa: F401  (then the second-order ones)

# isort: split
from jaxbp.core import Kron as Kron
from jaxbp.quantities.api import value_grad_and as value_grad_and
from jaxbp.quantities.dp import dp_train_step_fn as dp_train_step_fn
from jaxbp.quantities.dp import epsilon as epsilon
from jaxbp.quantities.registry import QUANTITIES as QUANTITIES
from jaxbp.quantities.registry import Quantity as Quantity
from jaxbp.quantities.registry import register as register

NAMES = tuple(QUANTITIES)  # the built-in quantities; QUANTITIES is the live registry

__all__ = [
    "NAMES",
    "QUANTITIES",
    "Kron",
    "Quantity",
    "dp_train_step_fn",
    "epsilon",
    "register",
    "value_grad_and",
]
