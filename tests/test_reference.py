"""jaxbp and the independent NumPy reference agree after K SGD steps (float64, 1e-10 relative)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import rel_err

import jaxbp
from reference import numpy_bp as ref

K = 5
LR = 0.2
ACTS = {
    "relu": (jaxbp.Relu, ref.relu),
    "leaky_relu": (lambda: jaxbp.LeakyRelu(0.1), lambda: ref.leaky_relu(0.1)),
    "tanh": (jaxbp.Tanh, ref.tanh),
    "sigmoid": (jaxbp.Sigmoid, ref.sigmoid),
    "gelu": (jaxbp.Gelu, ref.gelu),
    "gelu_exact": (lambda: jaxbp.Gelu(False), lambda: ref.gelu(False)),
    "softplus": (jaxbp.Softplus, ref.softplus),
    "elu": (lambda: jaxbp.Elu(0.5), lambda: ref.elu(0.5)),
}
LOSSES = {
    "ce": (jaxbp.SoftmaxCrossEntropy, ref.softmax_cross_entropy),
    "mse": (jaxbp.MeanSquaredError, ref.mean_squared_error),
    "bce": (jaxbp.BinaryCrossEntropyWithLogits, ref.binary_cross_entropy_with_logits),
}


def to_numpy_params(params):
    return [
        {k: np.asarray(v, np.float64) for k, v in p.items()} if isinstance(p, dict) else {} for p in params
    ]


def batches(loss_name, rng):
    out = []
    for _ in range(K):
        x = rng.normal(size=(8, 2, 3))
        if loss_name == "ce":
            t = rng.integers(0, 4, size=8)
        elif loss_name == "bce":
            t = (rng.random((8, 4)) < 0.5).astype(np.float64)
        else:
            t = rng.normal(size=(8, 4))
        out.append((x, t))
    return out


CASES = [(a, "ce") for a in sorted(ACTS)] + [("tanh", "mse"), ("gelu", "bce")]


@pytest.mark.parametrize(("act", "loss_name"), CASES)
def test_k_sgd_steps_agree_with_numpy_reference(act, loss_name):
    jact, ract = ACTS[act]
    jloss, rloss = LOSSES[loss_name]
    net = jaxbp.serial(jaxbp.Flatten(), jaxbp.Dense(10), jact(), jaxbp.Dense(7), jact(), jaxbp.Dense(4))
    ref_layers = [ref.flatten(), ref.dense(), ract(), ref.dense(), ract(), ref.dense()]
    _, params = net.init(jax.random.PRNGKey(1), (8, 2, 3))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    data = batches(loss_name, np.random.default_rng(0))

    opt = optax.sgd(LR)
    _, ts = jaxbp.init_train_state(net, opt, jax.random.PRNGKey(0), (8, 2, 3))
    ts = ts._replace(params=params, opt_state=opt.init(params))
    step = jaxbp.make_train_step(net, jloss(), opt)
    start = to_numpy_params(params)
    losses = []
    for x, t in data:
        ts, value = step(ts, jnp.asarray(x), jnp.asarray(t))
        losses.append(float(value))

    ref_params, ref_losses = ref.train_sgd(ref_layers, start, rloss(), data, LR)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for got, want in zip(to_numpy_params(ts.params), ref_params, strict=True):
        for k in want:
            assert rel_err(got[k], want[k]) <= 1e-10, (k, rel_err(got[k], want[k]))
    assert rel_err(to_numpy_params(ts.params)[1]["W"], start[1]["W"]) > 1e-3  # training moved the params
