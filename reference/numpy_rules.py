"""Backward rules for a tanh MLP in plain NumPy (no JAX, nothing from jaxbp): the rules' oracle.

The network is ``h_0 = x``, ``a_n = h_{n-1} W_n + b_n``, ``h_n = tanh(a_n)`` for hidden levels and
``y = a_N`` at the top, with the mean softmax cross-entropy on top. Each function returns the
gradients ``[(dW_n, db_n)]`` bottom first. See DERIVATIONS.md, "Backward rules".
"""

from __future__ import annotations

import numpy as np


def forward(Ws, bs, x):
    """``(y, hs, As)``: output, the inputs of each Dense level (``hs[n]``) and pre-activations."""
    hs, As, h = [], [], x
    for n, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        hs.append(h)
        a = h @ W + b
        As.append(a)
        h = np.tanh(a) if n < len(Ws) - 1 else a
    return h, hs, As


def softmax_xent_grad(y, labels):
    """dL/dy of the mean softmax cross-entropy: (softmax(y) - onehot) / batch."""
    p = np.exp(y - y.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels)


def feedback_grads(Ws, bs, Bs, x, labels):
    """FA / sign symmetry: g_{n-1} = (g_n B_nᵀ) * tanh'(a_{n-1}); dW_n = h_{n-1}ᵀ g_n, db_n = Σ g_n.

    ``Bs[n]`` stands in for ``W_n`` in the handed-down gradient (``Bs = Ws`` is backprop).
    """
    y, hs, As = forward(Ws, bs, x)
    g = softmax_xent_grad(y, labels)
    grads = [None] * len(Ws)
    for n in reversed(range(len(Ws))):
        grads[n] = (hs[n].T @ g, g.sum(0))
        if n:
            g = (g @ Bs[n].T) * (1 - np.tanh(As[n - 1]) ** 2)
    return grads


def sign_feedback(W, variant, s=None, R=None):
    """B of sign symmetry: usf s·sign(W); frsf and brsf |R|·sign(W) (brsf: R redrawn every step)."""
    if variant == "usf":
        return s * np.sign(W)
    return np.abs(R) * np.sign(W)


def dfa_grads(Ws, bs, Ds, x, labels):
    """DFA: e = dL/dy; below level n ≥ 1, g_{n-1} = (e D_nᵀ) * tanh'(a_{n-1}); dW_n = h_{n-1}ᵀ g_n.

    ``Ds[n]`` (shape of W_n's input by the output size) for n ≥ 1; ``Ds[0]`` is unused (the bottom).
    """
    y, hs, As = forward(Ws, bs, x)
    e = softmax_xent_grad(y, labels)
    grads, g = [None] * len(Ws), e
    for n in reversed(range(len(Ws))):
        grads[n] = (hs[n].T @ g, g.sum(0))
        if n:
            g = (e @ Ds[n].T) * (1 - np.tanh(As[n - 1]) ** 2)
    return grads


def sign_ste(x, g):
    """Sign: forward sign(x) (0 -> +1), backward g·1{|x| <= 1}."""
    return np.where(x >= 0, 1.0, -1.0), g * (np.abs(x) <= 1)


def binary_dense(W, b, x, g):
    """BinaryDense: y = x sign(W) + b; dx = g sign(W)ᵀ, dW = xᵀ g, db = Σ g."""
    Wb = np.where(W >= 0, 1.0, -1.0)
    return x @ Wb + b, (x.T @ g, g.sum(0), g @ Wb.T)


def kolen_pollack_feedback(B_prev, W_prev, W, decay):
    """Kolen-Pollack's B for this step: B receives W's update and B − W decays by (1 − decay):
    ``B_t = W_t + (1 − λ)(B_{t−1} − W_{t−1})``."""
    return W + (1 - decay) * (B_prev - W_prev)
