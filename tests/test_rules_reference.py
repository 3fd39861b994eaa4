"""jaxbp.rules against the NumPy reference (reference/numpy_rules.py), float64."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp import rules
from reference import numpy_rules as ref

F64 = jnp.float64
LOSS = jaxbp.SoftmaxCrossEntropy()


def tanh_mlp():
    return jaxbp.serial(
        jaxbp.Dense(6, param_dtype=F64),
        jaxbp.Tanh(),
        jaxbp.Dense(5, param_dtype=F64),
        jaxbp.Tanh(),
        jaxbp.Dense(3, param_dtype=F64),
    )


def setup():
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(7, 4)), rng.integers(0, 3, 7)
    net = tanh_mlp()
    _, params = net.init(jax.random.PRNGKey(1), x.shape)
    Ws = [np.asarray(params[i]["W"]) for i in (0, 2, 4)]
    bs = [np.asarray(params[i]["b"]) + 0.1 for i in (0, 2, 4)]
    params = tuple(
        {"W": jnp.asarray(W), "b": jnp.asarray(b)} if i % 2 == 0 else ()
        for i, (W, b) in enumerate(
            [(Ws[0], bs[0]), (None, None), (Ws[1], bs[1]), (None, None), (Ws[2], bs[2])]
        )
    )
    return net, params, Ws, bs, x, t


def close(grads, want):
    for got, (dW, db) in zip([grads[i] for i in (0, 2, 4)], want, strict=True):
        np.testing.assert_allclose(got["W"], dW, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(got["b"], db, rtol=1e-10, atol=1e-14)


def test_fa_and_sign_symmetry_match_numpy():
    net, params, Ws, bs, x, t = setup()
    for name in ("fa", "usf", "frsf"):
        R = rules.by_name(name, net, key=2)
        state = jaxbp.init_state(R, x.shape)
        stored = [np.asarray(state[1][p]) for p in ("0", "2", "4")]
        if name == "fa":
            Bs = stored
        elif name == "usf":
            Bs = [ref.sign_feedback(W, "usf", s=s) for W, s in zip(Ws, stored, strict=True)]
        else:
            Bs = [ref.sign_feedback(W, "frsf", R=r) for W, r in zip(Ws, stored, strict=True)]
        grads, _ = jaxbp.grad(R, LOSS)(params, jnp.asarray(x), jnp.asarray(t), state=state)
        close(grads, ref.feedback_grads(Ws, bs, Bs, x, t))


def test_dfa_matches_numpy():
    net, params, Ws, bs, x, t = setup()
    R = rules.direct_feedback_alignment(net, key=2)
    state = jaxbp.init_state(R, x.shape)
    Ds = [None, np.asarray(state[1]["2"]), np.asarray(state[1]["4"])]
    grads, _ = jaxbp.grad(R, LOSS)(params, jnp.asarray(x), jnp.asarray(t), state=state)
    close(grads, ref.dfa_grads(Ws, bs, Ds, x, t))


def test_ste_layers_match_numpy():
    rng = np.random.default_rng(1)
    x, g = 1.5 * rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    y, res = jaxbp.Sign().forward((), jnp.asarray(x))
    want_y, want_dx = ref.sign_ste(x, g)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(jaxbp.Sign().backward((), res, jnp.asarray(g))[1], want_dx)
    layer = jaxbp.BinaryDense(3, param_dtype=F64)
    _, p = layer.init(jax.random.PRNGKey(0), x.shape)
    gy = rng.normal(size=(4, 3))
    y, res = layer.forward(p, jnp.asarray(x))
    dp, dx = layer.backward(p, res, jnp.asarray(gy))
    want_y, (dW, db, wdx) = ref.binary_dense(np.asarray(p["W"]), np.asarray(p["b"]), x, gy)
    for a, b in ((y, want_y), (dp["W"], dW), (dp["b"], db), (dx, wdx)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_kolen_pollack_matches_numpy_over_steps():
    net, params, Ws, bs, x, t = setup()
    R = rules.kolen_pollack(net, key=2, decay=0.3)
    state = jaxbp.init_state(R, x.shape)
    Bs = [np.asarray(state[1][p]["B"]) for p in ("0", "2", "4")]
    grad = jax.jit(jaxbp.grad(R, LOSS))
    prev = None
    for _ in range(3):  # plain SGD on both sides; B as the rule defines it from the previous step
        if prev is not None:
            Bs = [ref.kolen_pollack_feedback(B, Wp, W, 0.3) for B, Wp, W in zip(Bs, prev, Ws, strict=True)]
        grads, state = grad(params, jnp.asarray(x), jnp.asarray(t), state=state)
        close(grads, ref.feedback_grads(Ws, bs, Bs, x, t))
        want = ref.feedback_grads(Ws, bs, Bs, x, t)
        prev = Ws
        Ws = [W - 0.5 * dW for W, (dW, _) in zip(Ws, want, strict=True)]
        bs = [b - 0.5 * db for b, (_, db) in zip(bs, want, strict=True)]
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)


def test_every_registered_rule_names_its_numpy_oracle():
    for name, rule in rules.RULES.items():
        assert name == "bp" or callable(getattr(ref, rule.reference, None)), (name, rule.reference)
