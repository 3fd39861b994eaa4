"""Second-order quantities: the columns of a factor of the loss Hessian, walked down the backward.

With ``S`` a symmetric factor of the Hessian of the mean loss wrt the output (``sum_k S_kn S_knᵀ =
H_n`` for example n; :class:`~jaxbp.core.Loss` ``sqrt_hessian``), walking every column ``S_k``
down the hand-written backward gives ``J_nᵀ S_kn`` at every parameterised leaf, so

* ``diag_ggn``: the diagonal of ``Σ_n J_nᵀ H_n J_n`` is ``Σ_k Σ_n (J_nᵀ S_kn)²`` -- each column's
  ``sum_grad_squared``; ``diag_ggn_mc`` the same for sampled columns (the MC Fisher);
* ``kflr`` / ``kfac``: per Dense/Conv weight ``A ⊗ G`` with ``A = Σ x xᵀ / N`` (from the gradient's
  walk) and ``G = Σ_k`` of each column's (per-example summed) outer products; a vector param's
  block is exact (``(G,)``);
* ``diag_hessian``: the loss's columns plus, at each nonlinear element-wise leaf, the columns of its
  second-derivative residual ``g ⊙ f''(x)`` injected at its input (weight ±1).

Under a backward rule the columns walk the rule's backward: ``J_n`` is replaced by the rule's
transposed backward, giving the rule's own Gauss-Newton matrix (its diagonal and Kronecker blocks).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxbp.core import Kron
from jaxbp.errors import LayerError
from jaxbp.quantities.registry import At, Factor, Quantity, register, weighted_sum


def _loss_hook(loss, name: str, quantity: str):
    fn = getattr(loss, name)
    if fn is None:
        raise LayerError(
            f"loss {loss.name or 'loss'}: does not support the quantity {quantity!r}"
            f" (it has no hand-written {name})"
        )
    return fn


def _exact(loss, lres, key, samples, taps, quantity):
    return _loss_hook(loss, "sqrt_hessian", quantity)(lres), None, None


def _sampled(loss, lres, key, samples, taps, quantity):
    return _loss_hook(loss, "sqrt_hessian_mc", quantity)(lres, key, samples), None, None


def _residual(at: At):
    return at.call("hessian_residual", "diag_hessian")


def _hessian(loss, lres, key, samples, taps, quantity):
    """The loss's columns, then for each residual r its positive and negative parts.

    A residual ``r = g ⊙ f''(x)`` (B, ...) is the diagonal matrix ``diag(r_n)`` per example; it is
    ``sum_j sqrt(r+)_j e_j (.)ᵀ - sum_j sqrt(r-)_j e_j (.)ᵀ``: 2 D columns (D = size per example) of
    weight +1 and -1, injected at the leaf's input.
    """
    S = _loss_hook(loss, "sqrt_hessian", quantity)(lres)
    blocks = [(path, r) for path, r in taps.items() if r is not None]
    sizes = [2 * (r.size // r.shape[0]) for _, r in blocks]
    K0, K = S.shape[0], S.shape[0] + sum(sizes)
    top = jnp.concatenate([S, jnp.zeros((K - K0, *S.shape[1:]), S.dtype)])
    weights, inject, start = [jnp.ones(K0, S.dtype)], {}, K0
    for (path, r), size in zip(blocks, sizes, strict=True):
        D = size // 2
        eye = jnp.eye(D, dtype=S.dtype).reshape(D, 1, *r.shape[1:])
        cols = jnp.concatenate(
            [eye * jnp.sqrt(jnp.maximum(r, 0))[None], eye * jnp.sqrt(jnp.maximum(-r, 0))[None]]
        )
        inject[path] = jnp.pad(cols.astype(S.dtype), ((start, K - start - size),) + ((0, 0),) * r.ndim)
        weights += [jnp.ones(D, S.dtype), -jnp.ones(D, S.dtype)]
        start += size
    return top, jnp.concatenate(weights), inject


EXACT = Factor("exact", _exact)
SAMPLED = Factor("mc", _sampled, needs_key=True)
HESSIAN = Factor("hessian", _hessian, tap=_residual)


def _diag(quantity: str):
    return lambda at: at.sum_grad_squared(quantity)


def _kron_G(quantity: str):
    def column(at: At):
        return jax.tree.map(lambda k: Kron(None, k.G), at.call("kron", quantity), is_leaf=_is_kron)

    return column


def _kron_A(quantity: str):
    def aux(at: At):
        return jax.tree.map(lambda k: Kron(k.A, None), at.call("kron", quantity), is_leaf=_is_kron)

    return aux


def _is_kron(v) -> bool:
    return isinstance(v, Kron)


def _sum_G(stacked, weights):
    return jax.tree.map(lambda k: Kron(None, k.G.sum(0)), stacked, is_leaf=_is_kron)


def _join(g_tree, a_tree):
    """Kron(A, _) from the gradient's walk and Kron(_, G) from the columns -> (A, G), or (G,) for a bias."""
    return jax.tree.map(lambda a, g: (g.G,) if a.A is None else (a.A, g.G), a_tree, g_tree, is_leaf=_is_kron)


