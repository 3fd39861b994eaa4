"""Recurrent layers with backpropagation through time written by hand (a reverse ``lax.scan``).

Both run over (batch, time, features) from a zero initial state and return the full
sequence of hidden states (batch, time, hidden). The input projection of every time
step is one matmul before the scan, and every weight gradient is one matmul after
the reverse scan; only ``h @ Wh`` (forward) and ``dz @ Wh.T`` (backward) are per step.
Inside, sequences are time-major (time, batch, ...), as ``lax.scan`` walks axis 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError, check_param_shapes, feedback_of
from jaxbp.layers import _args

_FEEDBACK = feedback_of("Wx", "Wh")


def _check_input(name: str, shape) -> None:
    if len(shape) != 3:
        raise LayerError(f"{name}: needs an input (batch, time, features), got shape {tuple(shape)}")


def _project(x, W, b):
    """x (batch, time, F) @ W (F, K) + b -> time-major (time, batch, K)."""
    return jnp.swapaxes(lax.dot_general(x, W, (((2,), (0,)), ((), ()))), 0, 1) + b


def _weight_grads(params, x, hs, dz):
    """dWx = x^T dz; dWh = h_{t-1}^T dz (h_{-1} = 0); db = sum dz; dx = dz Wx^T, from time-major hs, dz."""
    dWx = lax.dot_general(x, dz, (((0, 1), (1, 0)), ((), ())))
    dWh = lax.dot_general(hs[:-1], dz[1:], (((0, 1), (0, 1)), ((), ())))
    dx = jnp.swapaxes(lax.dot_general(dz, params["Wx"], (((2,), (1,)), ((), ()))), 0, 1)
    dparams = {"Wx": dWx, "Wh": dWh, "b": dz.sum((0, 1))}
    return {n: d.astype(params[n].dtype) for n, d in dparams.items()}, dx.astype(x.dtype)


def RNN(hidden: int, *, kernel_init=jax.nn.initializers.lecun_normal(), param_dtype=jnp.float32) -> Layer:
    """h_t = tanh(x_t Wx + h_{t-1} Wh + b): (batch, time, F) -> (batch, time, H); Wx (F, H), Wh (H, H)."""
    hidden = _args.positive_int("RNN", "hidden", hidden)
    _args.initializer("RNN", "kernel_init", kernel_init)
    _args.float_dtype("RNN", "param_dtype", param_dtype)
    name = f"RNN({hidden})"

    def init(key, input_shape):
        _check_input(name, input_shape)
        kx, kh = jax.random.split(key)
        params = {
            "Wx": kernel_init(kx, (input_shape[-1], hidden), param_dtype),
            "Wh": jax.nn.initializers.orthogonal()(kh, (hidden, hidden), param_dtype),
            "b": jnp.zeros((hidden,), param_dtype),
        }
        return (*input_shape[:-1], hidden), params

    def forward(params, x):
        _check_input(name, x.shape)
        expected = {"Wx": (x.shape[-1], hidden), "Wh": (hidden, hidden), "b": (hidden,)}
        check_param_shapes(name, expected, params)
        Wh = params["Wh"]

        def step(h, xw_t):
            h = jnp.tanh(xw_t + h @ Wh)
            return h, h

        xw = _project(x, params["Wx"], params["b"])
        _, hs = lax.scan(step, jnp.zeros(xw.shape[1:], xw.dtype), xw)
        return jnp.swapaxes(hs, 0, 1), (x, hs)

    def backward(params, res, g):
        # dz_t = (g_t + dz_{t+1} Wh^T) * (1 - h_t**2)   (t = T-1 ... 0, dz_T = 0);
        # dWx = sum_t x_t^T dz_t; dWh = sum_t h_{t-1}^T dz_t; db = sum_t dz_t; dx_t = dz_t Wx^T
        x, hs = res
        WhT = params["Wh"].T

        def step(dz_next, inputs):
            g_t, h_t = inputs
            dz = (g_t + dz_next @ WhT) * (1 - h_t * h_t)
            return dz, dz

        g = jnp.swapaxes(g, 0, 1)
        _, dz = lax.scan(step, jnp.zeros(g.shape[1:], hs.dtype), (g, hs), reverse=True)
        return _weight_grads(params, x, hs, dz)

    # Backward rules: feedback stands in for the input and the recurrent weights
    return Layer(init, forward, backward, name=name, feedback=_FEEDBACK)


def LSTM(hidden: int, *, kernel_init=jax.nn.initializers.lecun_normal(), param_dtype=jnp.float32) -> Layer:
    """LSTM, gates [i f g o]: (batch, time, F) -> (batch, time, hidden); Wx (F, 4H), Wh (H, 4H), b (4H,)."""
    hidden = _args.positive_int("LSTM", "hidden", hidden)
    _args.initializer("LSTM", "kernel_init", kernel_init)
    _args.float_dtype("LSTM", "param_dtype", param_dtype)
    name = f"LSTM({hidden})"
    H = hidden

    def init(key, input_shape):
        _check_input(name, input_shape)
        kx, kh = jax.random.split(key)
        params = {
            "Wx": kernel_init(kx, (input_shape[-1], 4 * H), param_dtype),
            "Wh": jax.nn.initializers.orthogonal()(kh, (H, 4 * H), param_dtype),
            "b": jnp.zeros((4 * H,), param_dtype).at[H : 2 * H].set(1.0),  # forget-gate bias 1
        }
        return (*input_shape[:-1], H), params

    def forward(params, x):
        _check_input(name, x.shape)
        check_param_shapes(name, {"Wx": (x.shape[-1], 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)}, params)
        Wh = params["Wh"]

        def step(carry, xw_t):
            h, c_prev = carry
            z = xw_t + h @ Wh
            i, f, o = (lax.logistic(z[:, k * H : (k + 1) * H]) for k in (0, 1, 3))
            gg = jnp.tanh(z[:, 2 * H : 3 * H])
            c = f * c_prev + i * gg
            tc = jnp.tanh(c)
            h = o * tc
            return (h, c), (h, c_prev, jnp.concatenate([i, f, gg, o], axis=-1), tc)

        xw = _project(x, params["Wx"], params["b"])
        zero = jnp.zeros((*xw.shape[1:-1], H), xw.dtype)
        _, (hs, c_prevs, gates, tcs) = lax.scan(step, (zero, zero), xw)
        return jnp.swapaxes(hs, 0, 1), (x, hs, c_prevs, gates, tcs)

    def backward(params, res, g):
        # dh = g_t + dz_{t+1} Wh^T;  dc = dc_{t+1} f_{t+1} + dh o (1 - tanh(c)^2);
        # dz = [dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c) o(1-o)];  weights as in RNN
        x, hs, c_prevs, gates, tcs = res
        WhT = params["Wh"].T

        def step(carry, inputs):
            dz_next, dc_next = carry  # dc_next = dc_{t+1} * f_{t+1}
            g_t, c_prev, gate, tc = inputs
            i, f, gg, o = (gate[:, k * H : (k + 1) * H] for k in range(4))
            dh = g_t + dz_next @ WhT
            dc = dc_next + dh * o * (1 - tc * tc)
            di, df, dg, do = dc * gg, dc * c_prev, dc * i, dh * tc
            dz = [di * i * (1 - i), df * f * (1 - f), dg * (1 - gg * gg), do * o * (1 - o)]
            dz = jnp.concatenate(dz, axis=-1)
            return (dz, dc * f), dz

        g = jnp.swapaxes(g, 0, 1)
        init_carry = (jnp.zeros(gates.shape[1:], gates.dtype), jnp.zeros(g.shape[1:], gates.dtype))
        _, dz = lax.scan(step, init_carry, (g, c_prevs, gates, tcs), reverse=True)
        return _weight_grads(params, x, hs, dz)

    return Layer(init, forward, backward, name=name, feedback=_FEEDBACK)


__all__ = ["LSTM", "RNN"]
