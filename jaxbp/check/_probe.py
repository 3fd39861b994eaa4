"""The checker's machinery: one traced probe per layer or network, and its statistics as report rows.

:func:`_probe` runs, under one trace, every level's own backward against the witnesses of
:mod:`jaxbp.check._witness` (on the activations and true cotangents that reach the level), the
loss as one more level, and the whole network's backward against autodiff. :func:`_build_report`
turns the per-seed statistics into :class:`~jaxbp.check.report.LeafCheck` rows with the
dtype-derived tolerances, the kink/tie excuses and the "follows" marking of inherited errors.
Public entry points live in :mod:`jaxbp.check`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._witness import cast, is_float, witness_stats
from jaxbp.check.report import WITNESSES, CheckReport, LeafCheck
from jaxbp.core import Layer, apply, is_stateful, layer_name

FD_RTOL = (
    1e-8  # float64 central differences resolve ~1e-11 of sum |g_i (J v)_i|; the rest is curvature margin
)


def default_rtol(dtype, size: int) -> float:
    """Relative tolerance for comparing two computations in ``dtype`` that sum over ``size`` terms.

    Rounding errors of sums grow like ``eps * sqrt(size)``; the factor 8 covers the few
    elementary operations per term. Capped at 5% for very coarse dtypes (bfloat16).
    """
    return float(min(0.05, 8 * jnp.finfo(dtype).eps * math.sqrt(max(size, 1))))


def _is_serial(layer: Layer) -> bool:
    return bool(layer.layers) and layer.name.startswith("serial(")


def _leaf_names(D, int_x: bool) -> list[str]:
    params = D[0]
    names = [jax.tree_util.keystr(p) or "." for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if not int_x:
        names += ["x" + jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(D[1])[0]]
    return names


def _hand_like(name: str, D, dp, dx, meta: dict):
    """Check the backward's output against ``D`` at trace time; returns it shaped like ``D``."""
    want = D if len(D) == 2 else (D[0],)
    got = (dp, dx) if len(D) == 2 else (dp,)
    if jax.tree.structure(got) != jax.tree.structure(want):
        meta["shape"][name] = (
            f"backward returned {jax.tree.structure(got)}, expected {jax.tree.structure(want)}"
        )
        return None
    problems = []
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got), strict=True):
        where = ("dparams" if path[0].idx == 0 else "dx") + jax.tree_util.keystr(path[1:])
        if g.shape != w.shape:
            problems.append(f"{where}: shape {g.shape} != {w.shape}")
        elif g.dtype != w.dtype:
            problems.append(f"{where}: dtype {g.dtype} != {w.dtype}")
    if any("shape" in p for p in problems):
        meta["shape"][name] = "; ".join(problems)
        return None
    if problems:
        meta["shape"].setdefault(name, "; ".join(problems))
    return jax.tree.map(lambda g, w: g.astype(w.dtype), got, want)


