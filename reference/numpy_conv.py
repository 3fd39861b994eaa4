"""Convolution and pooling in plain NumPy, written for reading: one loop over output positions.

Same interface as :mod:`reference.numpy_bp`: ``forward(params, x) -> (y, cache)``,
``backward(params, cache, g) -> (dparams, dx)``; images are channels-last (N, H, W, C), conv
kernels HWIO (kh, kw, C/groups, F) with params ``{"kernel", "bias"}``. Every output position
(i, j) reads the patch ``x_pad[:, i*s : i*s + (k-1)*d + 1 : d, ...]``; the backward adds each
patch's gradient back at the same place. See DERIVATIONS.md for the equations.
"""

from __future__ import annotations

import math

import numpy as np

from reference.numpy_bp import RefLayer


def pads_for(padding, spatial, window, strides) -> list[tuple[int, int]]:
    """(lo, hi) per spatial axis: "VALID" none, "SAME" output ceil(n / s) with the extra on hi."""
    if padding == "VALID":
        return [(0, 0)] * len(spatial)
    if padding == "SAME":
        pads = []
        for n, w, s in zip(spatial, window, strides, strict=True):
            total = max((math.ceil(n / s) - 1) * s + w - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    return [tuple(p) for p in padding]


def _geometry(x_shape, window, strides, dilation, padding):
    eff = [(k - 1) * d + 1 for k, d in zip(window, dilation, strict=True)]
    pads = pads_for(padding, x_shape[1:3], eff, strides)
    out = [
        (n + lo + hi - e) // s + 1 for n, (lo, hi), e, s in zip(x_shape[1:3], pads, eff, strides, strict=True)
    ]
    return eff, pads, out


def _patch(i, j, strides, eff, dilation):
    """The index of the window of output (i, j) into the padded input."""
    (sh, sw), (eh, ew), (dh, dw) = strides, eff, dilation
    return np.s_[:, i * sh : i * sh + eh : dh, j * sw : j * sw + ew : dw, :]


def conv2d(strides=(1, 1), padding="SAME", dilation=(1, 1), groups: int = 1) -> RefLayer:
    """y[n,i,j,f] = b[f] + sum_{a,b,c} xpad[n, i*s + a*d, j*s + b*d, c in group(f)] W[a,b,c,f]."""

    def forward(p, x):
        W = p["kernel"]
        kh, kw, cg, F = W.shape
        eff, pads, out = _geometry(x.shape, (kh, kw), strides, dilation, padding)
        xp = np.pad(x, [(0, 0), *pads, (0, 0)])
        y = np.zeros((x.shape[0], *out, F), x.dtype)
        fg = F // groups
        for i in range(out[0]):
            for j in range(out[1]):
                patch = xp[_patch(i, j, strides, eff, dilation)]  # (N, kh, kw, C)
                for grp in range(groups):
                    cs, fs = slice(grp * cg, (grp + 1) * cg), slice(grp * fg, (grp + 1) * fg)
                    y[:, i, j, fs] = np.einsum("nabc,abcf->nf", patch[..., cs], W[..., fs])
        if "bias" in p:
            y = y + p["bias"]
        return y, (xp, pads, x.shape)

    def backward(p, cache, g):
        # dW[a,b,c,f] = sum_{n,i,j} patch_ij[n,a,b,c] g[n,i,j,f];  dpatch_ij = sum_f g[n,i,j,f] W[...,f]
        xp, pads, x_shape = cache
        W = p["kernel"]
        kh, kw, cg, F = W.shape
        eff, _, out = _geometry(x_shape, (kh, kw), strides, dilation, pads)
        dxp, dW = np.zeros_like(xp), np.zeros_like(W)
        fg = F // groups
        for i in range(out[0]):
            for j in range(out[1]):
                where = _patch(i, j, strides, eff, dilation)
                dpatch = np.zeros_like(xp[where])  # (N, kh, kw, C)
                for grp in range(groups):
                    cs, fs = slice(grp * cg, (grp + 1) * cg), slice(grp * fg, (grp + 1) * fg)
                    gij = g[:, i, j, fs]
                    dW[..., fs] += np.einsum("nabc,nf->abcf", xp[where][..., cs], gij)
                    dpatch[..., cs] = np.einsum("nf,abcf->nabc", gij, W[..., fs])
                dxp[where] += dpatch
        (t, _), (l, _) = pads
        dx = dxp[:, t : t + x_shape[1], l : l + x_shape[2], :]
        d = {"kernel": dW}
        if "bias" in p:
            d["bias"] = g.sum((0, 1, 2))
        return d, dx

    return RefLayer(forward, backward)


def max_pool(window, strides=None, padding="VALID") -> RefLayer:
    """y[n,i,j,c] = max of the window; the gradient goes to its first maximum (row-major)."""
    strides = strides or window

    def forward(p, x):
        eff, pads, out = _geometry(x.shape, window, strides, (1, 1), padding)
        xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
        y = np.zeros((x.shape[0], *out, x.shape[3]), x.dtype)
        first = np.zeros(y.shape, int)  # flat index in the window of the first maximum
        for i in range(out[0]):
            for j in range(out[1]):
                patch = xp[_patch(i, j, strides, eff, (1, 1))].reshape(x.shape[0], -1, x.shape[3])
                first[:, i, j] = patch.argmax(1)  # argmax returns the first of equal maxima
                y[:, i, j] = patch.max(1)
        return y, (first, pads, x.shape)

    def backward(p, cache, g):
        # dx[first max of window ij] += g[ij]
        first, pads, x_shape = cache
        eff, _, out = _geometry(x_shape, window, strides, (1, 1), pads)
        dxp = np.zeros((x_shape[0], x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]), x_shape[3]))
        n, c = np.meshgrid(np.arange(x_shape[0]), np.arange(x_shape[3]), indexing="ij")
        for i in range(out[0]):
            for j in range(out[1]):
                a, b = np.unravel_index(first[:, i, j], window)
                dxp[n, i * strides[0] + a, j * strides[1] + b, c] += g[:, i, j]
        (t, _), (l, _) = pads
        return {}, dxp[:, t : t + x_shape[1], l : l + x_shape[2], :]

    return RefLayer(forward, backward)


