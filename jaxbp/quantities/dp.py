"""DP-SGD by ghost clipping: per-example clipping without per-example gradients.

One step (Abadi et al. 2016, with the per-example norms of Goodfellow 2015 / "ghost clipping"):

1. forward and the hand-written backward, each parameterised leaf giving ``batch_l2`` (the squared
   norm of ``∇ℓ_n / N`` per example, without forming it);
2. clip factors ``c_n = min(1, C / ||∇ℓ_n||)`` with ``||∇ℓ_n|| = N sqrt(sum_leaves batch_l2_n)``;
3. one more backward of the reweighted loss ``sum_n c_n ℓ_n``: the top cotangent's row n scaled by
   ``N c_n`` (the forward residuals are reused), giving ``sum_n c_n ∇ℓ_n``;
4. Gaussian noise ``σ C z`` added to that sum, divided by N, handed to the optimizer.

The privacy spent is computed by ``dp-accounting`` (RDP accountant, Poisson-subsampled Gaussian
with rate ``batch / n``; the trainer draws shuffled fixed-size batches, the usual approximation).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxbp.core import Array, Layer, Loss, apply, is_stateful
from jaxbp.errors import UsageError
from jaxbp.quantities.engine import pick, walk_parts
from jaxbp.quantities.first_order import BATCH_GRAD, BATCH_L2
from jaxbp.step import train_step_fn

METHODS = ("ghost", "materialised")


def _per_example_norms(tree, n: int) -> Array:
    """||∇ℓ_n|| from the per-leaf squared norms of ``∇ℓ_n / N`` (shape (N,) each)."""
    return n * jnp.sqrt(sum(jax.tree.leaves(tree)))


def clipped_sum(
    net: Layer, loss: Loss, params, x, target, *, clip: float, state=(), key=None, method: str = "ghost"
):
    """``(value, sum_n c_n ∇ℓ_n, new_state)`` with ``c_n = min(1, clip / ||∇ℓ_n||)``.

    ``∇ℓ_n`` is example n's gradient as the network's backward computes it: under a backward rule
    (:mod:`jaxbp.rules`) it is the rule's per-example update, and the rule is trained privately.
    ``method="ghost"``: norms from ``batch_l2``, then a second backward of the reweighted loss.
    ``method="materialised"``: the reference, from ``batch_grad`` (B copies of the params).
    """
    if method not in METHODS:
        raise UsageError(f"clipped_sum: method must be one of {METHODS}, got {method!r}")
    n = x.shape[0]
    y, res, new_state = apply(net, params, x, state=state, key=key, train=True)
    value, lres = loss.forward(y, target)
    g = loss.backward(lres)
    q = BATCH_L2 if method == "ghost" else BATCH_GRAD
    tree, _ = walk_parts(net, params, res, g, {q.name: q.leaf}, n, quantities=(q,), keep_grad=False)
    per_example = pick(tree, q.name)
    if method == "ghost":
        norms = _per_example_norms(per_example, n)
    else:
        norms = _per_example_norms(jax.tree.map(lambda a: jnp.sum(a.reshape(n, -1) ** 2, 1), per_example), n)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
    if method == "materialised":
        total = jax.tree.map(lambda a: jnp.tensordot(n * factor.astype(a.dtype), a, 1), per_example)
        return value, total, new_state
    # d(sum_n c_n ℓ_n)/dpred = N c_n * (row n of dL/dpred), L the mean loss
    scale = (n * factor).astype(g.dtype).reshape(n, *([1] * (g.ndim - 1)))
    total, _ = net.backward(params, res, g * scale)
    return value, total, new_state


def private_forward_backward(clip: float, noise: float, method: str = "ghost") -> Callable:
    """DP-SGD's gradient as a ``forward_backward`` of :func:`jaxbp.step.train_step_fn`'s signature.

    Returns ``(value, (sum_n clip_C(∇ℓ_n) + N(0, σ² C² I)) / N, new_state)``; the step key is split
    into the noise key and the forward's key (for random layers).
    """
    if not (isinstance(clip, (int, float)) and 0 < clip < float("inf")):
        raise UsageError(f"DP-SGD needs a finite clip > 0, got clip={clip!r}")
    if not (isinstance(noise, (int, float)) and 0 <= noise < float("inf")):
        raise UsageError(f"DP-SGD needs a finite noise multiplier >= 0, got noise={noise!r}")

    def forward_backward(net, loss, params, x, target, *, state, key, train):
        noise_key, fwd_key = jax.random.split(key)
        fwd_key = fwd_key if is_stateful(net) else None
        value, total, new_state = clipped_sum(
            net, loss, params, x, target, clip=clip, state=state, key=fwd_key, method=method
        )
        leaves, treedef = jax.tree.flatten(total)
        keys = jax.random.split(noise_key, len(leaves))
        noisy = [
            (a + noise * clip * jax.random.normal(k, a.shape, a.dtype)) / x.shape[0]
            for a, k in zip(leaves, keys, strict=True)
        ]
        return value, jax.tree.unflatten(treedef, noisy), new_state

    return forward_backward


def dp_train_step_fn(
    net: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    clip: float,
    noise: float,
    method: str = "ghost",
) -> Callable:
    """The DP-SGD step ``(train_state, x, target) -> (train_state, loss_value)``.

    :func:`jaxbp.step.train_step_fn` itself with :func:`private_forward_backward` as its gradient:
    the same train state and update; the optimizer receives ``(sum_n clip_C(∇ℓ_n) + N(0, σ² C² I)) / N``.
    Train-mode BatchNorm couples examples and is refused (use GroupNorm).

    Args:
      net, loss, optimizer: as for :func:`jaxbp.step.train_step_fn` (``net`` may be a rule net).
      clip: the per-example clipping norm C (> 0).
      noise: the noise multiplier σ (>= 0; 0 gives clipped, non-private SGD).
      method: ``"ghost"`` (default) or ``"materialised"`` (per-example gradients; the reference).
    """
    gradient = private_forward_backward(clip, noise, method)
    return train_step_fn(net, loss, optimizer, forward_backward=gradient, needs_key=True)


def epsilon(noise: float, batch_size: int, n: int, steps: int, delta: float = 1e-5) -> float:
    """ε spent after ``steps`` DP-SGD steps at ``delta`` (dp-accounting's RDP accountant).

    Each step is a Gaussian mechanism of noise multiplier ``noise`` on a Poisson sample of rate
    ``batch_size / n``. ``noise == 0`` gives ``inf``.
    """
    import dp_accounting

    if noise <= 0:
        return float("inf")
    if steps == 0:
        return 0.0
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(batch_size / n, dp_accounting.GaussianDpEvent(noise)), steps
    )
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, batch_size: int, n: int, steps: int, delta: float = 1e-5) -> float:
    """The smallest noise multiplier whose ε after ``steps`` is at most ``target`` (by bisection)."""
    import dp_accounting

    def make_event(sigma):
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(batch_size / n, dp_accounting.GaussianDpEvent(sigma)), steps
        )

    return float(
        dp_accounting.calibrate_dp_mechanism(
            dp_accounting.rdp.RdpAccountant,
            make_event,
            target,
            delta,
            dp_accounting.LowerEndpointAndGuess(0.1, 1.0),
        )
    )
