"""Backward rules: the same network and forward, a different hand-written backward.

At every weight level (a leaf whose constructor defines ``extras["feedback_backward"]``: Dense,
Conv1D, Conv2D) the weight gradient stays backprop's on the cotangent that arrives; a rule changes
only the dL/dx handed down. Each rule is one transform of a network into a stateful network whose
state is ``(net_state, feedback)``, feedback keyed by level path and never in params (optax never
sees it). Extras keys used here (defined in the layers' constructors, next to their backward):

* ``"feedback_weight"``: ``params -> W``, the weight a feedback array stands in for (B has its shape);
* ``"feedback_params"``: ``(params, B) -> params`` with W replaced by B;
* ``"feedback_backward"``: ``(params, res, g, B) -> (dparams, dx)``, dx with B in W's place, dω backprop's;
* on rule nets: ``"rule"`` (``() -> RuleSpec``), on rule leaves ``"rule_leaf"`` and ``"check_forward"``.

See docs/rules.md for the math and reference/DERIVATIONS.md ("Backward rules") for the derivations.
"""

from jaxbp.core import Layer
from jaxbp.errors import UsageError
from jaxbp.rules._common import RuleSpec as RuleSpec
from jaxbp.rules._common import path_str as path_str
from jaxbp.rules._common import rule_spec as rule_spec
from jaxbp.rules.check import check_rule as check_rule
from jaxbp.rules.dfa import direct_feedback_alignment as direct_feedback_alignment
from jaxbp.rules.feedback import feedback_alignment as feedback_alignment
from jaxbp.rules.feedback import sign_symmetry as sign_symmetry
from jaxbp.rules.metrics import alignment as alignment
from jaxbp.rules.metrics import angle as angle
from jaxbp.rules.metrics import feedback_like as feedback_like
from jaxbp.rules.metrics import final_alignment as final_alignment
from jaxbp.rules.metrics import run_key as run_key

RULES = ("bp", "fa", "usf", "frsf", "brsf", "dfa")


def by_name(name: str, net: Layer, *, key=0) -> Layer:
    """The rule ``name`` (one of :data:`RULES`) applied to ``net``; ``"bp"`` returns ``net`` itself."""
    if name == "bp":
        return net
    if name == "fa":
        return feedback_alignment(net, key=key)
    if name in ("usf", "frsf", "brsf"):
        return sign_symmetry(net, name, key=key)
    if name == "dfa":
        return direct_feedback_alignment(net, key=key)
    raise UsageError(f"unknown rule {name!r}; choose one of {', '.join(RULES)}")
