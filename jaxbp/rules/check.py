"""A rule checked against its own definition, level by level, in the checker's report format.

For every leaf the rule's backward meets, on the cotangent that really reaches it, the reference is
the rule's definition computed independently from the leaf's own hand-written backward (itself
verified against autodiff by :func:`jaxbp.check_layer`):

* FA / sign symmetry at a weight level: dω = backward(ω, res, g)'s dω; dx = backward with W
  replaced by B's dx, B made from the rule's *definition* (for brSF a fresh draw from the step key).
* DFA at a weight level above the bottom: dω = backward(ω, res, g)'s dω; dx = e · B_n.
* every other leaf: its own backward on g.

So a rule whose dW uses B, a DFA that skips an activation's derivative or a brSF that does not
redraw is reported at the level and leaf where it goes wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._setup import full_precision
from jaxbp.check.report import CheckReport, LeafCheck
from jaxbp.combinators import walk_forward
from jaxbp.core import Array, Layer, Loss, Params, State, apply, layer_name
from jaxbp.errors import UsageError
from jaxbp.rules._common import path_str, rule_spec
from jaxbp.rules.dfa import project
from jaxbp.rules.feedback import VARIANTS, step_feedback
from jaxbp.rules.metrics import recorded_backward

HAND = "the rule's backward at this level (g as it arrives)"
REFERENCE = "the rule's definition from the level's own backward"


def _forward_records(rule_net: Layer, params, x, state, key) -> tuple[Array, object, dict]:
    """The rule net's forward, keeping each leaf's (x shape, state, key) by path."""
    seen = {}

    def leaf(path, layer, p, xx, *, state, key, train):
        seen[path_str(path)] = (jnp.shape(xx), state, key)
        return apply(layer, p, xx, state=state, key=key, train=train)

    y, res, _ = walk_forward(rule_net, params, x, leaf, state=state, key=key, train=True)
    return y, res, seen


def _reference(spec, path, layer, p, r, g, e, fb, seen):
    """(dparams, dx) by the rule's definition at one leaf."""
    if spec.name == "dfa":
        r, B = r
        dp, dx = layer.backward(p, r, g)
        return (dp, dx) if fb.get(path) is None else (dp, project(e, fb[path]).astype(dx.dtype))
    if "rule_leaf" not in layer.extras:
        return layer.backward(p, r, g)
    inner, name = layer.extras["rule_leaf"]()
    x_shape, (_, stored), key = seen[path]
    B = step_feedback(VARIANTS[name], inner, p, x_shape, stored["."], key)
    dp, _ = inner.backward(p, r[0], g)
    _, dx = inner.backward(inner.extras["feedback_params"](p, B), r[0], g)
    return dp, dx


def _rows(level: str, name: str, hand, ref, dtype) -> list[LeafCheck]:
    rows = []
    eps = float(jnp.finfo(dtype).eps)
    for leaf, h, w in hand_ref_leaves(hand, ref):
        h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
        detail = "" if h.shape == w.shape else f"shape {h.shape}, the definition's {w.shape}"
        if detail:
            h = np.full(w.shape, np.inf)
        err = np.abs(h - w)
        scale = float(max(np.max(np.abs(h), initial=0.0), np.max(np.abs(w), initial=0.0)))
        tol = float(min(0.05, 8 * eps * np.sqrt(max(h.size, 1))))
        worst = int(np.argmax(err)) if err.size else 0
        denom = np.linalg.norm(h) * np.linalg.norm(w)
        rows.append(
            LeafCheck(
                level=level,
                level_name=name,
                leaf=leaf,
                witness="vjp",
                dtype=str(jnp.dtype(dtype)),
                max_abs_err=float(err.max(initial=0.0)),
                max_rel_err=float(err.max(initial=0.0) / scale) if scale else 0.0,
                worst_index=tuple(int(i) for i in np.unravel_index(worst, h.shape)) if h.shape else (),
                cosine=float(np.vdot(h, w) / denom) if denom else 1.0,
                tol=tol,
                atol=0.0,
                status="ok" if err.max(initial=0.0) <= tol * scale else "FAIL",
                hand=HAND,
                reference=REFERENCE,
                detail=detail,
            )
        )
    return rows


def hand_ref_leaves(hand, ref):
    """``(leaf name, hand, reference)`` for each param leaf and then ``x`` of a ``(dparams, dx)`` pair."""
    (hp, hx), (rp, rx) = hand, ref
    for (kp, h), w in zip(jax.tree_util.tree_flatten_with_path(hp)[0], jax.tree.leaves(rp), strict=True):
        yield jax.tree_util.keystr(kp) or ".", h, w
    for (kp, h), w in zip(jax.tree_util.tree_flatten_with_path(hx)[0], jax.tree.leaves(rx), strict=True):
        yield "x" + jax.tree_util.keystr(kp), h, w


def check_rule(
    rule_net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State,
    key: Array | None = None,
) -> CheckReport:
    """Check a rule net's backward against the rule's definition at every level it walks through.

    Args:
      rule_net: a net made by :func:`feedback_alignment`, :func:`sign_symmetry` or
        :func:`direct_feedback_alignment`.
      loss: the loss on top.
      params: the params.
      x, target: one batch.
      state: the rule net's state ``(net_state, feedback)``.
      key: the step key (brSF draws its R_t from it).

    Returns:
      A :class:`~jaxbp.check.report.CheckReport`: one level per leaf in forward order, named
      ``"<path> <layer>"``, with a row per param leaf and for ``x`` (witness column ``vjp``: the
      rule's backward against its definition).
    """
    spec = rule_spec(rule_net)
    if spec is None:
        raise UsageError(f"check_rule: {layer_name(rule_net)} is not a rule net")
    with full_precision():  # as in the layer checker
        return _check_rule(spec, rule_net, loss, params, x, target, state, key)


def _check_rule(spec, rule_net, loss, params, x, target, state, key) -> CheckReport:
    if spec.name == "dfa":
        y, res, _ = apply(rule_net, params, x, state=state, key=key, train=True)
        seen = {}
    else:
        y, res, seen = _forward_records(rule_net, params, x, state, key)
    e = loss.backward(loss.forward(y, target)[1])
    rec = recorded_backward(spec.walk_net, params, res, e, spec.backward_leaf(e))
    fb = state[1]
    levels = {path: layer_name(r[0]) for path, r in rec.items()}  # forward order, as the checker
    report = CheckReport(
        name=f"{layer_name(rule_net)} against its definition on {tuple(jnp.shape(x))}", levels=levels
    )
    dtype = jnp.result_type(*jax.tree.leaves(params))
    for path, (layer, p, r, g, dp, dx) in rec.items():
        ref = _reference(spec, path, layer, p, r, g, e, fb, seen)
        report.rows.extend(_rows(path, levels[path], (dp, dx), ref, dtype))
    return report


__all__ = ["check_rule"]
