"""Gradient verification: every hand-written backward against autodiff and finite differences.

:func:`check_layer` draws params, an input and a cotangent at random (for as many seeds
as asked, vmapped in one compiled program) and compares the layer's backward, for every
parameter leaf and for the input, against ``jax.vjp``, a ``jax.jvp`` dot-product test
and central finite differences in float64 (see :mod:`jaxbp.check_witness`). It runs in
float64 (x64 switched on for the duration and restored) and in the layer's own dtype,
with tolerances from the dtype's epsilon and the size of the computation.

:func:`check_network` checks every level of a ``serial`` network in place, on the
activations and cotangents that really reach it, plus the loss and the end-to-end
gradient, and names the level where the error starts. :func:`check_sgd_step` compares
one full optax step. This module and its helpers are the only library code that calls
JAX autodiff: it is the oracle, never the implementation.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbp.backprop import forward_backward
from jaxbp.check_report import WITNESSES, CheckReport, LeafCheck
from jaxbp.check_witness import cast, inner, is_float, witness_stats
from jaxbp.core import Array, Layer, Loss, Params, Shape, State, apply, init_state, is_stateful, layer_name
from jaxbp.step import TrainState, train_step_fn

FD_RTOL = 1e-8  # float64 central differences resolve ~1e-11 of sum |g_i (J v)_i|; the rest is curvature margin


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
        meta["shape"][name] = f"backward returned {jax.tree.structure(got)}, expected {jax.tree.structure(want)}"
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
    if serial or g_top is None:
        gs = jax.grad(lambda d: value_fn(run_levels(x, d)[0]))(zeros)  # true dL/dy at every level
    else:
        gs = [g_top]

    out = {"levels": []}
    for i, layer in enumerate(layers):
        p, s, k = level_args(i)
        int_x = not all(is_float(a) for a in jax.tree.leaves(xs[i]))
        D = (p,) if int_x else (p, xs[i])

        def F(D, layer=layer, s=s, k=k, xi=xs[i], int_x=int_x):
            return apply(layer, D[0], xi if int_x else D[1], state=s, key=k, train=train)[0]

        dp, dx = layer.backward(p, ress[i], gs[i])
        meta["levels"].setdefault(i, {"name": layer_name(layer), "leaves": _leaf_names(D, int_x),
                                      "shapes": [a.shape for a in jax.tree.leaves(D)],
                                      "size": sum(a.size for a in jax.tree.leaves((D, ys[i])))})
        hand = _hand_like(i, D, dp, dx, meta)
        out["levels"].append(None if hand is None else
                             witness_stats(F, D, hand, gs[i], jax.random.fold_in(key, i), dot=fd, fd=fd))

    if serial or hand_g_fn is not None:
        out["loss"] = None
        if hand_g_fn is not None:  # the loss is one more level: pred -> scalar, cotangent 1
            loss_hand = hand_g_fn(y)
            one = jnp.ones((), dtype)
            meta["loss"] = {"size": sum(a.size for a in jax.tree.leaves(y))}
            out["loss"] = witness_stats(lambda D: value_fn(D[0]), (y,), (loss_hand,), one,
                                        jax.random.fold_in(key, len(layers)), dot=fd, fd=fd)
        int_x = not all(is_float(a) for a in jax.tree.leaves(x))
        D = (params,) if int_x else (params, x)

        def F_all(D):
            return apply(net, D[0], x if int_x else D[1], state=state, key=lkey, train=train)[0]

        y_net, res, _ = apply(net, params, x, state=state, key=lkey, train=train)
        g_hand = hand_g_fn(y_net) if hand_g_fn is not None else jax.grad(value_fn)(y_net)
        hand = _hand_like("e2e", D, *net.backward(params, res, g_hand), meta)
        meta["e2e"] = {"leaves": _leaf_names(D, int_x), "shapes": [a.shape for a in jax.tree.leaves(D)],
                       "level": _leaf_levels(params, serial, int_x),
                       "size": sum(a.size for a in jax.tree.leaves((D, y)))}
        out["e2e"] = None if hand is None else witness_stats(F_all, D, hand, jax.grad(value_fn)(y_net), key,
                                                             dot=False)
    return out


def _leaf_levels(params, serial: bool, int_x: bool) -> list[int]:
    levels = []
    for i, p in enumerate(params if serial else (params,)):
        levels += [i] * len(jax.tree.leaves(p))
    return levels + ([] if int_x else [0])


def _ratio(err, bound):
    return np.where(bound > 0, err / np.where(bound > 0, bound, 1.0), np.where(err > 0, np.inf, 0.0))


def _rows(level, name, witness, dtype, leaves, shapes, s, rtol, atol, excused=None, floor=None) -> list[LeafCheck]:
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
        rows.append(LeafCheck(
            level=level, level_name=name, leaf=leaf, witness=witness, dtype=str(jnp.dtype(dtype)),
            max_abs_err=float(err[k]), max_rel_err=float(_ratio(err[k], scale[k])),
            worst_index=(tuple(int(i) for i in np.unravel_index(int(s["argmax"][k, j]), shapes[j]))
                         if vector and shapes[j] else (() if vector else None)),
            cosine=float(s["cos"][k, j]) if vector else None, tol=tol, atol=atol, status=status,
            hand=hand, reference=ref, seed=k, skipped=skipped,
        ))
    return rows


def _ties(s) -> np.ndarray:
    """(seeds, L): the vjp witness failed at a tie -- the function has a kink along hand - reference.

    Moving by +-t along U = (hand - ref) / max|hand - ref|, the second difference sum_k |g_k (y+ + y- - 2y)_k| / t
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
        report.rows.append(LeafCheck(lvl, level_names[lvl], "dparams/dx", "shape", "-", math.inf, math.inf, None,
                                     None, 0.0, 0.0, "FAIL", *WITNESSES["shape"], detail=msg))
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
                report.rows += _rows(i, levels[i], w, dtype, m["leaves"], m["shapes"], s, tol, atol, ties.get(i),
                                     s["scale"].max(axis=1))
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
                sj = {k: v[:, j:j + 1] for k, v in s_all["e2e"].items()}
                floor = s_all["e2e"]["scale"][:, lv == lv[j]].max(axis=1)
                report.rows += _rows(int(lv[j]), levels[lv[j]], "e2e", dtype, [leaf], [shape], sj, tol, atol, None, floor)
    bad = report.first_bad_level
    if bad is not None:  # end-to-end errors at or below the first bad level follow from it
        report.rows = [dataclasses.replace(r, status="follows") if r.witness == "e2e" and r.status == "FAIL" and r.level <= bad
                       else r for r in report.rows]
    return report


