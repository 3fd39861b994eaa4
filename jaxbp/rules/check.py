"""A rule checked against its own definition, level by level, in the checker's report format.

For every leaf the rule's backward meets, on the cotangent that really reaches it, the reference is
the rule's definition computed independently of the walk from the leaf's own hand-written backward
(itself verified against autodiff by :func:`jaxbp.check_layer`):

* at a fed-back level: dω = backward(ω, res, g)'s dω; dx = the rule's dx with B made from the
  state by the rule's definition (FA and sign symmetry: the backward with B in W's place, for brSF
  a fresh draw from the step key; DFA: e · B_n; Kolen-Pollack: B = W + (1 - λ)(B' - W'));
* every other leaf: its own backward on g.

So a rule whose dW uses B, a DFA that skips an activation's derivative or a brSF that does not
redraw is reported at the level and leaf where it goes wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.check._setup import full_precision
from jaxbp.check.report import CheckReport, LeafCheck, compare_arrays
from jaxbp.combinators import walk_forward
from jaxbp.contract import path_str
from jaxbp.core import Array, Layer, Loss, Params, State, apply, layer_name
from jaxbp.errors import UsageError
from jaxbp.rules.metrics import recorded_backward
from jaxbp.rules.net import rule_spec, step_feedback
from jaxbp.rules.registry import RULES

HAND = "the rule's backward at this level (g as it arrives)"
REFERENCE = "the rule's definition from the level's own backward"


def _forward_records(rule_net: Layer, params, x, state, key) -> tuple[Array, object, dict]:
    """The rule net's forward, keeping each leaf's (x shape, key) by path."""
    seen = {}

    def leaf(path, layer, p, xx, *, state, key, train):
        seen[path_str(path)] = (jnp.shape(xx), key)
        return apply(layer, p, xx, state=state, key=key, train=train)

    y, res, _ = walk_forward(rule_net, params, x, leaf, state=state, key=key, train=True)
    return y, res, seen


def _reference(layer: Layer, p, r, g, e, feedback: dict, path: str, seen: dict):
    """(dparams, dx) by the rule's definition at one leaf."""
    if layer.rule is None:
        return layer.backward(p, r, g)
    # the registered definition of the rule (with this net's options), not the rule object the net carries
    rule, inner = RULES[layer.rule.name]._replace(options=layer.rule.rule.options), layer.rule.net
    x_shape, key = seen[path]
    B, _ = step_feedback(rule, inner, p, x_shape, feedback[path], key, True)
    dp, _ = inner.backward(p, r[0], g)
    return dp, rule.dx(inner, p, r[0], g, B, e)


def _rows(level: str, name: str, hand, ref, dtype) -> list[LeafCheck]:
    eps = float(jnp.finfo(dtype).eps)
    return [
        compare_arrays(
            h,
            w,
            level=level,
            level_name=name,
            leaf=leaf,
            witness="vjp",
            dtype=str(jnp.dtype(dtype)),
            tol=float(min(0.05, 8 * eps * jnp.sqrt(max(jnp.size(w), 1)))),
            hand_text=HAND,
            reference_text=REFERENCE,
        )
        for leaf, h, w in hand_ref_leaves(hand, ref)
    ]


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
      rule_net: a net made by a rule of :data:`jaxbp.rules.RULES`.
      loss: the loss on top.
      params: the params.
      x, target: one batch.
      state: the rule net's state ``(net_state, feedback)`` (validated against the rule).
      key: the step key (brSF draws its R_t from it).

    Returns:
      A :class:`~jaxbp.check.report.CheckReport`: one level per leaf in forward order, named by its
      path, with a row per param leaf and for ``x`` (witness column ``vjp``: the rule's backward
      against its definition).
    """
    if rule_spec(rule_net) is None:
        raise UsageError(f"check_rule: {layer_name(rule_net)} is not a rule net")
    with full_precision():  # as in the layer checker
        y, res, seen = _forward_records(rule_net, params, x, state, key)
        e = loss.backward(loss.forward(y, target)[1])
        rec = recorded_backward(rule_net, params, res, e)
        levels = {path: layer_name(r[0]) for path, r in rec.items()}  # forward order, as the checker
        report = CheckReport(
            name=f"{layer_name(rule_net)} against its definition on {tuple(jnp.shape(x))}", levels=levels
        )
        dtype = jnp.result_type(*jax.tree.leaves(params))
        for path, (layer, p, r, g, dp, dx) in rec.items():
            ref = _reference(layer, p, r, g, e, state[1], path, seen)
            report.rows.extend(_rows(path, levels[path], (dp, dx), ref, dtype))
    return report


__all__ = ["check_rule"]
