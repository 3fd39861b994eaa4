"""How far a rule is from backprop, level by level, and the feedback that turns it back into backprop."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbp.combinators import walk_backward
from jaxbp.contract import backprop, path_str
from jaxbp.core import Array, Layer, Loss, Params, State, apply, is_stateful, layer_name
from jaxbp.errors import UsageError
from jaxbp.rules.net import rule_spec


def recorded_backward(net: Layer, params, res, g, leaf=backprop) -> dict:
    """Run ``walk_backward(net, ..., leaf)`` and keep every leaf's ``(layer, params, res, g, dp, dx)``.

    Returns:
      ``{path string: record}`` in forward order (bottom level first).
    """
    rec = {}

    def keep(path, layer, p, r, gg, spec):
        dp, dx = leaf(path, layer, p, r, gg, spec)
        rec[path_str(path)] = (layer, p, r, gg, dp, dx)
        return dp, dx

    walk_backward(net, params, res, g, keep)
    return dict(reversed(rec.items()))


def _flat(tree) -> Array:
    parts = [jnp.ravel(a).astype(jnp.promote_types(a.dtype, jnp.float32)) for a in jax.tree.leaves(tree)]
    return jnp.concatenate(parts) if parts else jnp.zeros((0,), jnp.float32)


def angle(a, b) -> Array:
    """The angle in degrees between two pytrees of the same structure (flattened); NaN when one is 0."""
    a, b = _flat(a), _flat(b)
    cos = jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def _same_shapes(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        jnp.shape(u) == jnp.shape(v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


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

    def backward_of(layer, s):
        y, res, _ = apply(layer, params, x, state=s, key=key, train=True)
        return recorded_backward(layer, params, res, loss.backward(loss.forward(y, target)[1]))

    bp = backward_of(net, net_state)
    rule = bp if spec is None else backward_of(rule_net, state)
    out = {}
    for path, (layer, p, r, _, dp, dx) in rule.items():
        if not jax.tree.leaves(p):
            continue
        _, _, _, _, bp_dp, bp_dx = bp[path]
        row = {"dx": angle(dx, bp_dx), "dparams": angle(dp, bp_dp)}
        if layer.rule is not None and layer.walk is None:  # a rule leaf: res is (its own res, B)
            W, B = layer.rule.net.feedback.weights(p), r[1]
            if _same_shapes(B, W):
                row["B_W"] = angle(B, W)
                row["B_W_norm_ratio"] = jnp.linalg.norm(_flat(B)) / jnp.linalg.norm(_flat(W))
        out[path] = row
    return out


def feedback_like(rule_net: Layer, params: Params, *, state: State | None = None, input_shape=None) -> State:
    """A state whose feedback turns the rule back into backprop, or a UsageError saying why none does.

    FA: B_n = W_n. frSF: |R_n| = |W_n|. Kolen-Pollack: B_n = W_n (and it stays). DFA on a network with
    one hidden layer whose top weight level is linear in its input and last: B = that level's
    transposed Jacobian (needs ``input_shape``). uSF and brSF have no such state.

    Args:
      rule_net: a rule net.
      params: the params whose W the feedback copies.
      state: the rule net's current state; its network part is kept (default: ``()``, for a network
        without state of its own).
      input_shape: the input shape (DFA's feedback is shaped by the activations).

    Returns:
      ``(net_state, feedback)``.
    """
    spec = rule_spec(rule_net)
    if spec is None:
        raise UsageError(f"feedback_like: {layer_name(rule_net)} is not a rule net")
    if state is None and is_stateful(spec.net):
        raise UsageError(f"feedback_like: {layer_name(spec.net)} has state of its own; pass state=")
    net_state = () if state is None else state[0]
    try:
        feedback = spec.rule.like(spec.net, params, input_shape)
    except (KeyError, TypeError, IndexError) as e:
        raise UsageError(
            f"feedback_like: the params do not fit {layer_name(spec.net)} ({type(e).__name__}: {e});"
            " params of another network?"
        ) from None
    return net_state, feedback


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


__all__ = ["alignment", "angle", "feedback_like", "final_alignment", "recorded_backward", "run_key"]
