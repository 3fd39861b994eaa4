"""The rule registry: a backward rule is one entry, as a quantity is (:mod:`jaxbp.quantities.registry`).

A rule keeps the network, its params and its forward, and changes only the dL/dx handed down at
the weight levels it feeds back to (every leaf with a :class:`~jaxbp.core.Feedback` hook): their
dparams stay backprop's on the cotangent that arrives. What a rule stores per fed-back level lives
in the network's state, never in the params. :func:`jaxbp.rules.make` builds the rule net from an
entry; ``by_name``, the command line, :func:`~jaxbp.rules.check_rule` and
:func:`~jaxbp.rules.alignment` iterate :data:`RULES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from jaxbp.core import Layer
from jaxbp.errors import UsageError


class Rule(NamedTuple):
    """One backward rule.

    Attributes:
      name: the name users pass (``--rule fa``).
      summary: one line: what it hands down.
      init: ``(leaf: LeafInfo, key, out) -> stored`` for a fed-back level (``leaf`` is the level as the
        forward walk meets it, abstract; ``out`` the network's abstract output); ``()`` stores nothing.
      step: ``(ctx: Step) -> (B, new_stored)``: this step's feedback and what to store next (new
        stored is kept only in train mode).
      dx: ``(inner, params, res, g, B, e) -> dx``: the gradient handed down by a fed-back level
        (``res`` is the level's own, ``e`` the cotangent of the network's output).
      fed: ``index -> bool``: whether the ``index``-th weight level in forward order (0 the bottom)
        gets feedback.
      like: ``(net, params, input_shape) -> {path: stored}`` that turns the rule into backprop, or
        raises :class:`~jaxbp.errors.UsageError` saying why none does.
      local: True when ``dx`` needs only the level's own values (not ``e``): each fed-back level then
        carries its own ``check_forward`` oracle; a non-local rule's net carries one for the whole.
      reference: the function of ``reference/numpy_rules.py`` that is this rule's NumPy oracle.
      make: ``(net, *, key, **options) -> Layer`` (default :func:`jaxbp.rules.make` of this entry).
      options: the rule's hyperparameters (e.g. Kolen-Pollack's decay), given to ``step`` in ``ctx``.
      requires: what a network needs for the rule to act on it (for the refusal).
    """

    name: str
    summary: str
    init: Callable | None = None
    step: Callable | None = None
    dx: Callable | None = None
    fed: Callable[[int], bool] = lambda index: True
    like: Callable | None = None
    local: bool = True
    reference: str = ""
    make: Callable | None = None
    options: Any = ()
    requires: str = "a weight level (a layer with a feedback hook: Dense, Conv, attention, RNN, ...)"


class Step(NamedTuple):
    """What a rule's ``step`` gets at a fed-back level.

    Attributes:
      W: the weight the feedback stands in for (the level's :class:`~jaxbp.core.Feedback` weights).
      stored: what the rule stored for this level.
      fresh: ``() -> W-shaped draw`` from the level's own initialiser, keyed by the step's key
        (raises when the step has no key).
      train: the mode.
      options: the rule's options.
    """

    W: Any
    stored: Any
    fresh: Callable
    train: bool
    options: Any


RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    """Add ``rule`` to :data:`RULES` (replacing one of the same name); returns it."""
    RULES[rule.name] = rule
    return rule


def by_name(name: str, net: Layer, *, key=0) -> Layer:
    """The rule ``name`` (a key of :data:`RULES`) applied to ``net``; ``"bp"`` returns ``net`` itself."""
    if name not in RULES:
        raise UsageError(f"unknown rule {name!r}; choose one of {', '.join(RULES)}")
    return RULES[name].make(net, key=key)


__all__ = ["RULES", "Rule", "Step", "by_name", "register"]
