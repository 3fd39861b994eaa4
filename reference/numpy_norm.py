"""NumPy references for BatchNorm, LayerNorm, GroupNorm and Embedding (no JAX, nothing from jaxbp).

Same interface as :mod:`reference.numpy_bp`: a :class:`RefLayer` of
``forward(params, x) -> (y, cache)`` and ``backward(params, cache, g) -> (dparams, dx)``,
params dicts with jaxbp's keys, so ``numpy_bp.forward_backward`` and ``train_sgd`` run
them unchanged. BatchNorm keeps its running statistics in a dict that its forward
updates in place (the textbook loop's mutable state). See DERIVATIONS.md.
"""

from __future__ import annotations

import numpy as np

from reference.numpy_bp import RefLayer


def layer_norm(epsilon: float = 1e-5) -> RefLayer:
    """Normalise over the last axis, then scale and shift; params {"scale", "bias"}."""

    def forward(p, x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        xhat = (x - mu) / np.sqrt(var + epsilon)
        return xhat * p["scale"] + p["bias"], (xhat, var)

    def backward(p, cache, g):
        # dx = (gh - mean(gh) - xhat mean(gh xhat)) / sqrt(var + eps), gh = g scale
        xhat, var = cache
        gh = g * p["scale"]
        gh = gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True)
        dx = gh / np.sqrt(var + epsilon)
        g2, xhat2 = g.reshape(-1, g.shape[-1]), xhat.reshape(-1, g.shape[-1])
        return {"scale": (g2 * xhat2).sum(0), "bias": g2.sum(0)}, dx

    return RefLayer(forward, backward)


def batch_norm(state: dict, momentum: float = 0.9, epsilon: float = 1e-5, train: bool = True) -> RefLayer:
    """Normalise each channel (last axis) over all other axes; ``state`` = {"mean", "var"}, updated in place.

    Train mode: batch statistics (biased variance), running stats
    ``momentum * old + (1 - momentum) * batch``. Eval mode: the running statistics.
    """

    def forward(p, x):
        x2 = x.reshape(-1, x.shape[-1])
        if train:
            mu, var = x2.mean(0), x2.var(0)
            state["mean"] = momentum * state["mean"] + (1 - momentum) * mu
            state["var"] = momentum * state["var"] + (1 - momentum) * var
        else:
            mu, var = state["mean"], state["var"]
        xhat = (x2 - mu) / np.sqrt(var + epsilon)
        return (xhat * p["scale"] + p["bias"]).reshape(x.shape), (xhat, var, x.shape)

    def backward(p, cache, g):
        # train: dx = (gh - mean_B gh - xhat mean_B(gh xhat)) / sqrt(var + eps)
        # eval:  dx = gh / sqrt(var + eps)
        xhat, var, shape = cache
        g2 = g.reshape(-1, g.shape[-1])
        gh = g2 * p["scale"]
        if train:
            gh = gh - gh.mean(0) - xhat * (gh * xhat).mean(0)
        dx = gh / np.sqrt(var + epsilon)
        return {"scale": (g2 * xhat).sum(0), "bias": g2.sum(0)}, dx.reshape(shape)

    return RefLayer(forward, backward)


def group_norm(groups: int, epsilon: float = 1e-5) -> RefLayer:
    """Normalise each example over its positions and the channels of each of ``groups`` channel groups."""

    def grouped(a):
        return a.reshape(a.shape[0], -1, groups, a.shape[-1] // groups)

    def forward(p, x):
        xg = grouped(x)
        mu = xg.mean((1, 3), keepdims=True)
        var = ((xg - mu) ** 2).mean((1, 3), keepdims=True)
        xhat = ((xg - mu) / np.sqrt(var + epsilon)).reshape(x.shape)
        return xhat * p["scale"] + p["bias"], (xhat, var)

    def backward(p, cache, g):
        # per (example, group): dx = (gh - mean(gh) - xhat mean(gh xhat)) / sqrt(var + eps), gh = g scale
        xhat, var = cache
        gh, xg = grouped(g * p["scale"]), grouped(xhat)
        gh = gh - gh.mean((1, 3), keepdims=True) - xg * (gh * xg).mean((1, 3), keepdims=True)
        dx = (gh / np.sqrt(var + epsilon)).reshape(g.shape)
        g2, xhat2 = g.reshape(-1, g.shape[-1]), xhat.reshape(-1, g.shape[-1])
        return {"scale": (g2 * xhat2).sum(0), "bias": g2.sum(0)}, dx

    return RefLayer(forward, backward)


def embedding(num_embeddings: int) -> RefLayer:
    """Look up rows of p["table"] by integer ids; no input gradient (dx is None)."""

    def forward(p, ids):
        return p["table"][ids], ids

    def backward(p, ids, g):
        # dtable[k] = sum over positions i with ids_i = k of g_i (np.add.at accumulates repeats)
        dtable = np.zeros((num_embeddings, g.shape[-1]), g.dtype)
        np.add.at(dtable, ids.reshape(-1), g.reshape(-1, g.shape[-1]))
        return {"table": dtable}, None

    return RefLayer(forward, backward)
