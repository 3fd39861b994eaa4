"""A rule net: the network mirrored, every fed-back weight level replaced by a *rule leaf*.

The rule net has ``net``'s init, params, forward and paths; its state is ``(net_state, feedback)``,
``feedback`` a dict ``{level path: stored}``. Its walk is ``net``'s walk with the leaves replaced as
the walk meets them (:func:`jaxbp.combinators.mirror`), so every visitor -- backprop, the checker,
gradient flow, the quantities, DP-SGD -- walks the rule's backward. A rule leaf:

* forward: the level's own forward; its residuals become ``(res, B)`` with this step's feedback B;
* backward: dparams from the level's own backward on the arriving g; dx from the rule (for FA and
  sign symmetry the level's backward with B in W's place; for DFA ``e · B``);
* per-example hooks: the level's own, on its own residuals (they read dparams, which are backprop's
  on g), so every first-order quantity is the rule's;
* ``check_forward`` (local rules): ``f(W, sg(x)) + f(sg(B), x) - sg(f(B, x))``, whose autodiff VJP
  is by definition what the backward computes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.combinators import LeafInfo, leaf_layers, leaves, mirror, walk_params
from jaxbp.contract import backprop, path_str
from jaxbp.core import Array, Layer, PerExample, Static, Walk, apply, init_state, layer_name
from jaxbp.errors import UsageError
from jaxbp.rules.registry import Rule, Step

_REDRAW = 0xB5F  # folded into a level's step key for a fresh draw (apart from the layer's own use)


class RuleSpec(NamedTuple):
    """What a backward rule made: set as ``layer.rule`` on the rule net and on each rule leaf.

    Attributes:
      rule: the registry entry.
      net: what the rule was made from (the network for a rule net, the weight level for a leaf).
      key: the key its feedback is drawn from (by ``init_state``).
    """

    rule: Rule
    net: Layer
    key: Array

    @property
    def name(self) -> str:
        return self.rule.name


def rule_spec(layer: Layer) -> RuleSpec | None:
    """The :class:`RuleSpec` of a rule net, None for any other network (plain backprop)."""
    return layer.rule


def as_key(key: Array | int) -> Array:
    """A PRNG key from a key or an int seed."""
    return jax.random.PRNGKey(key) if isinstance(key, int) else key


def draw_weight(layer: Layer, key: Array, x_shape) -> Any:
    """A fresh sample of the weights that feedback stands in for, from the level's own initialiser."""
    return layer.feedback.weights(layer.init(key, tuple(x_shape))[1])


def is_weight_level(layer: Layer) -> bool:
    """A leaf a rule feeds back to: it has a :class:`~jaxbp.core.Feedback` hook."""
    return layer.walk is None and layer.feedback is not None


def _unhooked_weight(info: LeafInfo) -> str | None:
    """A leaf with a weight matrix or kernel but no feedback hook, handing a dx down: the rule would keep
    its weight transport silently. Returns its description, else None."""
    if is_weight_level(info.layer) or not all(
        jnp.issubdtype(a.dtype, jnp.inexact) for a in jax.tree.leaves(info.x)
    ):
        return None
    params = jax.eval_shape(lambda k: info.layer.init(k, info.x_shape)[1], jax.random.PRNGKey(0))
    big = [tuple(a.shape) for a in jax.tree.leaves(params) if len(a.shape) >= 2]
    return f"a weight of shape {big[0]}" if big else None


def fed_params(rule: Rule, net: Layer, params) -> list[tuple[str, Layer, Any]]:
    """``(path, level, its params)`` of each level the rule feeds back to, in the params' order."""
    found, count = [], [0]

    def leaf(path, layer, p):
        if is_weight_level(layer):
            if rule.fed(count[0]):
                found.append((path_str(path), layer, p))
            count[0] += 1

    walk_params(net, params, leaf)
    return found


def fed_levels(rule: Rule, net: Layer, input_shape, dtype=jnp.float32) -> list[LeafInfo]:
    """The levels of ``net`` the rule feeds back to, in forward order; refuses a weight without a hook."""
    found, count = [], 0
    for info in leaves(net, input_shape, dtype):
        bad = _unhooked_weight(info)
        if bad:
            raise UsageError(
                f"{rule.name}: level {info.path} ({layer_name(info.layer)}) has {bad} but no feedback hook,"
                " so the rule would keep its weight transport; give it one"
                " (Layer(..., feedback=jaxbp.feedback_of(...)))"
            )
        if is_weight_level(info.layer):
            if rule.fed(count):
                found.append(info)
            count += 1
    return found


