"""Errors raised by the rule language.

Two kinds, because they reach different people: a syntax error is shown to the
ops person typing the rule (so it carries a column), an evaluation error is a
data problem found while the engine runs a journey.
"""

from __future__ import annotations


class RuleSyntaxError(ValueError):
    """A rule that cannot be compiled; points at the offending character.

    Subclasses ValueError so form code that already catches ValueError keeps working.
    """

    def __init__(self, message: str, position: int, text: str) -> None:
        self.message = message
        self.position = position
        self.text = text
        super().__init__(f"{message} at column {position + 1}")

    @property
    def column(self) -> int:
        """1-based column, which is what editors and people count in."""
        return self.position + 1

    def __reduce__(self) -> tuple[type[RuleSyntaxError], tuple[str, int, str]]:
        # Keep pickling (e.g. q2 task results) working with our three-argument signature.
        return (type(self), (self.message, self.position, self.text))


class RuleEvaluationError(Exception):
    """A runtime problem (e.g. comparing text with a number) in Rule.value().

    `error` is the same human-readable text RuleResult.error would carry.
    """

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__(error)
