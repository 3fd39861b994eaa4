"""How far a rule is from backprop, level by level, and the feedback that turns it back into backprop."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.combinators import walk_backward
from jaxbp.core import Array, Layer, Loss, Params, State, apply, is_stateful, layer_name
from jaxbp.errors import UsageError
from jaxbp.rules._common import Path, at_path, has_feedback, path_str, rule_spec


def recorded_backward(walk_net: Layer, params, res, g, leaf) -> dict:
    """Run ``walk_backward(walk_net, ..., leaf)`` and keep every leaf's ``(layer, params, res, g, dp, dx)``.

    Returns:
      ``{path string: record}`` in forward order (bottom level first).
    """
    rec = {}

    def keep(path, layer, p, r, gg):
        dp, dx = leaf(path, layer, p, r, gg)
        rec[path_str(path)] = (layer, p, r, gg, dp, dx)
        return dp, dx

    walk_backward(walk_net, params, res, g, keep)
    return dict(reversed(rec.items()))


def _flat(tree) -> Array:
    parts = [jnp.ravel(a).astype(jnp.promote_types(a.dtype, jnp.float32)) for a in jax.tree.leaves(tree)]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.float32)


def angle(a, b) -> Array:
    """The angle in degrees between two pytrees of the same structure (flattened); NaN when one is 0."""
    a, b = _flat(a), _flat(b)
    cos = jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def _feedback_of(spec, layer: Layer, res):
    """(the weight leaf's own layer, the B its step used) for a leaf with feedback, else (layer, None)."""
    if spec is None:
        return layer, None
    if spec.name == "dfa":
        return layer, res[1]
    if "rule_leaf" in layer.extras:
        return layer.extras["rule_leaf"]()[0], res[1]
    return layer, None


def alignment(
    rule_net: Layer,
    loss: Loss,
    params: Params,
    x: Array,
    target: Array,
    *,
    state: State,
    key: Array | None = None,
) -> dict[str, dict[str, Array]]:
    """Per level with params: the angles between the rule's gradients and backprop's (BioTorch's metrics).

    One train-mode forward of the rule net and of the network it was made from (the same key), and
    both hand-written backwards on the same loss.

    Args:
      rule_net: a rule net (or any network: then the angles are 0, the rule being backprop).
      loss: the loss.
      params: the params.
      x, target: one batch.
      state: the rule net's state ``(net_state, feedback)`` (the network's state for a plain network).
      key: the step key (brSF draws R_t from it).

    Returns:
      ``{path: {"dx": deg, "dparams": deg, "B_W": deg, "B_W_norm_ratio": r}}`` for every level with
      params: the angle between the rule's dL/dx handed down and backprop's, between dL/dω and
      backprop's, and, for levels whose B has W's shape, the angle between B and W and ‖B‖/‖W‖.
    """
    spec = rule_spec(rule_net)
    net = spec.net if spec else rule_net
    net_state = state[0] if spec else state
    y, res, _ = apply(net, params, x, state=net_state, key=key, train=True)
    g = loss.backward(loss.forward(y, target)[1])
    bp = recorded_backward(net, params, res, g, lambda path, layer, p, r, gg: layer.backward(p, r, gg))
    if spec is None:
        rule = bp
    else:
        y, res, _ = apply(rule_net, params, x, state=state, key=key, train=True)
        g = loss.backward(loss.forward(y, target)[1])
        rule = recorded_backward(spec.walk_net, params, res, g, spec.backward_leaf(g))
    out = {}
    for path, (layer, p, r, _, dp, dx) in rule.items():
        if not jax.tree.leaves(p):
            continue
        _, _, _, _, bp_dp, bp_dx = bp[path]
        row = {"dx": angle(dx, bp_dx), "dparams": angle(dp, bp_dp)}
        inner, B = _feedback_of(spec, layer, r)
        if B is not None:
            W = inner.extras["feedback_weight"](p)
            if B.shape == W.shape:
                row["B_W"] = angle(B, W)
                row["B_W_norm_ratio"] = jnp.linalg.norm(_flat(B)) / jnp.linalg.norm(_flat(W))
        out[path] = row
    return out


def weight_paths(net: Layer, path: Path = ()) -> list[Path]:
    """The paths of ``net``'s weight leaves (Dense, Conv), forward order for serial chains."""
    if net.walk is None:
        return [path] if has_feedback(net) else []
    segs = ["branch"] if net.kind == "residual" else [str(i) for i in range(len(net.layers))]
    return [p for seg, child in zip(segs, net.layers, strict=True) for p in weight_paths(child, (*path, seg))]


def feedback_like(rule_net: Layer, params: Params, *, state: State | None = None) -> State:
    """A state whose feedback turns the rule back into backprop.

    FA: B_n = W_n. frSF: |R_n| = |W_n|. DFA on a network with one hidden layer (two weight levels):
    B_1 = W_2. uSF and brSF have no such state (their B is s sign(W) or random), nor has DFA with more
    weight levels.

    Args:
      rule_net: a rule net.
      params: the params whose W the feedback copies.
      state: the rule net's current state; its network part is kept (default: ``()``, for a network
        without state of its own).

    Returns:
      ``(net_state, feedback)``.
    """
    spec = rule_spec(rule_net)
    if spec is None:
        raise UsageError(f"feedback_like: {layer_name(rule_net)} is not a rule net")
    if state is None and is_stateful(spec.net):
        raise UsageError(f"feedback_like: {layer_name(spec.net)} has state of its own; pass state=")
    net_state = () if state is None else state[0]
    paths = weight_paths(spec.net)

    def W(path):
        leaf, p = at_path(spec.net, params, path)
        return leaf.extras["feedback_weight"](p)

    if spec.name == "fa":
        return net_state, {path_str(p): W(p) for p in paths}
    if spec.name == "frsf":
        return net_state, {path_str(p): jnp.abs(W(p)) for p in paths}
    if spec.name == "dfa" and len(paths) == 2:
        return net_state, {path_str(paths[1]): W(paths[1])}
    raise UsageError(
        f"feedback_like: no feedback turns {spec.name} on {len(paths)} weight levels into backprop"
        " (fa, frsf, and dfa with one hidden layer have one)"
    )


def run_key(seed: int) -> Array:
    """The feedback key of a ``jaxbp train`` run, folded from its init key ``split(PRNGKey(seed))[0]``."""
    return jax.random.fold_in(jax.random.split(jax.random.PRNGKey(seed))[0], 0xFB)


def final_alignment(rule_net: Layer, train_state, data, batch_size: int, seed: int) -> dict:
    """:func:`alignment` on the first training batch (the probe of the gradient-flow plot), as floats.

    Args:
      rule_net: the trained rule net (or the plain network: backprop, all angles 0).
      train_state: the run's final :class:`~jaxbp.step.TrainState`.
      data: the :class:`~jaxbp.train.data.Dataset`.
      batch_size: the probe's size.
      seed: the run's seed (the probe key is ``PRNGKey(seed + 1)``, as the training program's).
    """
    from jaxbp.losses import SoftmaxCrossEntropy

    x, y = jnp.asarray(data.x_train[:batch_size]), jnp.asarray(data.y_train[:batch_size])
    angles = alignment(
        rule_net,
        SoftmaxCrossEntropy(),
        train_state.params,
        x,
        y,
        state=train_state.state,
        key=jax.random.PRNGKey(seed + 1),
    )
    return {p: {k: round(float(v), 3) for k, v in row.items()} for p, row in angles.items()}


__all__ = ["alignment", "angle", "feedback_like", "final_alignment", "run_key"]