def _kron_compare(hand, ggn_block, shape):
    """A bias's (G,) is the exact GGN block; a weight's (A, G) is only checked for its shapes."""
    if len(hand) == 1:
        return hand[0], ggn_block, ""
    A, G = hand
    n = math.prod(shape)
    ok = A.shape[0] * G.shape[0] == n and A.shape[0] == A.shape[1] and G.shape[0] == G.shape[1]
    return (
        jnp.zeros(1) if ok else jnp.ones(1),
        jnp.zeros(1),
        f"A {A.shape}, G {G.shape} for a param of shape {shape}",
    )


def _diag_quantity(name, factor, oracle, oracle_summary, summary, column=None, under_rules=None):
    return Quantity(
        name,
        summary,
        oracle=oracle,
        oracle_summary=oracle_summary,
        factor=factor,
        column=column or _diag(name),
        reduce=weighted_sum,
        finish=lambda reduced, aux: reduced,
        under_rules=under_rules,
    )


def _kron_quantity(name, factor, oracle, oracle_summary, summary):
    return Quantity(
        name,
        summary,
        oracle=oracle,
        oracle_summary=oracle_summary,
        factor=factor,
        column=_kron_G(name),
        reduce=_sum_G,
        aux=_kron_A(name),
        finish=_join,
        compare=_kron_compare,
    )


DIAG_GGN = register(
    _diag_quantity(
        "diag_ggn",
        EXACT,
        lambda o: o.unravel(jnp.diag(o.ggn)),
        "diag of J_nᵀ H_n J_n summed over n (jax.jacobian, jax.hessian)",
        "the diagonal of the generalised Gauss-Newton matrix (1/N) Σ_n J_nᵀ H_n J_n of the mean loss",
    )
)
DIAG_GGN_MC = register(
    _diag_quantity(
        "diag_ggn_mc",
        SAMPLED,
        lambda o: o.unravel(jnp.diag(o.ggn_mc)),
        "diag of J_nᵀ s_n s_nᵀ J_n for the sampled factor s (jax.jacobian)",
        "diag_ggn with the loss Hessian replaced by sampled outer products (the MC Fisher)",
    )
)
KFLR = register(
    _kron_quantity(
        "kflr",
        EXACT,
        lambda o: o.ggn,
        "bias: exact GGN block (jax.jacobian); W: shapes of A (in, in) and G (out, out)",
        "per weight (A, G) with its GGN block ≈ A ⊗ G from the exact loss factor; (G,) per vector param",
    )
)
KFAC = register(
    _kron_quantity(
        "kfac",
        SAMPLED,
        lambda o: o.ggn_mc,
        "bias: GGN block of the sampled factor (jax.jacobian); W: shapes of A and G",
        "kflr with sampled columns of the loss Hessian (the MC Fisher's Kronecker factors)",
    )
)
DIAG_HESSIAN = register(
    _diag_quantity(
        "diag_hessian",
        HESSIAN,
        lambda o: o.unravel(jnp.diag(o.hessian)),
        "diag of jax.hessian of the loss wrt the params",
        "the diagonal of the Hessian of the mean loss wrt the params (GGN plus the residual terms)",
        under_rules="it is the Hessian of the loss; a rule's backward is not a derivative",
    )
)
