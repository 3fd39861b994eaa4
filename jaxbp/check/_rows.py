"""From probe statistics to report rows: tolerances, kink and tie excuses, inherited errors.

:func:`build_report` turns the per-seed statistics of :func:`jaxbp.check._probe.probe` into
:class:`~jaxbp.check.report.LeafCheck` rows (the worst seed of each leaf and witness) with the
dtype-derived tolerances, excuses the kinks and ties, and marks end-to-end errors that merely
follow from a bad level above as ``follows``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxbp.check._probe import LevelInfo, ProbeInfo
from jaxbp.check.report import WITNESSES, CheckReport, LeafCheck

FD_RTOL = (
    1e-8  # float64 central differences resolve ~1e-11 of sum |g_i (J v)_i|; the rest is curvature margin
)


def default_rtol(dtype, size: int) -> float:
    """Relative tolerance for comparing two computations in ``dtype`` that sum over ``size`` terms.

    Rounding errors of sums grow like ``eps * sqrt(size)``; the factor 8 covers the few
    elementary operations per term. Capped at 5% for very coarse dtypes (bfloat16).
    """
    return float(min(0.05, 8 * jnp.finfo(dtype).eps * math.sqrt(max(size, 1))))


def ratio(err, bound):
    """``err / bound``, with 0/0 = 0 and x/0 = inf; NaN when either is NaN (a non-finite value: a failure)."""
    err, bound = np.asarray(err, np.float64), np.asarray(bound, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(bound > 0, err / np.where(bound > 0, bound, 1.0), np.where(err > 0, np.inf, 0.0))
    return np.where(np.isnan(err) | np.isnan(bound), np.nan, r)


def _nonfinite_note(s, j: int) -> np.ndarray:
    """(seeds,) counts of elements where exactly one side is non-finite, and the text for the worst seed."""
    hand = s.get("hand_nonfinite", np.zeros_like(s["max_abs"]))[:, j]
    ref = s.get("ref_nonfinite", np.zeros_like(s["max_abs"]))[:, j]
    return hand, ref


def _errors(s, witness: str, j: int, floor):
    """(err, scale) per seed of leaf ``j`` under ``witness``."""
    if witness in ("vjp", "e2e"):
        err, scale = s["max_abs"][:, j], s["scale"][:, j]
        if floor is not None:
            scale = np.maximum(scale, floor)
        hand_bad, ref_bad = _nonfinite_note(s, j)
        err = np.where((hand_bad > 0) | (ref_bad > 0), np.inf, err)
    elif witness == "dot":
        err, scale = np.abs(s["lhs"][:, j] - s["rhs"][:, j]), s["dscale"][:, j]
    else:
        err, scale = np.abs(s["fd"][:, j] - s["rhs"][:, j]), s["fscale"][:, j]
    return err, scale


def leaf_rows(
    s, witness: str, *, info: LevelInfo, dtype, rtol, atol, excused=None, floor=None
) -> list[LeafCheck]:
    """One row per leaf of ``info`` (the worst seed) for one witness's (seeds, L) statistics ``s``.

    ``floor`` (seeds,) is the largest gradient element of the level: a leaf whose exact gradient
    cancels to ~0 (the bias of a Dense before a BatchNorm) holds only rounding noise of the size
    of the terms that cancelled, so its errors are judged against the level's scale, not its own.
    A non-finite value on one side only (hand or reference) is a failure whatever the tolerance.
    """
    rows = []
    hand, ref = WITNESSES[witness]
    vector = witness in ("vjp", "e2e")
    for j, leaf in enumerate(info.leaves):
        err, scale = _errors(s, witness, j, floor)
        tol = FD_RTOL if witness == "fd" else rtol
        bound = atol + tol * scale + (s["fatol"][:, j] if witness == "fd" else 0.0)
        r = ratio(err, bound)
        fail = ~(r <= 1)  # NaN (a non-finite hand-written value in a scalar witness) fails
        exc = np.zeros_like(fail) if excused is None else excused[:, j].copy()
        if witness == "fd":
            exc |= s["kink"][:, j] >= err  # one-sided differences disagree by more than the error: a kink
        hand_bad, ref_bad = _nonfinite_note(s, j) if vector else (np.zeros(len(err)), np.zeros(len(err)))
        exc &= (hand_bad == 0) & (ref_bad == 0) & np.isfinite(err)
        bad = fail & ~exc
        k = int(np.argmax(np.where(exc & fail, -1.0, np.nan_to_num(r, nan=np.inf))))
        skipped = int((fail & exc).sum())
        detail = ""
        if hand_bad[k] or ref_bad[k] or not np.isfinite(err[k]):
            detail = (
                f"non-finite hand-written value at {int(hand_bad[k])} elements where the reference is finite"
                if hand_bad[k]
                else f"non-finite reference at {int(ref_bad[k])} elements where hand is finite"
                if ref_bad[k]
                else "the hand-written value or the reference is non-finite"
            )
        rows.append(
            LeafCheck(
                level=info.path if witness != "e2e" else info.leaf_levels[j],
                level_name=info.name,
                leaf=leaf,
                witness=witness,
                dtype=str(jnp.dtype(dtype)),
                max_abs_err=float(err[k]),
                max_rel_err=float(ratio(err[k], scale[k])),
                worst_index=(
                    tuple(int(i) for i in np.unravel_index(int(s["argmax"][k, j]), info.shapes[j]))
                    if vector and info.shapes[j]
                    else (() if vector else None)
                ),
                cosine=float(s["cos"][k, j]) if vector else None,
                tol=tol,
                atol=atol,
                status="FAIL" if bad.any() else ("kink" if skipped == len(fail) else "ok"),
                hand=hand,
                reference=ref,
                seed=k,
                skipped=skipped,
                detail=detail,
            )
        )
    return rows


def ties(s) -> np.ndarray:
    """(seeds, L): the vjp witness failed at a tie -- the function has a kink along hand - reference.

    Moving by +-t along U = (hand - ref) / max|hand - ref|, the second difference
    sum_k |g_k (y+ + y- - 2y)_k| / t
    is ~0 where the layer is differentiable and at least <hand - ref, U> at a genuine tie (ReLU at 0: 2x;
    a max over n tied values: n / (n - 1) x), so a bug beside a tie is not excused.
    """
    return (s["tie"] > np.maximum(s["tie_expected"], s["tatol"])) & (s["max_abs"] > 0)


def _problem_row(info: LevelInfo) -> LeafCheck:
    return LeafCheck(
        level=info.path,
        level_name=info.name,
        leaf="dparams/dx",
        witness="shape",
        dtype="-",
        max_abs_err=math.inf,
        max_rel_err=math.inf,
        worst_index=None,
        cosine=None,
        tol=0.0,
        atol=0.0,
        status="FAIL",
        hand=WITNESSES["shape"][0],
        reference=WITNESSES["shape"][1],
        detail=info.problem,
    )


def _own_rows(s, info: LevelInfo, dtype, rtol, atol, floor, tied: dict) -> list[LeafCheck]:
    """The vjp, dot and fd rows of one level's own backward (or of the loss).

    ``tied`` maps level paths to the (seeds, L) ties found by the float64 pass (the first); a
    later pass in the layer's own dtype is excused at the same draws.
    """
    tol = rtol if rtol is not None else default_rtol(dtype, info.size)
    if "tie" in s:
        tied[info.path] = ties(s) & (s["max_abs"] > tol * s["scale"])
    rows = []
    for w, needs in (("vjp", "max_abs"), ("dot", "lhs"), ("fd", "fd")):
        if needs in s:
            rows += leaf_rows(
                s, w, info=info, dtype=dtype, rtol=tol, atol=atol, excused=tied.get(info.path), floor=floor
            )
    return rows


def _e2e_rows(s, info: LevelInfo, dtype, rtol, atol) -> list[LeafCheck]:
    tol = rtol if rtol is not None else default_rtol(dtype, info.size)
    lv = np.asarray(info.leaf_levels)
    rows = []
    for j in range(len(info.leaves)):
        sj = {k: v[:, j : j + 1] for k, v in s.items()}
        floor = s["scale"][:, lv == lv[j]].max(axis=1)
        one = info._replace(
            leaves=info.leaves[j : j + 1], shapes=info.shapes[j : j + 1], leaf_levels=(lv[j],)
        )
        rows += leaf_rows(sj, "e2e", info=one, dtype=dtype, rtol=tol, atol=atol, floor=floor)
    return rows


def build_report(name: str, passes: dict, *, rtol, atol: float, seeds: int) -> CheckReport:
    """The report of one check.

    Args:
      name: what was checked.
      passes: ``{dtype: (stats, ProbeInfo)}``: each pass's statistics (arrays with a leading seeds
        axis) as from :func:`~jaxbp.check._probe.probe`, and its static facts.
      rtol, atol: tolerances (``rtol`` None: :func:`default_rtol` per dtype and size).
      seeds: the number of random draws.
    """
    first: ProbeInfo = next(iter(passes.values()))[1]
    levels = {i.path: i.name for i in first.levels}
    if first.loss_size is not None:
        levels["loss"] = "loss"
    report = CheckReport(name=name, levels=levels, seeds=seeds)
    problems, tied = {}, {}
    for dtype, (stats, info) in passes.items():
        for i, s in zip(info.levels, stats["levels"], strict=True):
            if i.problem:
                problems.setdefault(i.path, i)
            if s is not None:
                report.rows += _own_rows(s, i, dtype, rtol, atol, s["scale"].max(axis=1), tied)
        if stats["loss"] is not None:
            loss = LevelInfo(path="loss", name="loss", leaves=("pred",), shapes=((),), size=info.loss_size)
            report.rows += _own_rows(stats["loss"], loss, dtype, rtol, atol, None, tied)
        if info.e2e is not None and info.e2e.problem and info.e2e.path not in problems:
            problems[info.e2e.path] = info.e2e._replace(name=levels.get(info.e2e.path, info.e2e.name))
        if stats["e2e"] is not None:
            e2e = info.e2e._replace(name="")
            rows = _e2e_rows(stats["e2e"], e2e, dtype, rtol, atol)
            report.rows += [
                dataclasses.replace(r, level_name=levels.get(r.level, r.level_name)) for r in rows
            ]
    report.rows = [_problem_row(i) for i in problems.values()] + report.rows
    return _mark_inherited(report)


def _mark_inherited(report: CheckReport) -> CheckReport:
    """End-to-end errors at or below the first bad level follow from it; at or below a level that
    sits on a tie (its own vjp excused as a kink) they are that tie's legitimate subgradient choice."""
    order = {p: i for i, p in enumerate(report.levels)}
    bad = report.first_bad_level
    tied = [order[r.level] for r in report.rows if r.witness in ("vjp", "dot") and r.skipped]

    def mark(r: LeafCheck) -> LeafCheck:
        if r.witness != "e2e" or r.status != "FAIL":
            return r
        if bad is not None and order[r.level] <= order[bad]:
            return dataclasses.replace(r, status="follows")
        if tied and order[r.level] <= max(tied):
            return dataclasses.replace(r, status="kink")
        return r

    report.rows = [mark(r) for r in report.rows]
    return report
