"""Pooling over the spatial axes of (N, *spatial, C) inputs (flax conventions), with hand-written scatters.

A window offset ``a`` (a tuple, one entry per spatial axis) picks from the padded input the
elements ``xp[:, a + s*i, :]`` of every window i at once: a strided slice. Both backwards are
the transpose of that gather, written explicitly: for each offset, ``lax.pad`` with interior
padding s-1 and low padding a - lo places ``g[i]`` back at input position ``a + s*i - lo``
(negative padding crops what fell into the padding), and the offsets' contributions are summed.
That is a loop over the few window offsets, never over pixels.

**MaxPool ties**: the gradient goes to the *first* maximal element of the window in row-major
order of the window offsets (top-left first), and to nothing else, like a strict ``>`` scan.
**AvgPool padding**: with ``count_include_pad=True`` (flax's default) padded zeros count in the
divisor (always the window size); with False the divisor is the number of real elements.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp.core import LINEAR, Layer, LayerError, Static
from jaxbp.layers import _args
from jaxbp.layers.conv import Padding, resolve_padding


def _window(name: str, window_shape, strides, padding):
    ws = tuple(window_shape)
    st = ws if strides is None else (strides,) * len(ws) if isinstance(strides, int) else tuple(strides)
    if not ws or len(st) != len(ws) or not all(isinstance(v, int) and v >= 1 for v in ws + st):
        raise LayerError(
            f"{name}: window_shape and strides must be equal-length positive ints, got {ws}, {st}"
        )

    def geometry(shape):
        if len(shape) != len(ws) + 2:
            raise LayerError(
                f"{name}: needs an input (N, {len(ws)} spatial axes, C), got shape {tuple(shape)}"
            )
        spatial = tuple(shape[1:-1])
        pads = resolve_padding(name, padding, spatial, ws, st)
        if any(max(p) >= w for p, w in zip(pads, ws, strict=True)):
            raise LayerError(f"{name}: padding {pads} must be smaller than the window {ws} on every side")
        if any(n + lo + hi < w for n, (lo, hi), w in zip(spatial, pads, ws, strict=True)):
            raise LayerError(
                f"{name}: input of shape {tuple(shape)} padded by {pads} is smaller than the window {ws}"
            )
        out = tuple(
            (n + lo + hi - w) // s + 1 for n, (lo, hi), w, s in zip(spatial, pads, ws, st, strict=True)
        )
        return pads, out

    return ws, st, geometry


def _offset_slice(xp, a, out, st):
    """The elements ``xp[:, a + s*i, :]`` for all windows i: shape (N, *out, C)."""
    start = (0, *a, 0)
    limit = (xp.shape[0], *(ai + (o - 1) * s + 1 for ai, o, s in zip(a, out, st, strict=True)), xp.shape[-1])
    return lax.slice(xp, start, limit, (1, *st, 1))


def _place(v, a, pads, x_shape, st):
    """Transpose of :func:`_offset_slice` followed by cropping the padding: v (N, *out, C) -> x_shape."""
    cfg = [(0, 0, 0)]
    for ai, (lo, _), n, o, s in zip(a, pads, x_shape[1:-1], v.shape[1:-1], st, strict=True):
        low = ai - lo
        cfg.append((low, n - low - (o - 1) * s - 1, s - 1))
    return lax.pad(v, jnp.zeros((), v.dtype), [*cfg, (0, 0, 0)])


def MaxPool(
    window_shape: Sequence[int], strides: int | Sequence[int] | None = None, padding: Padding = "VALID"
) -> Layer:
    """Max over windows: (N, *spatial, C) -> (N, *out_spatial, C); gradient to the first max of a window."""
    window_shape = _args.positive_ints("MaxPool", "window_shape", window_shape)
    if strides is not None:
        strides = _args.positive_ints("MaxPool", "strides", strides, len(window_shape))
    padding = _args.padding("MaxPool", padding, len(window_shape))
    name = f"MaxPool({tuple(window_shape)})"
    ws, st, geometry = _window(name, window_shape, strides, padding)
    offsets = list(itertools.product(*(range(w) for w in ws)))
    idx_dtype = jnp.int8 if len(offsets) <= 127 else jnp.int32

    def init(key, input_shape):
        _, out = geometry(tuple(input_shape))
        return (input_shape[0], *out, input_shape[-1]), ()

    def forward(params, x):
        pads, out = geometry(x.shape)
        xp = lax.pad(
            x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
        )
        windows = jnp.stack([_offset_slice(xp, a, out, st) for a in offsets], axis=-1)
        arg = jnp.argmax(windows, axis=-1).astype(idx_dtype)  # the offset of each window's first max
        y = jnp.take_along_axis(windows, arg[..., None].astype(jnp.int32), axis=-1)[..., 0]
        return y, (arg, Static(x.shape))

    def backward(params, res, g):
        # dx[a + s*i - lo] += g[i] * [arg[i] == a]   for each window i and window offset a
        arg, x_shape = res
        pads, _ = geometry(x_shape.value)
        zero = jnp.zeros((), g.dtype)
        dx = sum(
            _place(jnp.where(arg == k, g, zero), a, pads, x_shape.value, st) for k, a in enumerate(offsets)
        )
        return (), dx

    # piecewise linear in x: no second-derivative residual
    return Layer(init, forward, backward, name=name, per_example=LINEAR)


def _valid_counts(spatial, pads, ws, st, out) -> np.ndarray:
    """Number of non-padding elements of every window, shape (1, *out, 1) (separable over axes)."""
    per_axis = [
        np.minimum(np.arange(o) * s - lo + w, n) - np.maximum(np.arange(o) * s - lo, 0)
        for n, (lo, _), w, s, o in zip(spatial, pads, ws, st, out, strict=True)
    ]
    return math.prod(np.ix_(*per_axis)).reshape(1, *out, 1) if per_axis else np.ones((1, 1))


def AvgPool(
    window_shape: Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    count_include_pad: bool = True,
) -> Layer:
    """Mean over windows: (N, *spatial, C) -> (N, *out, C); padded zeros count iff count_include_pad."""
    window_shape = _args.positive_ints("AvgPool", "window_shape", window_shape)
    if strides is not None:
        strides = _args.positive_ints("AvgPool", "strides", strides, len(window_shape))
    padding = _args.padding("AvgPool", padding, len(window_shape))
    count_include_pad = _args.flag("AvgPool", "count_include_pad", count_include_pad)
    name = f"AvgPool({tuple(window_shape)})"
    ws, st, geometry = _window(name, window_shape, strides, padding)
    offsets = list(itertools.product(*(range(w) for w in ws)))

    def init(key, input_shape):
        _, out = geometry(tuple(input_shape))
        return (input_shape[0], *out, input_shape[-1]), ()

    def divisor(x_shape, pads, out, dtype):
        if count_include_pad:
            return jnp.array(math.prod(ws), dtype)
        return jnp.asarray(_valid_counts(x_shape[1:-1], pads, ws, st, out), dtype)

    def forward(params, x):
        pads, out = geometry(x.shape)
        xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
        total = sum(_offset_slice(xp, a, out, st) for a in offsets)
        return total / divisor(x.shape, pads, out, x.dtype), Static(x.shape)

    def backward(params, x_shape, g):
        # dx[a + s*i - lo] += g[i] / count[i]   for each window i and window offset a
        pads, out = geometry(x_shape.value)
        gc = g / divisor(x_shape.value, pads, out, g.dtype)
        return (), sum(_place(gc, a, pads, x_shape.value, st) for a in offsets)

    return Layer(init, forward, backward, name=name, per_example=LINEAR)


def GlobalAvgPool() -> Layer:
    """Mean over all spatial axes: (N, *spatial, C) -> (N, C)."""

    def init(key, input_shape):
        if len(input_shape) < 3:
            raise LayerError(
                f"GlobalAvgPool: needs an input (N, *spatial, C), got shape {tuple(input_shape)}"
            )
        return (input_shape[0], input_shape[-1]), ()

    def forward(params, x):
        if x.ndim < 3:
            raise LayerError(f"GlobalAvgPool: needs an input (N, *spatial, C), got shape {x.shape}")
        return x.mean(tuple(range(1, x.ndim - 1))), Static(x.shape)

    def backward(params, x_shape, g):
        # dx[n, p, c] = g[n, c] / P   for every spatial position p of the P positions
        shape = x_shape.value
        P = math.prod(shape[1:-1])
        return (), jnp.broadcast_to((g / P)[:, *([None] * (len(shape) - 2)), :], shape)

    return Layer(init, forward, backward, name="GlobalAvgPool", per_example=LINEAR)
