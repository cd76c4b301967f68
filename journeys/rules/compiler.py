"""Compiled rules and the context they are evaluated against.

The engine evaluates the same few rules against every incoming event, so a
rule is compiled once (and cached by its text) and evaluation is a single call
into generated Python plus the bookkeeping needed to never raise at runtime.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import codegen
from .errors import RuleEvaluationError, RuleSyntaxError
from .parser import parse

EventCounter = Callable[[str, dt.datetime], "int | None"]

_RuleFunction = Callable[..., Any]

_MAX_ERROR_LENGTH = 300
_CACHE_SIZE = 4096


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _as_dict(value: object, name: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"RuleContext.{name} must be a dict, not {type(value).__name__}")


@dataclass(slots=True)
class RuleContext:
    """What a rule can see: the four roots, the clock, and a way to count past events.

    Roots are normalised to plain dicts here, once, so generated code can index
    them without checking.
    """

    event: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    journey: dict[str, Any] = field(default_factory=dict)
    now: dt.datetime = field(default_factory=_utcnow)
    events_in_last: EventCounter | None = None

    def __post_init__(self) -> None:
        self.event = _as_dict(self.event, "event")
        self.profile = _as_dict(self.profile, "profile")
        self.context = _as_dict(self.context, "context")
        self.journey = _as_dict(self.journey, "journey")
        if self.now is None:
            self.now = _utcnow()
        elif self.now.tzinfo is None or self.now.utcoffset() is None:
            raise ValueError("RuleContext.now must be timezone-aware")


@dataclass(frozen=True, slots=True)
class RuleResult:
    """Outcome of evaluate(): false plus a readable `error` when the data did not fit."""

    value: bool
    error: str | None = None

    def __bool__(self) -> bool:
        return self.value


# Shared instances: the common, error-free outcomes allocate nothing.
_TRUE = RuleResult(True)
_FALSE = RuleResult(False)


def describe_error(exc: BaseException) -> str:
    """E.g. "TypeError: '>' not supported between instances of 'str' and 'int'"."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > _MAX_ERROR_LENGTH:
        text = text[: _MAX_ERROR_LENGTH - 3] + "..."
    return text


class Rule:
    """A compiled rule. Immutable and thread-safe; get one through compile_rule()."""

    __slots__ = ("text", "references", "functions", "source", "_fast", "_safe")

    def __init__(
        self,
        text: str,
        references: frozenset[str],
        functions: frozenset[str],
        source: str,
        fast: _RuleFunction,
        safe: _RuleFunction | None,
    ) -> None:
        self.text = text
        self.references = references
        self.functions = functions
        self.source = source  # the generated Python, for debugging and the admin
        self._fast = fast
        self._safe = safe  # None when it could not differ from _fast

    def __repr__(self) -> str:
        return f"<Rule {self.text!r}>"

    def evaluate(self, ctx: RuleContext) -> RuleResult:
        """Truth of the rule for ctx; runtime problems make it false and are described."""
        try:
            return (
                _TRUE
                if self._fast(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
                else _FALSE
            )
        except Exception as exc:
            if self._safe is None:
                return RuleResult(False, describe_error(exc))
        try:
            return (
                _TRUE
                if self._safe(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
                else _FALSE
            )
        except Exception as exc:
            return RuleResult(False, describe_error(exc))

    def value(self, ctx: RuleContext) -> object:
        """The expression's raw value (for computed values); raises RuleEvaluationError."""
        try:
            return self._fast(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception as exc:
            if self._safe is None:
                raise RuleEvaluationError(describe_error(exc)) from exc
        try:
            return self._safe(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception as exc:
            raise RuleEvaluationError(describe_error(exc)) from exc


def _build(source: str, constants: dict[str, object], text: str) -> _RuleFunction:
    namespace: dict[str, Any] = {**codegen.BASE_GLOBALS, **constants}
    try:
        code = compile(source, "<rule>", "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        # Our limits should make this unreachable; fail as a rule error, not a crash.
        raise RuleSyntaxError("rule is too complex", 0, text) from None
    exec(code, namespace)  # noqa: S102 - source generated from a validated AST only
    return namespace["_rule"]


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_rule(text: str) -> Rule:
    """Parse, validate and compile `text`; the same text returns the same Rule object."""
    parsed = parse(text)
    fast_source, fast_constants = codegen.generate(parsed.tree, fast=True)
    fast = _build(fast_source, fast_constants, text)
    safe: _RuleFunction | None = None
    # events_in_last may hit the database: never run it twice for one evaluation.
    if codegen.has_multi_step_path(parsed.tree) and "events_in_last" not in parsed.functions:
        safe_source, safe_constants = codegen.generate(parsed.tree, fast=False)
        safe = _build(safe_source, safe_constants, text)
    elif "events_in_last" in parsed.functions:
        fast_source, fast_constants = codegen.generate(parsed.tree, fast=False)
        fast = _build(fast_source, fast_constants, text)
    return Rule(text, parsed.references, parsed.functions, fast_source, fast, safe)


def validate_rule(text: str) -> list[str]:
    """Error messages for a form field; an empty list means the rule compiles."""
    try:
        compile_rule(text)
    except RuleSyntaxError as exc:
        return [str(exc)]
    return []
