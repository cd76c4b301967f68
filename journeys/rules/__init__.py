"""The journey rule language: small expressions ops people read and write.

    event.properties.total >= 100 and profile.tenure_days > 30
        and context.device in ["mobile", "tablet"]

Rules are compiled once into plain Python functions (see codegen) so the engine
can evaluate them for every event. This package must not import Django: the
benchmark and the engine's hot path use it standalone.
"""

from .compiler import Rule, RuleContext, RuleResult, compile_rule, rule_checked, validate_profile_rule, validate_rule
from .errors import RuleEvaluationError, RuleSyntaxError
from .functions import FUNCTIONS
from .parser import MAX_DEPTH, MAX_LENGTH

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "Rule",
    "RuleContext",
    "RuleEvaluationError",
    "RuleResult",
    "RuleSyntaxError",
    "compile_rule",
    "rule_checked",
    "validate_profile_rule",
    "validate_rule",
]
