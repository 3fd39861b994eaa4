"""NumPy reference for jaxbp.quantities on a Dense/Tanh MLP with softmax cross-entropy.

Written from reference/DERIVATIONS.md ("Quantities"), one example at a time with explicit loops
where that is clearer: per-example gradients, their squared norms, and the GGN diagonal from the
explicit per-example Jacobian. Never imports jaxbp.
"""

from __future__ import annotations

import numpy as np


def forward(layers, x):
    """layers: [(W, b), ...]; tanh between them. Returns the logits and each level's input."""
    inputs, h = [], x
    for i, (W, b) in enumerate(layers):
        inputs.append(h)
        h = h @ W + b
        if i < len(layers) - 1:
            h = np.tanh(h)
    return h, inputs


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def per_example_grads(layers, x, labels):
    """[(dW (N, in, out), db (N, out)), ...]: the gradient of ℓ_n / N for each example n."""
    N = len(x)
    out = [(np.zeros((N, *W.shape)), np.zeros((N, *b.shape))) for W, b in layers]
    for n in range(N):
        z, inputs = forward(layers, x[n : n + 1])
        g = (softmax(z) - np.eye(z.shape[-1])[labels[n : n + 1]]) / N  # dL/dz of example n's share
        for i in reversed(range(len(layers))):
            W, _ = layers[i]
            out[i][0][n] = inputs[i].T @ g
            out[i][1][n] = g[0]
            if i > 0:
                g = (g @ W.T) * (1 - inputs[i] ** 2)  # inputs[i] = tanh(previous pre-activation)
    return out


def batch_l2(layers, x, labels):
    """||∇ℓ_n / N||² per example and param: [(l2_W (N,), l2_b (N,)), ...]."""
    return [
        tuple((a.reshape(len(x), -1) ** 2).sum(1) for a in pair)
        for pair in per_example_grads(layers, x, labels)
    ]


def diag_ggn(layers, x, labels, eps: float = 1e-6):
    """diag(Σ_n J_nᵀ H_n J_n) with H_n = (diag p − p pᵀ)/N and J_n by central differences."""
    flat = np.concatenate([np.concatenate([W.ravel(), b.ravel()]) for W, b in layers])

    def unflatten(v):
        out, i = [], 0
        for W, b in layers:
            out.append((v[i : i + W.size].reshape(W.shape), v[i + W.size : i + W.size + b.size]))
            i += W.size + b.size
        return out

    N, total = len(x), np.zeros(flat.size)
    for n in range(N):
        z = forward(layers, x[n : n + 1])[0][0]
        J = np.zeros((z.size, flat.size))
        for j in range(flat.size):
            d = np.zeros(flat.size)
            d[j] = eps
            zp = forward(unflatten(flat + d), x[n : n + 1])[0][0]
            zm = forward(unflatten(flat - d), x[n : n + 1])[0][0]
            J[:, j] = (zp - zm) / (2 * eps)
        p = softmax(z)
        H = (np.diag(p) - np.outer(p, p)) / N
        total += np.einsum("ij,ik,kj->j", J, H, J)
    return unflatten(total)
