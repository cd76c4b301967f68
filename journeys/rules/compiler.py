"""Compiled rules: parsed once, turned into Python, evaluated against a `RuleContext` (context.py).

The engine evaluates the same few rules against every incoming event, so a
rule is compiled once (and cached by its text) and evaluation is a single call
into generated Python plus the bookkeeping needed to never raise at runtime.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import codegen
from .context import RuleContext
from .errors import RuleEvaluationError, RuleSyntaxError
from .nodes import Node
from .parser import parse

_RuleFunction = Callable[..., Any]

_MAX_ERROR_LENGTH = 300
_CACHE_SIZE = 4096


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
    """A compiled rule. Immutable and thread-safe; get one through compile_rule().

    `evaluate(ctx) -> RuleResult` gives the truth of the rule for ctx and never
    raises for runtime problems: they make it false and are described in
    `error`. It is the generated function itself, stored on the instance rather
    than wrapped in a method, because the engine calls it for every event and a
    wrapper's extra Python call was a measurable share of the cost.
    """

    __slots__ = ("_fallback", "_value", "evaluate", "functions", "references", "source", "text")

    evaluate: Callable[[RuleContext], RuleResult]

    def __init__(
        self,
        text: str,
        references: frozenset[str],
        functions: frozenset[str],
        source: str,
        evaluate: Callable[[RuleContext], RuleResult],
        value: _RuleFunction,
        fallback: _RuleFunction | None,
    ) -> None:
        self.text = text
        self.references = references
        self.functions = functions
        self.source = source  # the generated Python, for debugging
        self.evaluate = evaluate
        self._value = value
        self._fallback = fallback  # the "safe" variant, when it can differ from _value

    def __repr__(self) -> str:
        return f"<Rule {self.text!r}>"

    def value(self, ctx: RuleContext) -> object:
        """The expression's raw value (for computed values); raises RuleEvaluationError."""
        try:
            return self._value(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception as exc:
            if self._fallback is None:
                raise RuleEvaluationError(describe_error(exc)) from exc
        try:
            return self._fallback(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception as exc:
            raise RuleEvaluationError(describe_error(exc)) from exc


def _recovery(fallback: _RuleFunction | None) -> Callable[[RuleContext, Exception], RuleResult]:
    """What the generated evaluate() does once the fast variant raised."""

    def recover(ctx: RuleContext, exc: Exception) -> RuleResult:
        if fallback is not None:
            try:
                if fallback(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx):
                    return _TRUE
                return _FALSE
            except Exception as again:  # noqa: BLE001 - reported in the result instead
                exc = again
        return RuleResult(False, describe_error(exc))

    return recover


def _load(
    tree: Node, *, fast: bool, text: str, fallback: _RuleFunction | None = None
) -> tuple[str, dict[str, Any]]:
    """Generate, compile and run one variant; returns its source and namespace."""
    source, constants = codegen.generate(tree, fast=fast)
    namespace: dict[str, Any] = {
        **codegen.BASE_GLOBALS,
        **constants,
        "_TRUE": _TRUE,
        "_FALSE": _FALSE,
        "_Exception": Exception,
        "_recover": _recovery(fallback),
    }
    try:
        code = compile(source, "<rule>", "exec")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        # Our limits should make this unreachable; fail as a rule error, not a crash.
        raise RuleSyntaxError("rule is too complex", 0, text) from None
    exec(code, namespace)  # noqa: S102 - generated from a validated AST, never from user text
    return source, namespace


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_rule(text: str) -> Rule:
    """Parse, validate and compile `text`; the same text returns the same Rule object."""
    parsed = parse(text)
    fallback: _RuleFunction | None = None
    if "events_in_last" in parsed.functions:
        # It may hit the database: never run it twice for one evaluation.
        source, namespace = _load(parsed.tree, fast=False, text=text)
    else:
        if codegen.has_multi_step_path(parsed.tree):
            fallback = _load(parsed.tree, fast=False, text=text)[1]["_rule"]
        source, namespace = _load(parsed.tree, fast=True, text=text, fallback=fallback)
    return Rule(
        text,
        parsed.references,
        parsed.functions,
        source,
        namespace["_evaluate"],
        namespace["_rule"],
        fallback,
    )


def rule_checked(text: str, *, profile_only: bool = False) -> Rule:
    """compile_rule and the checks made where a rule is written (forms, the API, the editor as it
    is typed): a function call whose constant arguments fail whatever the data
    (`date('2024-02-30')`), and with `profile_only` (segments, segment entry, lifecycle stages, cron
    audiences: read from each customer's profile alone, with no event, context or journey) a path
    under another root, which has no value there. Raises RuleSyntaxError pointing at the problem."""
    rule = compile_rule(text)
    _constant_calls_check(text)
    if profile_only:
        elsewhere = sorted(r for r in rule.references if r != "profile" and not r.startswith(("profile.", "profile[")))
        if elsewhere:
            raise RuleSyntaxError(
                f"{', '.join(elsewhere)} has no value here: this rule is read from each customer's profile, with no "
                "event, context or journey; only profile.* paths can be used (e.g. profile.plan == 'pro')",
                _position_of_root(text, elsewhere[0]), text)
    return rule


def _position_of_root(text: str, path: str) -> int:
    """Where the path's root name (`event` of event.name) first stands as a name of its own in the text."""
    root = re.split(r"[.\[]", path, maxsplit=1)[0]
    found = re.search(rf"(?<![\w.]){re.escape(root)}\b", text)
    return found.start() if found else 0


def validate_rule(text: str) -> list[str]:
    """Error messages for a form field; an empty list means the rule passes rule_checked."""
    try:
        rule_checked(text)
    except RuleSyntaxError as exc:
        return [str(exc)]
    return []


def validate_profile_rule(text: str) -> list[str]:
    """validate_rule for a rule read from each customer's profile alone (rule_checked's `profile_only`)."""
    try:
        rule_checked(text, profile_only=True)
    except RuleSyntaxError as exc:
        return [str(exc)]
    return []


def _constant_calls_check(text: str) -> None:
    """Raise RuleSyntaxError for a call whose arguments are all constants and that fails: it fails
    the same way for every customer and every event, so the rule could never be true through it."""
    from datetime import UTC, datetime

    from .nodes import Call, children, reads_no_data

    ctx = RuleContext(now=datetime.now(UTC), events_in_last=lambda name, since: 0)
    stack: list[Node] = [parse(text).tree]
    while stack:
        node = stack.pop()
        stack.extend(children(node))
        if not isinstance(node, Call) or not all(
            reads_no_data(arg) for arg in (*node.args, *(value for _, value in node.kwargs))
        ):
            continue
        function = _load(node, fast=False, text="<constant>")[1]["_rule"]
        try:
            function(ctx.event, ctx.profile, ctx.context, ctx.journey, ctx)
        except Exception as exc:  # noqa: BLE001 - any failure of constants is the rule's mistake
            raise RuleSyntaxError(f"{node.name}() fails with these constant arguments ({describe_error(exc)}), "
                                  "for every customer and event: correct the value", node.pos, text) from None
