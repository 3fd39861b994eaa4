"""as_custom_vjp and per_example_grads: JAX transformations running the hand-written backward."""

import jax
import jax.numpy as jnp
import optax
from harness import assert_trees_close, cast_floats

from jaxbp.backprop import value_and_grad
from jaxbp.combinators import serial
from jaxbp.core import Layer, apply, init_state
from jaxbp.interop import as_custom_vjp, per_example_grads
from jaxbp.layers.activations import Relu, Tanh
from jaxbp.layers.dense import Dense
from jaxbp.losses import SoftmaxCrossEntropy

TOL = 1e-12  # float64 throughout
B, D, C = 4, 6, 3
LOSS = SoftmaxCrossEntropy()


def TestDropout(rate: float = 0.5) -> Layer:
    """Inverted dropout with a step counter in its state: any shape -> same shape (test-only)."""

    def init(key, input_shape):
        return tuple(input_shape), ()

    def init_state_fn(input_shape):
        return {"count": jnp.zeros((), jnp.float32)}

    def forward(params, x, *, state, key, train):
        keep = jax.random.bernoulli(key, 1 - rate, x.shape)
        return jnp.where(keep, x / (1 - rate), 0), keep, {"count": state["count"] + 1}

    def backward(params, keep, g):
        # dx = g * keep / (1 - rate)
        return (), jnp.where(keep, g / (1 - rate), 0)

    return Layer(init, forward, backward, init_state=init_state_fn, name="TestDropout")


def setup(net, key):
    kp, kx, kt = jax.random.split(key, 3)
    params = cast_floats(net.init(kp, (B, D))[1], jnp.float64)
    x = jax.random.normal(kx, (B, D), jnp.float64)
    t = jax.random.randint(kt, (B,), 0, C)
    return params, x, t


def mlp():
    return serial(Dense(5), Tanh(), Dense(5), Relu(), Dense(C))


def autodiff_loss(net, params, x, t, **kw):
    """The oracle: the loss as plain JAX code (net.forward), differentiated by jax.grad."""
    return LOSS.forward(apply(net, params, x, **kw)[0], t)[0]


def test_jax_grad_through_it_equals_manual_value_and_grad(key):
    net = mlp()
    params, x, t = setup(net, key)
    f = as_custom_vjp(net)
    # t passes through jit as an argument: SoftmaxCrossEntropy's label check needs it traced or concrete
    value, grads = jax.jit(jax.value_and_grad(lambda p, t: LOSS.forward(f(p, x), t)[0]))(params, t)
    want_value, want = jax.jit(value_and_grad(net, LOSS))(params, x, t)
    assert abs(float(value - want_value)) <= TOL
    assert_trees_close(grads, want, TOL, "jax.grad(as_custom_vjp)")
    dx = jax.jit(jax.grad(lambda x, t: LOSS.forward(f(params, x), t)[0]))(x, t)
    dx_want = jax.jit(jax.grad(lambda x, t: autodiff_loss(net, params, x, t)))(x, t)
    assert_trees_close(dx, dx_want, TOL, "dx")


def test_the_rule_is_the_hand_written_backward(key):
    # a straight-through sign: autodiff of its forward gives 0, its backward passes g through
    def init(key, input_shape):
        return tuple(input_shape), ()

    def forward(params, x):
        return jnp.sign(x), None

    def backward(params, res, g):
        # dx = g   (straight-through estimator)
        return (), g

    f = as_custom_vjp(Layer(init, forward, backward, name="SignST"))
    x = jnp.array([-2.0, 0.5, 3.0])
    assert jnp.array_equal(jax.grad(lambda x: (f((), x) * x).sum())(x), jnp.sign(x) + x)


def test_vmap_grad_gives_per_example_manual_gradients(key):
    net = mlp()
    params, x, t = setup(net, key)
    f = as_custom_vjp(net)

    def example_loss(p, x_i, t_i):
        return LOSS.forward(f(p, x_i[None]), t_i[None])[0]

    got = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))(params, x, t)
    losses, manual = jax.jit(per_example_grads(net, LOSS))(params, x, t)
    oracle = jax.jit(
        jax.vmap(
            jax.grad(lambda p, x_i, t_i: autodiff_loss(net, p, x_i[None], t_i[None])), in_axes=(None, 0, 0)
        )
    )(params, x, t)
    assert losses.shape == (B,)
    assert_trees_close(manual, oracle, TOL, "per_example_grads vs vmap(jax.grad)")
    assert_trees_close(got, oracle, TOL, "vmap(jax.grad(as_custom_vjp))")
    _, batch = jax.jit(value_and_grad(net, LOSS))(params, x, t)
    assert_trees_close(jax.tree.map(lambda a: a.mean(0), manual), batch, TOL, "mean of per-example grads")


