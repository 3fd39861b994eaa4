"""GroupNorm: the NumPy reference, per-example quantities in training mode, and private training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import rel_err

import jaxbp
from jaxbp.quantities.check import check_quantities
from reference import numpy_bp as ref
from reference import numpy_norm as ref_norm

F64 = jnp.float64


def test_k_sgd_steps_agree_with_numpy_reference():
    net = jaxbp.serial(
        jaxbp.Conv2D(4, (2, 2), padding="VALID"),
        jaxbp.GroupNorm(2),
        jaxbp.Tanh(),
        jaxbp.Flatten(),
        jaxbp.Dense(3),
    )
    shape = (5, 4, 4, 2)
    _, params = net.init(jax.random.PRNGKey(1), shape)
    params = jax.tree.map(lambda a: a.astype(F64) + 0.1, params)
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=shape), rng.integers(0, 3, 5)) for _ in range(4)]
    opt = optax.sgd(0.2)
    step = jaxbp.make_train_step(net, jaxbp.SoftmaxCrossEntropy(), opt)
    ts = jaxbp.TrainState(params, opt.init(params), (), jax.random.PRNGKey(0), jnp.zeros((), jnp.int32))
    start = [{k: np.array(v) for k, v in p.items()} if isinstance(p, dict) else {} for p in params]
    losses = []
    for x, t in data:
        ts, value = step(ts, jnp.asarray(x), jnp.asarray(t))
        losses.append(float(value))

    def conv(p, x):  # VALID 2x2 convolution as patches @ kernel, for the NumPy side only
        cols = np.stack([x[:, i : i + 3, j : j + 3, :] for i in range(2) for j in range(2)], axis=3)
        return cols.reshape(*cols.shape[:3], -1) @ p["kernel"].reshape(-1, 4) + p["bias"], (x, cols)

    def conv_backward(p, cache, g):
        x, cols = cache
        dk = cols.reshape(-1, cols.shape[-2] * cols.shape[-1]).T @ g.reshape(-1, 4)
        return {"kernel": dk.reshape(p["kernel"].shape), "bias": g.sum((0, 1, 2))}, None

    layers = [
        ref.RefLayer(conv, conv_backward),
        ref_norm.group_norm(2),
        ref.tanh(),
        ref.flatten(),
        ref.dense(),
    ]
    ref_params, ref_losses = ref.train_sgd(layers, start, ref.softmax_cross_entropy(), data, 0.2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for n, want in enumerate(ref_params):
        for k in want:
            assert rel_err(ts.params[n][k], want[k]) <= 1e-10, (n, k)


@pytest.mark.parametrize("affine", [(True, True), (False, True), (True, False)])
def test_per_example_quantities_hold_in_training_mode(affine):
    use_scale, use_bias = affine
    net = jaxbp.serial(
        jaxbp.Dense(6), jaxbp.GroupNorm(3, use_scale=use_scale, use_bias=use_bias), jaxbp.Tanh()
    )
    report = check_quantities(net, (4, 2, 5), ("batch_grad", "batch_l2", "variance", "kflr"), seeds=1)
    assert report.ok, str(report)
    assert {r.level for r in report.rows} == {"0", "1"}


def test_bad_configurations_are_refused():
    with pytest.raises(jaxbp.LayerError, match=r"GroupNorm\(3\).*divisible by 3 groups.*\(2, 4\)"):
        jaxbp.GroupNorm(3).init(jax.random.PRNGKey(0), (2, 4))
    with pytest.raises(jaxbp.LayerError, match="num_groups"):
        jaxbp.GroupNorm(0)