def _compiled(f, *args):
    """``jax.jit(f)(*args)``. (XLA's ``xla_backend_optimization_level=0`` would compile 3x faster
    but gives float32-accurate transcendental derivatives in float64 programs: not for a checker.)"""
    return jax.jit(f)(*args)


def _native_dtype(tree, fallback=jnp.float32):
    floats = [a.dtype for a in jax.tree.leaves(tree) if is_float(a)]
    return jnp.dtype(floats[0]) if floats else jnp.dtype(fallback)


def _random_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten([jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def _passes(native) -> list:
    return [jnp.dtype(jnp.float64)] + ([native] if native != jnp.float64 else [])


def check_layer(
    layer: Layer,
    input_shape: Shape,
    *,
    key: Array | None = None,
    dtype=None,
    atol: float | None = None,
    rtol: float | None = None,
    seeds: int = 1,
    make_input=None,
    train: bool = True,
) -> CheckReport:
    """Check ``layer.backward`` for every parameter leaf and the input against three witnesses.

    Params (from ``layer.init``), the input and the cotangent are drawn at random for each
    of ``seeds`` keys; all seeds run vmapped in one compiled program. The check runs in
    float64 (x64 is switched on for the call and restored) with vjp, jvp-dot-product and
    finite-difference witnesses, and again in the layer's own dtype with the vjp witness (tolerance from its epsilon).
    A ``serial`` layer is also checked level by level, so the report names the level.

    Args:
      layer: any :class:`~jaxbp.core.Layer`, built-in or user-written.
      input_shape: the input shape, batch axis included.
      key: PRNG key (default ``PRNGKey(0)``).
      dtype: the layer's own dtype (default: the dtype of its initial params, else float32).
      atol: absolute tolerance added to every bound (default 0).
      rtol: relative tolerance (default :func:`default_rtol` of each dtype and size).
      seeds: number of random draws.
      make_input: ``(key, shape, dtype) -> x`` (default standard normal).
      train: the mode for stateful layers (BatchNorm, Dropout); they get a fixed key.

    Returns:
      A :class:`~jaxbp.check_report.CheckReport`.
    """
    shape = tuple(input_shape)
    key = jax.random.PRNGKey(0) if key is None else key
    make_input = make_input or jax.random.normal
    native = jnp.dtype(dtype) if dtype is not None else _native_dtype(  # as the user's config makes it
        jax.eval_shape(lambda k: layer.init(k, shape)[1], jax.random.PRNGKey(0)))
    with jax.enable_x64(True):
        meta = {"levels": {}, "shape": {}}

        def run(key):
            kp, kx, kl, kg, kw = jax.random.split(key, 5)
            params = cast(layer.init(kp, shape)[1], native)
            x = make_input(kx, shape, native)
            state = cast(init_state(layer, shape), native)
            lkey = kl if is_stateful(layer) else None
            g = _random_like(kg, apply(layer, params, x, state=state, key=lkey, train=train)[0])
            return {str(dt): _probe(layer, params, x, state, lkey, train,
                                    (lambda y, gd=cast(g, dt): inner(gd, y), None, cast(g, dt)), kw, dt, dt == jnp.float64, meta)
                    for dt in _passes(native)}

        stats = jax.tree.map(np.asarray, _compiled(jax.vmap(run), jax.random.split(key, seeds)))
    name = f"{layer_name(layer)} on {shape}"
    return _build_report(name, stats, meta, _passes(native), rtol, atol or 0.0, seeds, False)


def check_network(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State = (),
    key: Array | None = None,
    train: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> CheckReport:
    """Check every level of ``net`` in place, the loss, and the end-to-end gradient.

    Each level's own backward is run on the activation that really reaches it and on the
    true cotangent from above (autodiff of the levels above and the loss), against the
    same witnesses as :func:`check_layer`; the loss's backward is checked as level N; the
    whole hand-written gradient (``jaxbp`` forward-backward, input gradient included) is
    compared with ``jax.grad``. ``report.first_bad_level`` walks down from the loss to the
    first level whose own backward disagrees: where the error starts. End-to-end errors
    at and below it are marked ``follows``.

    Args:
      net: the network (a ``serial``; any other layer is checked as one level).
      loss: the loss on top.
      params: the network's params.
      x: the input batch.
      target: the targets.
      state: the network's state (``()`` for plain networks).
      key: the PRNG key given to random layers (Dropout).
      train: the mode for stateful layers.
      atol: absolute tolerance (default 0).
      rtol: relative tolerance (default from the dtype and size).

    Returns:
      A :class:`~jaxbp.check_report.CheckReport` whose levels are the network's levels plus the loss.
    """
    with jax.enable_x64(True):
        native = _native_dtype((params, x))
        meta = {"levels": {}, "shape": {}}

        def run(params, x, target, state, lkey):
            out = {}
            for dt in _passes(native):
                t = cast(target, dt)
                top = (lambda y, t=t: loss.forward(y, t)[0], lambda y, t=t: loss.backward(loss.forward(y, t)[1]), None)
                out[str(dt)] = _probe(net, params, x, state, lkey, train, top, jax.random.PRNGKey(1), dt,
                                      dt == jnp.float64, meta)
            return out

        stats = _compiled(run, params, x, target, state, key)
        stats = jax.tree.map(lambda a: np.asarray(a)[None], stats)
    name = f"{layer_name(net)} + {loss.name or 'loss'} on {tuple(jnp.shape(x))}"
    return _build_report(name, stats, meta, _passes(native), rtol, atol or 0.0, 1, True)


def check_sgd_step(
    net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    optimizer: optax.GradientTransformation,
    *,
    state: State = (),
    key: Array | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> CheckReport:
    """Params after one jaxbp training step == params after one step with ``jax.grad`` and ``optimizer``.

    Args:
      net: the network.
      loss: the loss.
      params: the params before the step.
      x: the input batch.
      target: the targets.
      optimizer: the optax transformation both steps use.
      state: the network's state.
      key: the training PRNG key (the step splits it as :func:`jaxbp.step.train_step_fn` does).
      atol: absolute tolerance (default: rounding of adding the update to the params).
      rtol: relative tolerance on the update (default from the dtype and size).

    Returns:
      A :class:`~jaxbp.check_report.CheckReport` with one ``sgd`` row per parameter leaf.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    ts = TrainState(params, optimizer.init(params), state, key, jnp.zeros((), jnp.int32))

    def reference(ts):
        _, step_key = jax.random.split(ts.key)

        def value(p):
            return loss.forward(apply(net, p, x, state=ts.state, key=step_key, train=True)[0], target)[0]

        updates, _ = optimizer.update(jax.grad(value)(ts.params), ts.opt_state, ts.params)
        return optax.apply_updates(ts.params, updates)

    got = jax.jit(lambda ts: train_step_fn(net, loss, optimizer)(ts, x, target)[0].params)(ts)
    want = jax.jit(reference)(ts)
    dtype = _native_dtype(params)
    size = sum(a.size for a in jax.tree.leaves((params, x)))
    tol = rtol if rtol is not None else default_rtol(dtype, size)
    levels = [layer_name(l) for l in net.layers] if _is_serial(net) else [layer_name(net)]
    report = CheckReport(name=f"one {layer_name(net)} step", levels=levels)
    hand, ref = WITNESSES["sgd"]
    for (path, p0), p1, p2 in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(got),
                                  jax.tree.leaves(want)):
        p0, p1, p2 = (np.asarray(a, np.float64) for a in (p0, p1, p2))
        err, scale = np.abs(p1 - p2), np.max(np.abs(p2 - p0), initial=0.0)
        eps = float(jnp.finfo(dtype).eps)
        a = atol if atol is not None else 4 * eps * np.max(np.abs(p0), initial=0.0)
        level = path[0].idx if _is_serial(net) and hasattr(path[0], "idx") else 0
        worst = int(np.argmax(err)) if err.size else 0
        cos = float(np.vdot(p1 - p0, p2 - p0) / max(np.linalg.norm(p1 - p0) * np.linalg.norm(p2 - p0), 1e-300))
        report.rows.append(LeafCheck(
            level, levels[level], jax.tree_util.keystr(path), "sgd", str(jnp.dtype(dtype)), float(err.max(initial=0)),
            float(_ratio(err.max(initial=0), scale)), tuple(int(i) for i in np.unravel_index(worst, p0.shape)),
            cos, tol, float(a), "ok" if err.max(initial=0) <= a + tol * scale else "FAIL", hand, ref))
    return report


def check_catalogue(names=None, *, seeds: int = 1, dtype=None, key: Array | None = None) -> dict[str, CheckReport]:
    """Run :func:`check_layer` on the default configuration of each built-in catalogue entry.

    Args:
      names: entry names (default: the whole catalogue).
      seeds: random draws per entry (values vary, shapes stay: one compile per entry).
      dtype: the "own" dtype to check besides float64 (default: each layer's param dtype).
      key: PRNG key.

    Returns:
      ``{name: report}`` in catalogue order.
    """
    from jaxbp.catalogue import CATALOGUE

    out = {}
    for name in names or list(CATALOGUE):
        entry = CATALOGUE[name]
        layer, shape = entry.default()
        out[name] = check_layer(layer, shape, key=key, dtype=dtype, seeds=seeds, make_input=entry.make_input,
                                train=entry.train)
    return out
