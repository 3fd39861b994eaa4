"""Backward rules: the same network and forward, a different hand-written backward.

At every weight level (a leaf with a :class:`~jaxbp.core.Feedback` hook: Dense, Conv, BinaryDense,
attention's projections, RNN and LSTM weights) the weight gradient stays backprop's on the
cotangent that arrives; a rule changes only the dL/dx handed down. Each rule is one entry of the
registry :data:`RULES` (:mod:`jaxbp.rules.registry`) and one transform of a network into a
stateful network whose state is ``(net_state, feedback)``, feedback keyed by level path and never
in params (optax never sees it). Rule nets walk like their networks, so every quantity, DP-SGD and
the checker work under any rule.

See docs/rules.md for the math and reference/DERIVATIONS.md ("Backward rules") for the derivations.
"""

from jaxbp.errors import path_text as path_str  # noqa: F401  (the one path_str, re-exported)

# The registry: each module registers its rules, in this order.
# isort: off
from jaxbp.rules import bp, feedback, dfa, kp  # noqa: F401

# isort: on
from jaxbp.rules.check import check_rule as check_rule
from jaxbp.rules.dfa import direct_feedback_alignment as direct_feedback_alignment
from jaxbp.rules.feedback import feedback_alignment as feedback_alignment
from jaxbp.rules.feedback import sign_symmetry as sign_symmetry
from jaxbp.rules.kp import kolen_pollack as kolen_pollack
from jaxbp.rules.metrics import alignment as alignment
from jaxbp.rules.metrics import angle as angle
from jaxbp.rules.metrics import feedback_like as feedback_like
from jaxbp.rules.metrics import final_alignment as final_alignment
from jaxbp.rules.metrics import run_key as run_key
from jaxbp.rules.net import RuleSpec as RuleSpec
from jaxbp.rules.net import rule_spec as rule_spec
from jaxbp.rules.registry import RULES as RULES
from jaxbp.rules.registry import Rule as Rule
from jaxbp.rules.registry import by_name as by_name
from jaxbp.rules.registry import register as register
