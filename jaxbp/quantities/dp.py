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
from jaxbp.quantities.engine import first_order_leaf, pick, walk_bundles
from jaxbp.step import TrainState

METHODS = ("ghost", "materialised")


def _per_example_norms(tree, n: int) -> Array:
    """||∇ℓ_n|| from the per-leaf squared norms of ``∇ℓ_n / N`` (shape (N,) each)."""
    return n * jnp.sqrt(sum(jax.tree.leaves(tree)))


def clipped_sum(
    net: Layer, loss: Loss, params, x, target, *, clip: float, state=(), key=None, method: str = "ghost"
):
    """``(value, sum_n c_n ∇ℓ_n, new_state)`` with ``c_n = min(1, clip / ||∇ℓ_n||)``.

    ``method="ghost"``: norms from ``batch_l2``, then a second backward of the reweighted loss.
    ``method="materialised"``: the reference, from ``batch_grad`` (B copies of the params).
    """
    if method not in METHODS:
        raise UsageError(f"clipped_sum: method must be one of {METHODS}, got {method!r}")
    n = x.shape[0]
    y, res, new_state = apply(net, params, x, state=state, key=key, train=True)
    value, lres = loss.forward(y, target)
    g = loss.backward(lres)
    name = "batch_l2" if method == "ghost" else "batch_grad"
    tree, _ = walk_bundles(net, params, res, g, first_order_leaf((name,), n, None))
    q = pick(tree, name)
    if method == "ghost":
        norms = _per_example_norms(q, n)
    else:
        norms = _per_example_norms(jax.tree.map(lambda a: jnp.sum(a.reshape(n, -1) ** 2, 1), q), n)
    factor = jnp.minimum(1.0, clip / jnp.maximum(norms, 1e-30))
    if method == "materialised":
        total = jax.tree.map(lambda a: jnp.tensordot(n * factor.astype(a.dtype), a, 1), q)
        return value, total, new_state
    # d(sum_n c_n ℓ_n)/dpred = N c_n * (row n of dL/dpred), L the mean loss
    scale = (n * factor).astype(g.dtype).reshape(n, *([1] * (g.ndim - 1)))
    total, _ = net.backward(params, res, g * scale)
    return value, total, new_state


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

    Same signature and train state as :func:`jaxbp.step.train_step_fn`; the optimizer receives
    ``(sum_n clip_C(∇ℓ_n) + N(0, σ² C² I)) / N``. The key is split every step (noise, and the
    forward's key for random layers). Train-mode BatchNorm couples examples and is refused.

    Args:
      net, loss, optimizer: as for :func:`jaxbp.step.train_step_fn`.
      clip: the per-example clipping norm C (> 0).
      noise: the noise multiplier σ (>= 0; 0 gives clipped, non-private SGD).
      method: ``"ghost"`` (default) or ``"materialised"`` (per-example gradients; the reference).
    """
    if not clip > 0 or noise < 0:
        raise UsageError(f"DP-SGD needs clip > 0 and noise >= 0, got clip={clip}, noise={noise}")
    random = is_stateful(net)

    def step(ts: TrainState, x: Array, target: Array) -> tuple[TrainState, Array]:
        key, noise_key, fwd_key = jax.random.split(ts.key, 3)
        value, total, new_state = clipped_sum(
            net,
            loss,
            ts.params,
            x,
            target,
            clip=clip,
            state=ts.state,
            key=fwd_key if random else None,
            method=method,
        )
        leaves, treedef = jax.tree.flatten(total)
        keys = jax.random.split(noise_key, len(leaves))
        noisy = [
            (a + noise * clip * jax.random.normal(k, a.shape, a.dtype)) / x.shape[0]
            for a, k in zip(leaves, keys, strict=True)
        ]
        grads = jax.tree.unflatten(treedef, noisy)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        return TrainState(params, opt_state, new_state, key, ts.step + 1), value

    return step


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
