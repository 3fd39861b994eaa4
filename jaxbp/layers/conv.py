"""Convolutions (flax conventions: channels last, HWIO kernels), with backwards that are convolutions.

For spatial rank k the input is ``(N, *spatial, C)`` and the kernel ``(*kernel_size, C/G, F)``.
Per spatial axis, with input size n, kernel size K, dilation d, stride s and padding (lo, hi),
the effective kernel is ``Ke = (K-1) d + 1`` and the output size ``o = (n + lo + hi - Ke) // s + 1``;
``r = (n + lo + hi - Ke) % s`` input rows past the last window receive no gradient.
See reference/DERIVATIONS.md for the derivation of both backward convolutions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.core import Layer, LayerError, PerExample, check_param_shapes, feedback_of, linear_residual
from jaxbp.layers import _args
from jaxbp.layers import per_example as qx

Padding = str | int | Sequence[tuple[int, int]]


def _tuple(name: str, value, rank: int, what: str) -> tuple[int, ...]:
    """``value`` as a tuple of ``rank`` positive ints (an int is repeated)."""
    t = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(t) != rank or not all(isinstance(v, int) and v >= 1 for v in t):
        raise LayerError(f"{name}: {what} must be {rank} positive ints, got {value!r}")
    return t


def resolve_padding(name: str, padding: Padding, spatial, window, strides) -> tuple[tuple[int, int], ...]:
    """Explicit ``(lo, hi)`` pairs per spatial axis for "SAME", "VALID", an int or explicit pairs."""
    rank = len(window)
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise LayerError(
                f"{name}: padding must be 'SAME', 'VALID', an int or (lo, hi) pairs, got {padding!r}"
            )
        return tuple(tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding.upper()))
    pads = ((padding, padding),) * rank if isinstance(padding, int) else tuple(tuple(p) for p in padding)
    if len(pads) != rank or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise LayerError(f"{name}: padding must be {rank} non-negative (lo, hi) pairs, got {padding!r}")
    return pads


def _geometry(name, shape, window, strides, dilation, padding):
    """(pads, output spatial sizes) for an input ``shape`` (N, *spatial, C); raises on empty output."""
    spatial = tuple(shape[1:-1])
    eff = tuple((k - 1) * d + 1 for k, d in zip(window, dilation, strict=True))
    pads = resolve_padding(name, padding, spatial, eff, strides)
    out = tuple(
        (n + lo + hi - e) // s + 1 for n, (lo, hi), e, s in zip(spatial, pads, eff, strides, strict=True)
    )
    if any(n + lo + hi < e for n, (lo, hi), e in zip(spatial, pads, eff, strict=True)):
        raise LayerError(
            f"{name}: input of shape {tuple(shape)} padded by {pads} is smaller than the"
            f" (dilated) window {eff}"
        )
    return pads, out


# On CPU a weight gradient whose patch matrix is this narrow (prod(kernel) * C/G columns or fewer)
# is one im2col matmul; wider ones stay XLA convolutions (see docs/performance.md for the figures).
_IM2COL_DW_MAX_COLUMNS = 64


def _dw_im2col(x, g, ks, st, dil, pads):
    """dW = patches(x)^T @ g: one matmul over the N * out positions (feature_group_count 1).

    ``patches(x)[n, o..., k, c] = x_pad[n, o * s + k * d, c]`` for every kernel offset ``k``.
    """
    rank = len(ks)
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    out = g.shape[1:-1]
    cols = []
    for k in itertools.product(*(range(n) for n in ks)):
        start = (0, *(ki * d for ki, d in zip(k, dil, strict=True)), 0)
        limit = (
            x.shape[0],
            *(a + (o - 1) * s + 1 for a, o, s in zip(start[1:-1], out, st, strict=True)),
            x.shape[-1],
        )
        cols.append(lax.slice(xp, start, limit, (1, *st, 1)))
    patches = jnp.stack(cols, axis=rank + 1).reshape(-1, len(cols) * x.shape[-1])
    dW = lax.dot_general(patches, g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
    return dW.reshape(*ks, x.shape[-1], g.shape[-1])


def _use_im2col_dw(ks, channels: int, groups: int) -> bool:
    """Whether the weight gradient is an im2col matmul (CPU, one group, narrow patches)."""
    columns = channels * math.prod(ks)
    return jax.default_backend() == "cpu" and groups == 1 and columns <= _IM2COL_DW_MAX_COLUMNS


def ConvND(
    features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    *,
    rank: int = 2,
    kernel_init=jax.nn.initializers.lecun_normal(),
    param_dtype=jnp.float32,
    name: str = "Conv",
) -> Layer:
    """N-d convolution: (N, *spatial, C) -> (N, *out, F); params {"kernel": (*ks, C/G, F), "bias": (F,)}."""
    features = _args.positive_int(name, "features", features)
    rank = _args.positive_int(name, "rank", rank)
    kernel_size = _args.positive_ints(name, "kernel_size", kernel_size, rank)
    strides = _args.positive_ints(name, "strides", strides, rank)
    kernel_dilation = _args.positive_ints(name, "kernel_dilation", kernel_dilation, rank)
    padding = _args.padding(name, padding, rank)
    feature_group_count = _args.positive_int(name, "feature_group_count", feature_group_count)
    use_bias = _args.flag(name, "use_bias", use_bias)
    _args.initializer(name, "kernel_init", kernel_init)
    _args.float_dtype(name, "param_dtype", param_dtype)
    ks = _tuple(name, kernel_size, rank, "kernel_size")
    st = _tuple(name, strides, rank, "strides")
    dil = _tuple(name, kernel_dilation, rank, "kernel_dilation")
    G = feature_group_count
    name = f"{name}({features}, {ks})"
    if not isinstance(G, int) or G < 1 or features % G:
        raise LayerError(f"{name}: features={features} must be divisible by feature_group_count={G}")
    sp = tuple(range(1, rank + 1))  # spatial axes of x, y and g
    ch = rank + 1  # channel axis of x, y and g
    ksp = tuple(range(rank))  # spatial axes of the kernel; rank = in (I), rank + 1 = out (O)
    dn_fwd = lax.ConvDimensionNumbers((0, ch, *sp), (rank + 1, rank, *ksp), (0, ch, *sp))
    # dx: g is the lhs, the kernel read with I <-> O swapped; dW: C of x is the batch, N the feature.
    dn_dx = lax.ConvDimensionNumbers((0, ch, *sp), (rank, rank + 1, *ksp), (0, ch, *sp))
    dn_dw = lax.ConvDimensionNumbers((ch, 0, *sp), (ch, 0, *sp), (rank, rank + 1, *ksp))

    def check(shape):
        if len(shape) != rank + 2:
            raise LayerError(f"{name}: needs an input (N, {rank} spatial axes, C), got shape {tuple(shape)}")
        if shape[-1] % G:
            raise LayerError(
                f"{name}: input channels {shape[-1]} (shape {tuple(shape)}) not divisible by"
                f" feature_group_count={G}"
            )
        return _geometry(name, shape, ks, st, dil, padding)

    def init(key, input_shape):
        _, out = check(tuple(input_shape))
        params = {"kernel": kernel_init(key, (*ks, input_shape[-1] // G, features), param_dtype)}
        if use_bias:
            params["bias"] = jnp.zeros((features,), param_dtype)
        return (input_shape[0], *out, features), params

    def forward(params, x):
        pads, _ = check(x.shape)
        expected = {"kernel": (*ks, x.shape[-1] // G, features)} | ({"bias": (features,)} if use_bias else {})
        check_param_shapes(name, expected, params)
        dtype = jnp.result_type(x, params["kernel"])
        y = lax.conv_general_dilated(
            x.astype(dtype),
            params["kernel"].astype(dtype),
            st,
            pads,
            rhs_dilation=dil,
            dimension_numbers=dn_fwd,
            feature_group_count=G,
        )
        if use_bias:
            y = y + params["bias"].astype(dtype)
        return y, x

    def backward(params, x, g):
        # dx = conv(dilate_s(g), flip(W)^T, pad Ke-1-lo | Ke-1-hi+r, dilation d);
        # dW = conv(x, g as kernel, stride d, dilation s, pad lo | hi-r); db = g.sum(N, spatial)
        W = params["kernel"]
        pads, _ = check(x.shape)
        eff = [(k - 1) * d + 1 for k, d in zip(ks, dil, strict=True)]
        rem = [(n + lo + hi - e) % s for n, (lo, hi), e, s in zip(x.shape[1:-1], pads, eff, st, strict=True)]
        Wt = lax.rev(W.astype(g.dtype), ksp)
        if G > 1:  # (.., C/G, G, F/G) -> (.., G, C/G, F/G) -> (.., C, F/G): O = C and I = F/G per group
            Wt = Wt.reshape(*ks, W.shape[-2], G, features // G).swapaxes(rank, rank + 1)
            Wt = Wt.reshape(*ks, x.shape[-1], features // G)
        # On CPU every convolution gets the forward's dimension numbers (transposes made explicit):
        # XLA:CPU hands only those to its fast kernels inside loop bodies (benchmarks/loop_conv_repro.py).
        canonical = jax.default_backend() == "cpu"
        dx = lax.conv_general_dilated(
            g,
            Wt.swapaxes(rank, rank + 1) if canonical else Wt,
            (1,) * rank,
            [(e - 1 - lo, e - 1 - hi + r) for e, (lo, hi), r in zip(eff, pads, rem, strict=True)],
            lhs_dilation=st,
            rhs_dilation=dil,
            dimension_numbers=dn_fwd if canonical else dn_dx,
            feature_group_count=G,
        )
        dw_pads = [(lo, hi - r) for (lo, hi), r in zip(pads, rem, strict=True)]
        if _use_im2col_dw(ks, x.shape[-1], G):
            dW = _dw_im2col(x.astype(g.dtype), g, ks, st, dil, pads)
        elif canonical:  # x as (C, *spatial, N) images, g as a (*spatial, N, F) kernel -> (C/G, *ks, F)
            dW = lax.conv_general_dilated(
                x.astype(g.dtype).swapaxes(0, ch),
                jnp.moveaxis(g, 0, rank),
                dil,
                dw_pads,
                rhs_dilation=st,
                dimension_numbers=dn_fwd,
                batch_group_count=G,
            )
            dW = jnp.moveaxis(dW, 0, rank)
        else:
            dW = lax.conv_general_dilated(
                x.astype(g.dtype),
                g,
                dil,
                dw_pads,
                rhs_dilation=st,
                dimension_numbers=dn_dw,
                batch_group_count=G,
            )
        dparams = {"kernel": dW.astype(W.dtype)}
        if use_bias:
            dparams["bias"] = g.sum((0, *sp)).astype(params["bias"].dtype)
        return dparams, dx.astype(x.dtype)

    # Per-example hooks (jaxbp.quantities), feature_group_count 1: with U_n (P, K) the unfolded input
    # patches of example n (K = prod(ks) C, ordered as the kernel), dW_n = U_nᵀ g_n, db_n = sum_p g_np.
    def patches(x):
        pads, _ = check(x.shape)
        u = lax.conv_general_dilated_patches(
            x, ks, st, pads, rhs_dilation=dil, dimension_numbers=dn_fwd
        )  # (N, *out, C * prod(ks)), features ordered (C, *ks)
        u = u.reshape(*u.shape[:-1], x.shape[-1], *ks)
        u = jnp.moveaxis(u, rank + 1, -1)  # (N, *out, *ks, C): the kernel's (*ks, C) order
        return u.reshape(u.shape[0], -1, math.prod(ks) * x.shape[-1])

    def with_bias(out, gs, f):
        return out | ({"bias": f(gs.sum(1))} if use_bias else {})

    def batch_grad(params, x, g):
        if G > 1:
            return qx.per_example_backward(backward, params, x, g)
        u, gs = patches(x), qx.as_sequence(g)
        dW = jnp.einsum("bpk,bpf->bkf", u, gs).reshape(x.shape[0], *params["kernel"].shape)
        return with_bias({"kernel": dW}, gs, lambda a: a)

    def batch_l2(params, x, g):
        if G > 1:
            return qx.squared_norms(batch_grad(params, x, g))
        gs = qx.as_sequence(g)
        return with_bias({"kernel": qx.outer_l2(patches(x), gs)}, gs, lambda a: jnp.sum(a * a, -1))

    def sum_grad_squared(params, x, g):
        return qx.sum_squares(batch_grad(params, x, g))

    def kron(params, x, g):
        # A = sum_{n,p} u u ᵀ / N;  G = sum_n (sum_p g_np)(sum_p g_np)ᵀ   (BackPACK's convention)
        gs = qx.as_sequence(g)
        Gf = qx.summed_outer(gs)
        u = patches(x)
        return with_bias(
            {"kernel": qx.Kron(qx.mean_outer(u, u.shape[0]), Gf)}, gs, lambda a: qx.Kron(None, Gf)
        )

    # Kronecker factors for one group only (feature_group_count 1): grouped kernels have no hook
    hooks = PerExample(
        batch_grad, batch_l2, sum_grad_squared, kron if G == 1 else None, hessian_residual=linear_residual
    )
    # Backward rules (jaxbp.rules): a feedback kernel B of W's shape stands in for W in dx
    return Layer(init, forward, backward, name=name, per_example=hooks, feedback=feedback_of("kernel"))


def Conv2D(
    features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    kernel_dilation: int | Sequence[int] = (1, 1),
    feature_group_count: int = 1,
    use_bias: bool = True,
    **kw,
) -> Layer:
    """2-D convolution: (N, H, W, C) -> (N, H', W', F); params {"kernel": (kh, kw, C/G, F), "bias": (F,)}."""
    return ConvND(
        features,
        kernel_size,
        strides,
        padding,
        kernel_dilation,
        feature_group_count,
        use_bias,
        rank=2,
        name="Conv2D",
        **kw,
    )


def Conv1D(
    features: int,
    kernel_size: int | Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    **kw,
) -> Layer:
    """1-D convolution: (N, L, C) -> (N, L', features); params {"kernel": (k, C/G, F), "bias": (F,)}."""
    return ConvND(
        features,
        kernel_size,
        strides,
        padding,
        kernel_dilation,
        feature_group_count,
        use_bias,
        rank=1,
        name="Conv1D",
        **kw,
    )