def _probe(net: Layer, params, x, state, lkey, train, top, key, dtype, fd: bool, meta: dict) -> dict:
    """One pass in ``dtype``: each level's own backward, the loss and the whole-network gradient.

    ``top`` is ``(value_fn, hand_g_fn, g_top)``: the scalar on top of the network (``<g, y>`` or
    the loss), the cotangent the hand-written pass starts from (None: ``g``; or ``loss.backward``)
    and ``g`` itself when known (``check_layer``).
    """
    params, x, state = cast(params, dtype), cast(x, dtype), cast(state, dtype)
    value_fn, hand_g_fn, g_top = top
    serial = _is_serial(net)
    layers = net.layers if serial else (net,)
    stateful_net = is_stateful(net)

    def level_args(i):
        if not serial:
            return params, state, lkey
        k = None if lkey is None else jax.random.fold_in(lkey, i)
        return params[i], (state[i] if stateful_net else ()), k

    def run_levels(x, deltas=None):
        xs, ress = [], []
        for i, layer in enumerate(layers):
            p, s, k = level_args(i)
            xs.append(x)
            x, r, _ = apply(layer, p, x, state=s, key=k, train=train)
            ress.append(r)
            if deltas is not None:
                x = jax.tree.map(jnp.add, x, deltas[i])
        return x, xs, ress

    y, xs, ress = run_levels(x)
    ys = [*xs[1:], y]
    zeros = [jax.tree.map(jnp.zeros_like, yi) for yi in ys]
    # the true dL/dy at every level (autodiff of everything above it); g itself for a single layer
    gs = jax.grad(lambda d: value_fn(run_levels(x, d)[0]))(zeros) if serial or g_top is None else [g_top]

    out = {"levels": []}
    for i, layer in enumerate(layers):
        p, s, k = level_args(i)
        int_x = not all(is_float(a) for a in jax.tree.leaves(xs[i]))
        D = (p,) if int_x else (p, xs[i])

        def F(D, layer=layer, s=s, k=k, xi=xs[i], int_x=int_x):
            return apply(layer, D[0], xi if int_x else D[1], state=s, key=k, train=train)[0]

        dp, dx = layer.backward(p, ress[i], gs[i])
        meta["levels"].setdefault(
            i,
            {
                "name": layer_name(layer),
                "leaves": _leaf_names(D, int_x),
                "shapes": [a.shape for a in jax.tree.leaves(D)],
                "size": sum(a.size for a in jax.tree.leaves((D, ys[i]))),
            },
        )
        hand = _hand_like(i, D, dp, dx, meta)
        out["levels"].append(
            None
            if hand is None
            else witness_stats(F, D, hand, gs[i], jax.random.fold_in(key, i), dot=fd, fd=fd)
        )

    if serial or hand_g_fn is not None:
        out["loss"] = None
        if hand_g_fn is not None:  # the loss is one more level: pred -> scalar, cotangent 1
            loss_hand = hand_g_fn(y)
            one = jnp.ones((), dtype)
            meta["loss"] = {"size": sum(a.size for a in jax.tree.leaves(y))}
            out["loss"] = witness_stats(
                lambda D: value_fn(D[0]),
                (y,),
                (loss_hand,),
                one,
                jax.random.fold_in(key, len(layers)),
                dot=fd,
                fd=fd,
            )
        int_x = not all(is_float(a) for a in jax.tree.leaves(x))
        D = (params,) if int_x else (params, x)

        def F_all(D):
            return apply(net, D[0], x if int_x else D[1], state=state, key=lkey, train=train)[0]

        y_net, res, _ = apply(net, params, x, state=state, key=lkey, train=train)
        g_hand = hand_g_fn(y_net) if hand_g_fn is not None else jax.grad(value_fn)(y_net)
        hand = _hand_like("e2e", D, *net.backward(params, res, g_hand), meta)
        meta["e2e"] = {
            "leaves": _leaf_names(D, int_x),
            "shapes": [a.shape for a in jax.tree.leaves(D)],
            "level": _leaf_levels(params, serial, int_x),
            "size": sum(a.size for a in jax.tree.leaves((D, y))),
        }
        out["e2e"] = (
            None if hand is None else witness_stats(F_all, D, hand, jax.grad(value_fn)(y_net), key, dot=False)
        )
    return out


def _leaf_levels(params, serial: bool, int_x: bool) -> list[int]:
    levels = []
    for i, p in enumerate(params if serial else (params,)):
        levels += [i] * len(jax.tree.leaves(p))
    return levels + ([] if int_x else [0])


def _ratio(err, bound):
    return np.where(bound > 0, err / np.where(bound > 0, bound, 1.0), np.where(err > 0, np.inf, 0.0))


