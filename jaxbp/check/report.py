"""The result of a gradient check: one row per (level, leaf, witness, dtype), a table and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

# What each witness compares: (the hand-written value, the reference value).
WITNESSES = {
    "shape": ("backward's dparams/dx structure, shapes, dtypes", "params / input"),
    "vjp": ("hand-written backward(g)", "jax.vjp of the forward at g"),
    "dot": ("<backward(g), v>", "<g, J v> by jax.jvp"),
    "fd": ("<backward(g), v>", "<g, (f(w+hv) - f(w-hv)) / 2h> in float64"),
    "e2e": ("network backward (jaxbp)", "jax.grad / jax.vjp of the whole network"),
    "sgd": ("params after one jaxbp step", "params after one step with jax.grad gradients"),
}
OWN = ("shape", "vjp", "dot", "fd")  # witnesses of a level's own backward

STATUS_HELP = {
    "ok": "within tolerance",
    "FAIL": "hand-written value disagrees with the reference",
    "kink": "skipped: near a non-differentiable point (one-sided differences disagree)",
    "follows": "end-to-end symptom of the bad level above; not a separate bug",
}


@dataclass(frozen=True)
class LeafCheck:
    """One checked leaf under one witness (the worst of all seeds).

    Attributes:
      level: the level's path: ``"2"`` for level 2 of a ``serial``, ``"3/branch/1"`` for level 1 inside
        the residual branch of level 3, ``"0"`` for a network that is one layer, ``"loss"`` for the loss.
      level_name: the name of that level's layer.
      leaf: "x" for the input gradient, else the param path (e.g. "['W']").
      witness: one of :data:`WITNESSES`.
      dtype: the dtype the comparison ran in.
      max_abs_err: max |hand - reference| (for scalar witnesses, |hand - reference|).
      max_rel_err: max_abs_err over the scale (largest |element| of either side, or sum |terms|).
      worst_index: index of the worst element in the leaf (None for scalar witnesses).
      cosine: cosine similarity of hand and reference (None for scalar witnesses).
      tol: the relative tolerance used: pass when max_abs_err <= atol + tol * scale.
      atol: the absolute tolerance used.
      status: "ok", "FAIL", "kink" or "follows" (see :data:`STATUS_HELP`).
      hand: what the hand-written value is.
      reference: what the reference value is.
      seed: the seed (index of the random draw) where the worst error occurred.
      skipped: how many seeds were skipped as being near a kink.
      detail: a free-text note (e.g. the shape mismatch).
    """

    level: str
    level_name: str
    leaf: str
    witness: str
    dtype: str
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...] | None
    cosine: float | None
    tol: float
    atol: float
    status: str
    hand: str
    reference: str
    seed: int | None = None
    skipped: int = 0
    detail: str = ""


@dataclass
class CheckReport:
    """What a check found.

    Attributes:
      name: what was checked (layer or network name and input shape).
      levels: ``{path: layer name}`` of every checked level (every leaf of the network, wherever it
        sits), in forward order, then ``"loss"``.
      rows: one :class:`LeafCheck` per (level, leaf, witness, dtype).
      seeds: how many random draws each row covers.
    """

    name: str
    levels: dict[str, str]
    rows: list[LeafCheck] = field(default_factory=list)
    seeds: int = 1

    @property
    def ok(self) -> bool:
        """True when no row failed."""
        return not any(r.status == "FAIL" for r in self.rows)

    @property
    def failed_levels(self) -> list[str]:
        """Paths of the levels whose own backward disagrees with a witness, in forward order (empty if ok)."""
        failed = {r.level for r in self.rows if r.status == "FAIL" and r.witness in OWN}
        return [p for p in self.levels if p in failed]

    @property
    def first_bad_level(self) -> str | None:
        """Walking down from the top, the first level whose own backward is wrong: where the error starts."""
        failed = self.failed_levels
        return failed[-1] if failed else None

    def failures(self) -> list[LeafCheck]:
        """The failing rows."""
        return [r for r in self.rows if r.status == "FAIL"]

    def failed_leaves(self, level: str | None = None) -> set[str]:
        """Leaves with a failing own-backward witness (at ``level``, default the first bad level)."""
        level = self.first_bad_level if level is None else level
        return {r.leaf for r in self.rows if r.status == "FAIL" and r.witness in OWN and r.level == level}

    def summary(self) -> str:
        """One line: OK, or where the error starts and which leaves are wrong."""
        if self.ok:
            skipped = sum(r.skipped for r in self.rows)
            note = f" ({skipped} draws skipped near a kink)" if skipped else ""
            return f"OK   {self.name}: {len(self.rows)} checks x {self.seeds} seeds passed{note}"
        bad = self.first_bad_level
        if bad is None:
            return f"FAIL {self.name}: end-to-end gradient disagrees but every level's own backward agrees"
        leaves = ", ".join(sorted(self.failed_leaves()))
        witnesses = ", ".join(sorted({r.witness for r in self.failures() if r.level == bad}))
        note = next((r.detail for r in self.failures() if r.level == bad and "non-finite" in r.detail), "")
        return (
            f"FAIL {self.name}: error starts at level {bad} ({self.levels[bad]}), "
            f"leaves {leaves} (witnesses: {witnesses})" + (f"; {note}" if note else "")
        )

    def table(self, only_failures: bool = False) -> str:
        """The rows as an aligned text table."""
        rows = self.failures() if only_failures else self.rows
        head = (
            "level",
            "layer",
            "leaf",
            "witness",
            "dtype",
            "max abs err",
            "max rel err",
            "worst at",
            "cosine",
            "tol",
            "status",
        )
        lines = [head]
        for r in rows:
            lines.append(
                (
                    r.level,
                    _clip(r.level_name, 22),
                    r.leaf,
                    r.witness,
                    r.dtype,
                    f"{r.max_abs_err:.2e}",
                    f"{r.max_rel_err:.2e}",
                    "" if r.worst_index is None else str(tuple(r.worst_index)),
                    "" if r.cosine is None else f"{r.cosine:.6f}",
                    f"{r.tol:.1e}",
                    r.status + (f" ({r.skipped} kink)" if r.skipped and r.status != "kink" else ""),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
        text.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(text)

    def __str__(self) -> str:
        legend = "; ".join(
            f"{w}: {WITNESSES[w][0]} vs {WITNESSES[w][1]}"
            for w in dict.fromkeys(r.witness for r in self.rows)
        )
        notes = [r for r in self.rows if r.detail and r.status == "FAIL"]
        out = [self.summary(), self.table(), f"(hand vs reference -- {legend})"]
        out += [f"level {r.level} {r.leaf}: {r.detail}" for r in notes]
        return "\n".join(out)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "ok": self.ok,
            "failed_levels": self.failed_levels,
            "first_bad_level": self.first_bad_level,
            "levels": self.levels,
            "seeds": self.seeds,
            "rows": [asdict(r) for r in self.rows],
        }

    def to_json(self, **kw) -> str:
        """The report as a JSON string (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kw)


