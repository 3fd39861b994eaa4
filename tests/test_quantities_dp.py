"""DP-SGD by ghost clipping against the per-example reference (vmap(jax.grad)), float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import compiled

from jaxbp.combinators import Residual, serial
from jaxbp.core import apply
from jaxbp.errors import LayerError, UsageError
from jaxbp.layers.activations import Tanh
from jaxbp.layers.conv import Conv2D
from jaxbp.layers.dense import Dense
from jaxbp.layers.norm import BatchNorm
from jaxbp.layers.shape import Flatten
from jaxbp.losses import SoftmaxCrossEntropy
from jaxbp.quantities import dp_train_step_fn, epsilon
from jaxbp.quantities.dp import noise_for_epsilon
from jaxbp.step import init_train_state


def reference_update(net, loss, params, x, t, clip):
    """sum_n min(1, C / ||∇ℓ_n||) ∇ℓ_n / N by vmap(jax.grad) (per-example gradients formed)."""

    def ell(p, xi, ti):
        return loss.forward(apply(net, p, xi[None])[0], ti[None])[0]

    pe = jax.vmap(lambda xi, ti: jax.grad(ell)(params, xi, ti))(x, t)
    norms = jnp.sqrt(sum(jnp.sum(a.reshape(len(x), -1) ** 2, 1) for a in jax.tree.leaves(pe)))
    c = jnp.minimum(1.0, clip / norms)
    return jax.tree.map(lambda a: jnp.tensordot(c, a, 1) / len(x), pe), c


@pytest.mark.parametrize("method", ["ghost", pytest.param("materialised", marks=pytest.mark.slow)])
def test_clipped_update_equals_the_per_example_reference(key, method):
    net = serial(Conv2D(2, 2, padding="VALID"), Tanh(), Flatten(), Dense(4), Residual(Dense(4)), Dense(3))
    x = jax.random.normal(key, (6, 3, 3, 1), jnp.float64)
    t = jnp.array([0, 1, 2, 0, 1, 2])
    loss = SoftmaxCrossEntropy()
    _, ts = init_train_state(net, optax.sgd(1.0), key, x.shape)
    ts = ts._replace(params=jax.tree.map(lambda a: a.astype(jnp.float64) * 3, ts.params))
    ts = ts._replace(opt_state=optax.sgd(1.0).init(ts.params))
    want, c = compiled(lambda p, x, t: reference_update(net, loss, p, x, t, clip=0.3), ts.params, x, t)
    assert 0 < c.min() < 1 and c.max() <= 1  # some examples clipped
    step = dp_train_step_fn(net, loss, optax.sgd(1.0), clip=0.3, noise=0.0, method=method)
    new, value = compiled(step, ts, x, t)
    got = jax.tree.map(lambda a, b: a - b, ts.params, new.params)  # sgd(1): params - update
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    np.testing.assert_allclose(value, loss.forward(apply(net, ts.params, x)[0], t)[0], rtol=1e-12)


@pytest.mark.slow
def test_noise_is_sigma_c_over_n_and_keyed(key):
    net = serial(Dense(3))
    x = jax.random.normal(key, (4, 2), jnp.float64)
    t = jnp.array([0, 1, 2, 0])
    _, ts = init_train_state(net, optax.sgd(1.0), key, x.shape)
    ts = ts._replace(params=jax.tree.map(lambda a: a.astype(jnp.float64), ts.params))
    quiet = dp_train_step_fn(net, SoftmaxCrossEntropy(), optax.sgd(1.0), clip=1.0, noise=0.0)
    noisy = dp_train_step_fn(net, SoftmaxCrossEntropy(), optax.sgd(1.0), clip=1.0, noise=2.0)
    a, _ = quiet(ts, x, t)
    b, _ = noisy(ts, x, t)
    b2, _ = noisy(ts, x, t)
    diff = (a.params[0]["W"] - b.params[0]["W"]) * 4 / (2.0 * 1.0)  # (σ C z / N) -> z
    np.testing.assert_array_equal(b.params[0]["W"], b2.params[0]["W"])
    assert 0.3 < float(jnp.std(diff)) < 3  # standard normal draws, 6 of them


def test_dp_refuses_train_mode_batchnorm_and_bad_flags(key):
    net = serial(Dense(3), BatchNorm(), Dense(2))
    _, ts = init_train_state(net, optax.sgd(0.1), key, (4, 2))
    step = dp_train_step_fn(net, SoftmaxCrossEntropy(), optax.sgd(0.1), clip=1.0, noise=1.0)
    with pytest.raises(LayerError, match="eval mode"):
        jax.eval_shape(step, ts, jnp.ones((4, 2)), jnp.array([0, 1, 0, 1]))
    with pytest.raises(UsageError):
        dp_train_step_fn(net, SoftmaxCrossEntropy(), optax.sgd(0.1), clip=0.0, noise=1.0)


def test_epsilon_from_dp_accounting():
    eps = epsilon(1.1, 256, 60000, 60 * 234)
    assert 2 < eps < 4  # Abadi et al.: σ = 1.1, q = 0.01, 60 epochs -> ε ≈ 3 (moments accountant)
    assert epsilon(1.1, 256, 60000, 10) < eps
    assert epsilon(0.0, 256, 60000, 10) == float("inf")
    sigma = noise_for_epsilon(3.0, 256, 60000, 60 * 234)
    assert abs(epsilon(sigma, 256, 60000, 60 * 234) - 3.0) < 0.05


@pytest.mark.slow
def test_train_cli_dp_flags(tmp_path, capsys):
    import json

    from jaxbp import cli

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    args = ["train", "--dataset", "npz", "--data-dir", str(tmp_path / "d.npz"), "--epochs", "2"]
    args += ["--batch-size", "16", "--widths", "8", "--json", "--dp-clip", "1.0", "--dp-noise", "1.0"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("privacy after epoch 2: epsilon")
    summary = json.loads(out[-1])
    assert summary["epsilon"] == pytest.approx(epsilon(1.0, 16, 64, 8), rel=1e-9)
    assert cli.main([*args[:-2]]) == 2  # --dp-clip without --dp-noise