def feedback_dx(layer: Layer, params, res, g, B, e):
    """A rule's ``dx`` for feedback in W's place (FA, sign symmetry, Kolen-Pollack): the level's own
    backward run with ``B`` as its weights."""
    # dx = backward(ω with W -> B, res, g)'s dx
    return layer.backward(layer.feedback.replace(params, B), res, g)[1]


def _check_stored(rule: Rule, info: LeafInfo, stored, key: Array, out) -> None:
    """Refuse feedback that does not fit the rule at this level (another rule's state, integer arrays)."""
    want = jax.eval_shape(lambda k: rule.init(info, k, out), key)
    got = _abstract(stored)
    same = jax.tree.structure(got) == jax.tree.structure(want) and all(
        g.shape == w.shape and jnp.issubdtype(g.dtype, jnp.inexact) == jnp.issubdtype(w.dtype, jnp.inexact)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    )
    if not same:
        raise UsageError(
            f"{rule.name}: the feedback state of level {info.path} ({layer_name(info.layer)}) does not fit"
            f" the rule: it stores {_describe(want)}, got {_describe(got)} (a state made by another rule?)"
        )


def _describe(tree) -> str:
    leaves_ = jax.tree.leaves(tree)
    if not leaves_:
        return "nothing"
    return ", ".join(f"{jnp.dtype(a.dtype)}{list(a.shape)}" for a in leaves_)


def step_feedback(rule: Rule, layer: Layer, params, x_shape, stored, key, train) -> tuple[Any, Any]:
    """``(B, new stored)`` of this step at a fed-back level, by the rule's definition; ``B`` is None when
    the rule draws from the step key and there is none (a forward for prediction needs no B)."""

    def fresh():
        if key is None:
            raise _NoKeyError
        return draw_weight(layer, jax.random.fold_in(key, _REDRAW), x_shape)

    ctx = Step(
        W=layer.feedback.weights(params), stored=stored, fresh=fresh, train=train, options=rule.options
    )
    try:
        return rule.step(ctx)
    except _NoKeyError:
        return None, stored


class _NoKeyError(Exception):
    pass


def _res_of_inner(hooks: PerExample | None) -> PerExample | None:
    """The level's own per-example hooks, reading its own residuals from the rule leaf's ``(res, B)``."""
    if hooks is None:
        return None
    return PerExample(*(None if h is None else (lambda p, r, g, h=h: h(p, r[0], g)) for h in hooks))


def rule_leaf(
    layer: Layer, spec: RuleSpec, path: str, stored=None, sink: dict | None = None, e=None, out=None
) -> Layer:
    """``layer`` under the rule: res ``(res, B)``. Its forward needs ``stored`` (checked against the rule
    for the input it meets, ``out`` the network's abstract output) and a non-local backward ``e``."""
    rule = spec.rule

    def forward(params, x, *, state, key, train):
        y, r, s = apply(layer, params, x, state=state, key=key, train=train)
        if out is not None:
            _check_stored(rule, LeafInfo(path, layer, *_abstract((x, y))), stored, spec.key, out)
        B, new = step_feedback(rule, layer, params, jnp.shape(x), stored, key, train)
        if sink is not None and train:
            sink[path] = new
        return y, (r, B), s

    def backward(params, res, g):
        # dω = backward(ω, res, g)'s dω (backprop's, on the arriving g); dx = the rule's
        r, B = res
        if B is None:
            raise UsageError(
                f"{layer_name(layer)} under {rule.name}: the feedback is drawn from the step key; pass a key"
            )
        dparams, dx = layer.backward(params, r, g)
        return dparams, jax.tree.map(lambda a, d: a.astype(d.dtype), rule.dx(layer, params, r, g, B, e), dx)

    def check_forward(params, x, *, state, key, train):
        # value f(W, x); VJP: dω = VJP of f(·, sg(x)) at W, dx = VJP of f(sg(B), x)  (B by the rule)
        y, r, s = apply(layer, params, lax.stop_gradient(x), state=state, key=key, train=train)
        B, _ = step_feedback(rule, layer, params, jnp.shape(x), stored, key, train)
        if B is None:
            raise UsageError(
                f"{layer_name(layer)} under {rule.name}: the feedback is drawn from the step key; pass a key"
            )
        pB = lax.stop_gradient(layer.feedback.replace(params, B))
        yB = apply(layer, pB, x, state=state, key=key, train=train)[0]
        return y + yB - lax.stop_gradient(yB), (r, B), s

    return Layer(
        layer.init,
        forward,
        backward,
        lambda shape: init_state(layer, shape),
        name=f"{rule.name}({layer_name(layer)})",
        per_example=_res_of_inner(layer.per_example),
        check_forward=check_forward if rule.local else None,
        rule=spec._replace(net=layer),
    )