def _rows(
    level, name, witness, dtype, leaves, shapes, s, rtol, atol, excused=None, floor=None
) -> list[LeafCheck]:
    """Turn (seeds, L) statistics of one witness into one row per leaf (the worst seed).

    ``floor`` (seeds,) is the largest gradient element of the level: a leaf whose exact gradient
    cancels to ~0 (the bias of a Dense before a BatchNorm) holds only rounding noise of the size
    of the terms that cancelled, so its errors are judged against the level's scale, not its own.
    """
    rows = []
    hand, ref = WITNESSES[witness]
    for j, leaf in enumerate(leaves):
        if witness in ("vjp", "e2e"):
            err, scale = s["max_abs"][:, j], s["scale"][:, j]
            if floor is not None:
                scale = np.maximum(scale, floor)
        elif witness == "dot":
            err, scale = np.abs(s["lhs"][:, j] - s["rhs"][:, j]), s["dscale"][:, j]
        else:
            err, scale = np.abs(s["fd"][:, j] - s["rhs"][:, j]), s["fscale"][:, j]
        tol = FD_RTOL if witness == "fd" else rtol
        bound = atol + tol * scale + (s["fatol"][:, j] if witness == "fd" else 0.0)
        ratio = _ratio(err, bound)
        fail = ratio > 1
        exc = np.zeros_like(fail) if excused is None else excused[:, j].copy()
        if witness == "fd":
            exc |= s["kink"][:, j] >= err  # one-sided differences disagree by more than the error: a kink
        bad = fail & ~exc
        k = int(np.argmax(np.where(exc & fail, -1.0, ratio)))
        vector = witness in ("vjp", "e2e")
        skipped = int((fail & exc).sum())
        status = "FAIL" if bad.any() else ("kink" if skipped == len(fail) else "ok")
        rows.append(
            LeafCheck(
                level=level,
                level_name=name,
                leaf=leaf,
                witness=witness,
                dtype=str(jnp.dtype(dtype)),
                max_abs_err=float(err[k]),
                max_rel_err=float(_ratio(err[k], scale[k])),
                worst_index=(
                    tuple(int(i) for i in np.unravel_index(int(s["argmax"][k, j]), shapes[j]))
                    if vector and shapes[j]
                    else (() if vector else None)
                ),
                cosine=float(s["cos"][k, j]) if vector else None,
                tol=tol,
                atol=atol,
                status=status,
                hand=hand,
                reference=ref,
                seed=k,
                skipped=skipped,
            )
        )
    return rows


def _ties(s) -> np.ndarray:
    """(seeds, L): the vjp witness failed at a tie -- the function has a kink along hand - reference.

    Moving by +-t along U = (hand - ref) / max|hand - ref|, the second difference
    sum_k |g_k (y+ + y- - 2y)_k| / t
    is ~0 where the layer is differentiable and at least <hand - ref, U> at a genuine tie (ReLU at 0: 2x;
    a max over n tied values: n / (n - 1) x), so a bug beside a tie is not excused.
    """
    return (s["tie"] > np.maximum(s["tie_expected"], s["tatol"])) & (s["max_abs"] > 0)