def compare_arrays(
    hand,
    ref,
    *,
    level: str,
    level_name: str,
    leaf: str,
    witness: str,
    dtype: str,
    tol: float,
    atol: float = 0.0,
    scale: float | None = None,
    cosine_of: tuple | None = None,
    seed: int | None = None,
    detail: str = "",
    hand_text: str | None = None,
    reference_text: str | None = None,
) -> LeafCheck:
    """The one row of a check that compares a hand-written array with its reference, on the host.

    Passes when ``max|hand - ref| <= atol + tol * scale``; ``scale`` defaults to the largest
    element of either side. A shape mismatch or a non-finite error fails. ``cosine_of`` gives the
    two arrays whose cosine to report (default ``hand`` and ``ref``). ``hand_text``/``reference_text``
    default to the witness's entry of :data:`WITNESSES`.
    """
    hand, ref = np.asarray(hand, np.float64), np.asarray(ref, np.float64)
    texts = WITNESSES.get(witness, ("hand-written", "reference"))
    same = dict(
        level=level,
        level_name=level_name,
        leaf=leaf,
        witness=witness,
        dtype=dtype,
        tol=float(tol),
        atol=float(atol),
        hand=hand_text or texts[0],
        reference=reference_text or texts[1],
        seed=seed,
    )
    if hand.shape != ref.shape:
        detail = "; ".join(x for x in (detail, f"shape {hand.shape}, the reference's {ref.shape}") if x)
        return LeafCheck(
            **same,
            max_abs_err=np.inf,
            max_rel_err=np.inf,
            worst_index=None,
            cosine=None,
            status="FAIL",
            detail=detail,
        )
    err = np.abs(hand - ref)
    if scale is None:
        scale = float(max(np.abs(ref).max(initial=0.0), np.abs(hand).max(initial=0.0)))
    abs_err = float(err.max(initial=0.0)) if not np.isnan(err).any() else float("nan")
    u, v = cosine_of if cosine_of is not None else (hand, ref)
    denom = float(np.linalg.norm(u) * np.linalg.norm(v))
    finite = np.nan_to_num(err, nan=np.inf)
    return LeafCheck(
        **same,
        max_abs_err=abs_err,
        max_rel_err=abs_err / scale if scale else abs_err,
        worst_index=tuple(int(i) for i in np.unravel_index(np.argmax(finite), err.shape)) if err.size else (),
        cosine=float(np.vdot(u, v) / denom) if denom > 0 else 1.0,
        status="ok" if abs_err <= atol + tol * scale else "FAIL",
        detail=detail,
    )


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