def make(net: Layer, rule: Rule, *, key: Array | int = 0, check_forward=None) -> Layer:
    """The rule net of ``net`` under ``rule`` (see the module docstring).

    Args:
      net: any network (or a single weight layer).
      rule: the registry entry.
      key: the key (or int seed) the stored feedback is drawn from by ``init_state``: level i of the
        fed-back levels (forward order) from ``fold_in(key, i)``.
      check_forward: the whole net's oracle (a non-local rule's), or None.
    """
    if net.rule is not None:
        raise UsageError(
            f"{rule.name}: {layer_name(net)} is already a rule net ({net.rule.name});"
            " apply a rule to the plain network"
        )
    spec = RuleSpec(rule=rule, net=net, key=as_key(key))
    name = f"{rule.name}({layer_name(net)})"
    weights = sum(is_weight_level(layer) for layer in leaf_layers(net))
    if not any(rule.fed(i) for i in range(weights)):
        raise UsageError(f"{name}: no weight level to feed back to; the rule needs {rule.requires}")

    def state_init(input_shape):
        fed = fed_levels(rule, net, input_shape)
        if not fed:
            raise UsageError(f"{name}: no weight level to feed back to; the rule needs {rule.requires}")
        out = jax.eval_shape(lambda k: _zeros(net.init(k, tuple(input_shape))[0]), spec.key)
        stored = {lf.path: rule.init(lf, jax.random.fold_in(spec.key, i), out) for i, lf in enumerate(fed)}
        return init_state(net, input_shape), stored

    def leaf_for(feedback, sink, e, visited, out=None):
        def leaf(path, layer):
            p = path_str(path)
            if not is_weight_level(layer):
                return layer
            index = visited.setdefault(p, len(visited))
            if not rule.fed(index):
                return layer
            if feedback is not None and p not in feedback:
                raise UsageError(
                    f"{name}: the feedback state has no entry for level {p} ({layer_name(layer)})"
                )
            return rule_leaf(layer, spec, p, None if feedback is None else feedback[p], sink, e, out)

        return leaf

    def walk_forward(visit, params, x, *, state, key, train):
        net_state, feedback = _feedback_of(name, state)
        sink, visited = {}, {}
        in_shape = jax.tree.map(lambda a: tuple(jnp.shape(a)), x)
        out = jax.eval_shape(lambda k: _zeros(net.init(k, in_shape)[0]), spec.key)
        leaf = leaf_for(feedback, sink, None, visited, out)
        tree = mirror(net, leaf)
        if tree.walk is None:  # a network of one weight level
            y, res, net_state = visit("0", tree, params, x, state=net_state, key=key, train=train)
        else:
            y, res, net_state = tree.walk.forward(visit, params, x, state=net_state, key=key, train=train)
        extra = sorted(set(feedback) - set(visited))
        if extra:
            raise UsageError(
                f"{name}: the feedback state has entries for levels {extra}"
                " that the network does not feed back to"
            )
        return y, (res, Static(tuple(sorted(visited.items())))), (net_state, {**feedback, **sink})

    def walk_backward(visit, params, res, g):
        res, visited = res
        tree = mirror(net, leaf_for(None, None, g, dict(visited.value)))
        if tree.walk is None:
            return visit("0", tree, params, res, g, None)
        return tree.walk.backward(visit, params, res, g)

    def walk_params(visit, params):
        tree = mirror(net, leaf_for(None, None, None, {}))
        return visit("0", tree, params) if tree.walk is None else tree.walk.params(visit, params)

    def forward(params, x, *, state, key, train):
        return walk_forward(_forward, params, x, state=state, key=key, train=train)

    def backward(params, res, g):
        return walk_backward(
            lambda seg, child, p, r, gg, sp: backprop((), child, p, r, gg, sp), params, res, g
        )

    walk = Walk(walk_forward, walk_backward, walk_params)
    return Layer(
        net.init,
        forward,
        backward,
        state_init,
        name=name,
        layers=net.layers,
        kind=net.kind,
        walk=walk,
        check_forward=check_forward,
        rule=spec,
    )


def _zeros(shape):
    """Zeros of an output shape (a tuple of shapes for a tuple output), for abstract evaluation."""
    return jax.tree.map(
        jnp.zeros, shape, is_leaf=lambda s: isinstance(s, tuple) and all(isinstance(i, int) for i in s)
    )


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def _forward(seg, child, params, x, *, state, key, train):
    return apply(child, params, x, state=state, key=key, train=train)


def _feedback_of(name: str, state):
    if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict)):
        raise UsageError(
            f"{name}: needs its state (net_state, feedback); got {type(state).__name__} -- pass"
            " state=jaxbp.init_state(rule_net, input_shape) (or rules.feedback_like)"
        )
    return state