def _build_report(name, stats, meta, dtypes, rtol, atol, seeds, is_net) -> CheckReport:
    levels = [meta["levels"][i]["name"] for i in sorted(meta["levels"])]
    level_names = list(levels) + (["loss"] if meta.get("loss") else [])
    report = CheckReport(name=name, levels=level_names, seeds=seeds)
    for key, msg in meta["shape"].items():
        lvl = 0 if key == "e2e" else key
        report.rows.append(
            LeafCheck(
                lvl,
                level_names[lvl],
                "dparams/dx",
                "shape",
                "-",
                math.inf,
                math.inf,
                None,
                None,
                0.0,
                0.0,
                "FAIL",
                *WITNESSES["shape"],
                detail=msg,
            )
        )
    ties = {}
    for dtype in dtypes:
        s_all = stats[str(jnp.dtype(dtype))]
        for i, s in enumerate(s_all["levels"]):
            if s is None:
                continue
            m = meta["levels"][i]
            tol = rtol if rtol is not None else default_rtol(dtype, m["size"])
            if "tie" in s:
                ties[i] = _ties(s) & (s["max_abs"] > tol * s["scale"])
            for w in ("vjp", "dot", "fd"):
                if w not in ("vjp",) and ("fd" if w == "fd" else "lhs") not in s:
                    continue
                report.rows += _rows(
                    i,
                    levels[i],
                    w,
                    dtype,
                    m["leaves"],
                    m["shapes"],
                    s,
                    tol,
                    atol,
                    ties.get(i),
                    s["scale"].max(axis=1),
                )
        if s_all.get("loss") is not None:
            s, n = s_all["loss"], len(levels)
            tol = rtol if rtol is not None else default_rtol(dtype, meta["loss"]["size"])
            if "tie" in s:
                ties[n] = _ties(s) & (s["max_abs"] > tol * s["scale"])
            for w in ("vjp", "dot", "fd"):
                if w == "vjp" or ("fd" if w == "fd" else "lhs") in s:
                    report.rows += _rows(n, "loss", w, dtype, ["pred"], [()], s, tol, atol, ties.get(n))
        if s_all.get("e2e") is not None:
            m = meta["e2e"]
            tol = rtol if rtol is not None else default_rtol(dtype, m["size"])
            lv = np.asarray(m["level"])
            for j, (leaf, shape) in enumerate(zip(m["leaves"], m["shapes"], strict=True)):
                sj = {k: v[:, j : j + 1] for k, v in s_all["e2e"].items()}
                floor = s_all["e2e"]["scale"][:, lv == lv[j]].max(axis=1)
                report.rows += _rows(
                    int(lv[j]), levels[lv[j]], "e2e", dtype, [leaf], [shape], sj, tol, atol, None, floor
                )
    # End-to-end errors at or below the first bad level follow from it; at or below a level that
    # sits on a tie (its own vjp excused as a kink) they are that tie's legitimate subgradient choice.
    bad = report.first_bad_level
    tied = [r.level for r in report.rows if r.witness in ("vjp", "dot") and r.skipped]
    report.rows = [
        dataclasses.replace(r, status="follows")
        if r.witness == "e2e" and r.status == "FAIL" and bad is not None and r.level <= bad
        else dataclasses.replace(r, status="kink")
        if r.witness == "e2e" and r.status == "FAIL" and tied and r.level <= max(tied)
        else r
        for r in report.rows
    ]
    return report


def _compiled(f, *args):
    """``jax.jit(f)(*args)`` compiled with XLA's backend optimisation level 1.

    A check runs its program once, so compile time dominates: level 1 compiles ~40% faster than
    the default with the same float64 results. (Level 0 is 3x faster but gave float32-accurate
    derivatives of transcendental functions in float64 programs -- caught by the catalogue's
    1e-14 tolerance, as any such regression would be.)
    """
    lowered = jax.jit(f).lower(*args)
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 1})(*args)


def _native_dtype(tree, fallback=jnp.float32):
    floats = [a.dtype for a in jax.tree.leaves(tree) if is_float(a)]
    return jnp.dtype(floats[0]) if floats else jnp.dtype(fallback)


def _random_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=False)]
    )


def _perturbed(key, params):
    """``params`` + N(0, (0.1 + rms / 2)^2) noise per floating leaf: away from an init's special values."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [
            a + (0.1 + 0.5 * jnp.sqrt(jnp.mean(a * a))) * jax.random.normal(k, a.shape, a.dtype)
            if is_float(a)
            else a
            for k, a in zip(keys, leaves, strict=False)
        ]
    )


def _rbg(key):
    """The checker's own random draws use XLA's RngBitGenerator: one op instead of an unrolled
    threefry per draw halves the compile time, which dominates a check."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = jnp.asarray(data, jnp.uint32).reshape(-1)
    return jax.random.wrap_key_data(jnp.concatenate([data, data])[:4], impl="unsafe_rbg")


def _passes(native) -> list:
    return [jnp.dtype(jnp.float64)] + ([native] if native != jnp.float64 else [])
