"""Updates are optax transformations: sgd is ω ← ω − η·dL/dω; chains work unchanged; the compiled step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_trees_close

import jaxbp

NET = jaxbp.serial(jaxbp.Dense(8), jaxbp.Tanh(), jaxbp.Dense(3))
LOSS = jaxbp.SoftmaxCrossEntropy()


def batch(key, n=6):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, (n, 5)), jax.random.randint(k2, (n,), 0, 3)


def test_sgd_is_omega_minus_eta_grad_leaf_by_leaf(key):
    eta = 0.3
    _, params = NET.init(key, (6, 5))
    x, y = batch(key)
    _, grads = jax.jit(jaxbp.value_and_grad(NET, LOSS))(params, x, y)
    opt = optax.sgd(eta)
    updates, _ = opt.update(grads, opt.init(params), params)  # eager: bit-exact, no fused multiply-add
    new = optax.apply_updates(params, updates)
    for p, g, n in zip(jax.tree.leaves(params), jax.tree.leaves(grads), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(n, p - eta * g)


CHAINS = {
    "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    "weight_decay_clip_cosine": lambda: optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.add_decayed_weights(1e-3),
        optax.sgd(optax.cosine_decay_schedule(0.1, 10), momentum=0.9),
    ),
    "adamw": lambda: optax.adamw(1e-2),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_optax_chains_take_jaxbp_grads_like_jax_grads(name, key):
    """K steps with jaxbp gradients == K steps with jax.grad gradients through the same optax chain."""
    opt = CHAINS[name]()
    _, params = NET.init(key, (6, 5))
    params_ref = params
    state, state_ref = opt.init(params), opt.init(params)

    def step(grad_fn):
        @jax.jit
        def run(p, s, x, y):
            u, s = opt.update(grad_fn(p, x, y), s, p)
            return optax.apply_updates(p, u), s

        return run

    manual = step(jaxbp.grad(NET, LOSS))
    oracle = step(lambda p, x, y: jax.grad(lambda p: LOSS.forward(NET.forward(p, x)[0], y)[0])(p))
    for k in jax.random.split(key, 4):
        x, y = batch(k)
        params, state = manual(params, state, x, y)
        params_ref, state_ref = oracle(params_ref, state_ref, x, y)
    assert_trees_close(params, params_ref, 1e-5)


def test_compiled_train_step_matches_manual_update_and_donates(key):
    opt = optax.sgd(0.5)
    _, ts = jaxbp.init_train_state(NET, opt, key, (6, 5))
    params0 = jax.tree.map(jnp.copy, ts.params)
    step = jaxbp.make_train_step(NET, LOSS, opt)
    x, y = batch(key)
    old_leaf = jax.tree.leaves(ts.params)[0]
    ts, loss = step(ts, x, y)
    assert old_leaf.is_deleted(), "params should be donated to the compiled step"
    value, grads = jaxbp.value_and_grad(NET, LOSS)(params0, x, y)
    np.testing.assert_allclose(loss, value, rtol=1e-6)
    assert_trees_close(ts.params, jax.tree.map(lambda p, g: p - 0.5 * g, params0, grads), 1e-6)
    assert int(ts.step) == 1
    hlo = step.lower(ts, x, y).as_text()
    assert "custom_call" not in hlo and "callback" not in hlo


def test_training_reduces_loss(key):
    opt = optax.sgd(0.5, momentum=0.9)
    _, ts = jaxbp.init_train_state(NET, opt, key, (32, 5))
    x, _ = batch(key, 32)
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 1).astype(jnp.int32)
    step = jaxbp.make_train_step(NET, LOSS, opt)
    first = None
    for _ in range(60):
        ts, loss = step(ts, x, y)
        first = loss if first is None else first
    assert loss < 0.3 * first