def avg_pool(window, strides=None, padding="VALID", count_include_pad: bool = True) -> RefLayer:
    """y[n,i,j,c] = sum of the window / (window size, or its number of non-padding elements)."""
    strides = strides or window

    def counts(x_shape, pads, out):
        if count_include_pad:
            return np.full(out, float(np.prod(window)))
        ones = np.pad(np.ones((1, *x_shape[1:3], 1)), [(0, 0), *pads, (0, 0)])
        cnt = np.zeros(out)
        for i in range(out[0]):
            for j in range(out[1]):
                cnt[i, j] = ones[_patch(i, j, strides, window, (1, 1))].sum()
        return cnt

    def forward(p, x):
        eff, pads, out = _geometry(x.shape, window, strides, (1, 1), padding)
        xp = np.pad(x, [(0, 0), *pads, (0, 0)])
        cnt = counts(x.shape, pads, out)
        y = np.zeros((x.shape[0], *out, x.shape[3]), x.dtype)
        for i in range(out[0]):
            for j in range(out[1]):
                y[:, i, j] = xp[_patch(i, j, strides, eff, (1, 1))].sum((1, 2)) / cnt[i, j]
        return y, (cnt, pads, x.shape)

    def backward(p, cache, g):
        # dx[every element of window ij] += g[ij] / count[ij]
        cnt, pads, x_shape = cache
        eff, _, out = _geometry(x_shape, window, strides, (1, 1), pads)
        dxp = np.zeros((x_shape[0], x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]), x_shape[3]))
        for i in range(out[0]):
            for j in range(out[1]):
                dxp[_patch(i, j, strides, eff, (1, 1))] += (g[:, i, j] / cnt[i, j])[:, None, None, :]
        (t, _), (l, _) = pads
        return {}, dxp[:, t : t + x_shape[1], l : l + x_shape[2], :]

    return RefLayer(forward, backward)


def global_avg_pool() -> RefLayer:
    """y[n,c] = mean over (i, j) of x[n,i,j,c]."""

    def backward(p, shape, g):
        # dx[n,i,j,c] = g[n,c] / (H W)
        return {}, np.broadcast_to(g[:, None, None, :] / (shape[1] * shape[2]), shape).copy()

    return RefLayer(lambda p, x: (x.mean((1, 2)), x.shape), backward)