def test_composes_with_foreign_jax_code_and_optax(key):
    # sin features @ A (not jaxbp) -> jaxbp network -> a jnp head; adam over all three
    net = mlp()
    params, x, t = setup(net, key)
    ka, kh = jax.random.split(key)
    theta = {"A": jax.random.normal(ka, (D, D)), "net": params, "head": jax.random.normal(kh, (C, C))}
    f = as_custom_vjp(net)
    opt = optax.adam(1e-2)

    def program(run_net):
        def objective(th):
            logits = jnp.tanh(run_net(th["net"], jnp.sin(x) @ th["A"])) @ th["head"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()

        @jax.jit
        def step(th, opt_state):
            value, g = jax.value_and_grad(objective)(th)
            updates, opt_state = opt.update(g, opt_state)
            return optax.apply_updates(th, updates), opt_state, value, g

        return step

    step_manual = program(f)
    step_oracle = program(lambda p, h: apply(net, p, h)[0])
    th_m, th_o, s_m, s_o = theta, theta, opt.init(theta), opt.init(theta)
    values = []
    for _ in range(3):
        th_m, s_m, v_m, g_m = step_manual(th_m, s_m)
        th_o, s_o, v_o, g_o = step_oracle(th_o, s_o)
        assert_trees_close(g_m, g_o, 1e-10, "grads of the whole program")
        values.append(float(v_m))
    assert_trees_close(th_m, th_o, 1e-10, "params after 3 adam steps")
    assert values[-1] < values[0]


def test_stateful_network(key):
    net = serial(Dense(5), Relu(), TestDropout(), Dense(C))
    params, x, t = setup(net, key)
    state, k = init_state(net, (B, D)), jax.random.PRNGKey(7)
    f = as_custom_vjp(net)

    def objective(p, t):
        y, new_state = f(p, x, state, k)
        return LOSS.forward(y, t)[0], new_state

    (value, new_state), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params, t)
    manual_vg = jax.jit(lambda p, x, t: value_and_grad(net, LOSS)(p, x, t, state=state, key=k))
    (want_value, want_state), want = manual_vg(params, x, t)
    assert abs(float(value - want_value)) <= TOL
    assert_trees_close(grads, want, TOL, "stateful grads")
    assert float(new_state[2]["count"]) == 1.0 == float(want_state[2]["count"])

    pe = per_example_grads(net, LOSS)
    _, manual = jax.jit(lambda p, x, t: pe(p, x, t, state=state, key=k, train=True))(params, x, t)
    oracle = jax.jit(
        jax.vmap(
            jax.grad(
                lambda p, i, x_i, t_i: autodiff_loss(
                    net, p, x_i[None], t_i[None], state=state, key=jax.random.fold_in(k, i), train=True
                )
            ),
            in_axes=(None, 0, 0, 0),
        )
    )(params, jnp.arange(B), x, t)
    assert_trees_close(manual, oracle, TOL, "stateful per_example_grads")


# --- where users come from: a jaxbp network inside an equinox.Module and a flax.nnx.Module ---

STEPS = 3


def _head_and_params(key):
    net = mlp()
    params, x, t = setup(net, key)
    head = jax.random.normal(jax.random.fold_in(key, 9), (C, C), jnp.float64)
    return net, params, head, x, t


def _train_equinox(run_net, params, head, x, t):
    """An equinox model whose body is ``run_net`` (jaxbp's custom_vjp, or the plain forward):
    ``STEPS`` adam steps with ``eqx.filter_value_and_grad``; returns the grads of each step and the model."""
    import equinox as eqx

    class Model(eqx.Module):
        net: tuple
        head: jax.Array

        def __call__(self, x):
            return jnp.tanh(run_net(self.net, x)) @ self.head

    def loss_fn(model, x, t):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), t).mean()

    opt = optax.adam(1e-2)

    @eqx.filter_jit
    def step(model, opt_state, x, t):
        value, grads = eqx.filter_value_and_grad(loss_fn)(model, x, t)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value, grads

    model = Model(params, head)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))
    history = []
    for _ in range(STEPS):
        model, opt_state, value, grads = step(model, opt_state, x, t)
        history.append((float(value), (grads.net, grads.head)))
    return history, (model.net, model.head)


def _train_flax_nnx(run_net, params, head, x, t):
    """The same with a ``flax.nnx.Module`` (every jaxbp param leaf an ``nnx.Param``) and ``nnx.Optimizer``."""
    from flax import nnx

    def values(tree):
        return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda v: isinstance(v, nnx.Variable))

    class Model(nnx.Module):
        def __init__(self, params, head):
            self.net = nnx.data(jax.tree.map(nnx.Param, params))
            self.head = nnx.Param(head)

        def __call__(self, x):
            return jnp.tanh(run_net(values(self.net), x)) @ self.head[...]

    def loss_fn(model, x, t):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), t).mean()

    model = Model(params, head)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, t):
        value, grads = nnx.value_and_grad(loss_fn)(model, x, t)
        optimizer.update(model, grads)
        return value, grads

    history = []
    for _ in range(STEPS):
        value, grads = step(model, optimizer, x, t)
        history.append((float(value), (values(grads.net), values(grads.head))))
    return history, (values(model.net), values(model.head))


def _assert_same_training(train, key):
    net, params, head, x, t = _head_and_params(key)
    manual, manual_final = train(as_custom_vjp(net), params, head, x, t)
    oracle, oracle_final = train(lambda p, h: net.forward(p, h)[0], params, head, x, t)
    for i, ((v_m, g_m), (v_o, g_o)) in enumerate(zip(manual, oracle, strict=True)):
        assert abs(v_m - v_o) <= TOL * abs(v_o), f"step {i}: loss {v_m} != {v_o}"
        assert_trees_close(g_m, g_o, TOL, f"step {i} grads")
    assert_trees_close(manual_final, oracle_final, TOL, f"params after {STEPS} adam steps")
    assert manual[-1][0] < manual[0][0], "the loss goes down"


def test_inside_an_equinox_module(key):
    _assert_same_training(_train_equinox, key)


def test_inside_a_flax_nnx_module(key):
    _assert_same_training(_train_flax_nnx, key)
