"""The journey rule language: what an ops person writes and what the engine gets back.

Plain functions, no database: rules are pure and must stay importable without Django.
"""

from __future__ import annotations

import datetime as dt
import pickle
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from journeys.rules import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    RuleContext,
    RuleEvaluationError,
    RuleResult,
    RuleSyntaxError,
    compile_rule,
    validate_rule,
)

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)

ORDER = {
    "event": {
        "name": "Order Completed",
        "properties": {
            "total": 150,
            "currency": "EUR",
            "items": [{"sku": "A1"}, {"sku": "B2"}],
            "item count": 3,
            "coupon": None,
        },
    },
    "profile": {
        "tenure_days": 45,
        "plan": "pro",
        "country": "DE",
        "tags": ["vip", "beta"],
        "signup_at": "2024-05-01T12:00:00+00:00",
        "email": "Ada@Example.com",
    },
    "context": {"device": "mobile"},
    "journey": {"step": "welcome"},
}


def make_ctx(**overrides: object) -> RuleContext:
    data: dict[str, object] = {**ORDER, "now": NOW}
    data.update(overrides)
    return RuleContext(**data)  # type: ignore[arg-type]


def value_of(text: str, **overrides: object) -> object:
    return compile_rule(text).value(make_ctx(**overrides))


def holds(text: str, **overrides: object) -> bool:
    """Evaluate and insist there was no runtime error (errors are tested separately)."""
    result = compile_rule(text).evaluate(make_ctx(**overrides))
    assert result.error is None, result.error
    return result.value


def syntax_error(text: str) -> RuleSyntaxError:
    with pytest.raises(RuleSyntaxError) as info:
        compile_rule(text)
    return info.value


# --- the example from the brief -----------------------------------------------------------------

EXAMPLE = (
    "event.properties.total >= 100 and profile.tenure_days > 30 "
    'and context.device in ["mobile", "tablet"]'
)


def test_example_rule_matches_an_order_and_exposes_what_it_reads():
    # given the example rule
    rule = compile_rule(EXAMPLE)
    # when it is evaluated against a matching and a non-matching context
    matching = rule.evaluate(make_ctx())
    desktop = rule.evaluate(make_ctx(context={"device": "desktop"}))
    # then
    assert matching == RuleResult(True, None)
    assert desktop == RuleResult(False, None)
    assert rule.text == EXAMPLE
    assert rule.references == {"event.properties.total", "profile.tenure_days", "context.device"}
    assert rule.functions == frozenset()


# --- literals and operators ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42),
        ("-7", -7),
        ("1.5", 1.5),
        ("2e3", 2000.0),
        ("1.5E-1", 0.15),
        ('"double"', "double"),
        ("'single'", "single"),
        (r'"tab\tquote\"back\\slash\u00e9"', 'tab\tquote"back\\slash\u00e9'),
        (r"'it\'s'", "it's"),
        ("true", True),
        ("True", True),
        ("false", False),
        ("False", False),
        ("null", None),
        ("None", None),
        ("[]", []),
        ("[1, 'a', null, [2]]", [1, "a", None, [2]]),
        ("[1, 2,]", [1, 2]),
        ("1e999 > 10", True),
        ("-1e999 < -10", True),
    ],
)
def test_literals(text, expected):
    assert value_of(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2", 3),
        ("'a' + 'b'", "ab"),
        ("[1] + [2]", [1, 2]),
        ("5 - 7", -2),
        ("6 * 7", 42),
        ("7 / 2", 3.5),
        ("7 % 3", 1),
        ("-event.properties.total", -150),
        ("--3", 3),
        ("1 == 1", True),
        ("1 == 1.0", True),
        ("'1' == 1", False),
        ("1 != 2", True),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2", True),
        ("2 >= 3", False),
        ("'abc' < 'abd'", True),
        ("2 in [1, 2]", True),
        ("3 not in [1, 2]", True),
        ("'ell' in 'hello'", True),
        ("'vip' in profile.tags", True),
        ("'gold' not in profile.tags", True),
        ("'plan' in profile", True),
        ("profile.plan in [event.properties.currency, 'pro']", True),
        ("true and false", False),
        ("true or false", True),
        ("not true", False),
        ("not null", True),
        ("0 or 'fallback'", "fallback"),
    ],
)
def test_operators(text, expected):
    assert value_of(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 2 - 3", 5),
        ("16 / 4 / 2", 2),
        ("-2 * 3 + 1", -5),
        ("2 * -3", -6),
        ("10 - 4 % 3", 9),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("not false and false", False),
        ("not 1 == 2", True),
        ("not 2 in [1]", True),
        ("1 + 1 == 2 and 3 > 2", True),
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 > 2 >= 2 == 2", True),
        ("1 < event.properties.total <= 150", True),
        ("1 < profile.missing < 3", False),
    ],
)
def test_precedence_and_chaining_follow_python(text, expected):
    assert value_of(text) == expected


def test_multiline_rules_are_allowed():
    assert holds("event.name == 'Order Completed'\n  and profile.plan == 'pro'")


# --- paths and missing data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('event.properties["item count"]', 3),
        ("event['properties']['total']", 150),
        ("event.properties.items[0].sku", "A1"),
        ("event.properties.items[-1].sku", "B2"),
        ("event.properties.items[5].sku", None),
        ("journey.step", "welcome"),
        ("context", {"device": "mobile"}),
        ('event["__class__"]', None),  # a dict key, never a Python attribute
        ("event.name.upper", None),  # a string has no keys, and no getattr
        ("event.properties.items.sku", None),
        ("event.properties.total.value", None),
    ],
)
def test_paths_index_dicts_and_lists_only(text, expected):
    assert value_of(text) == expected


def test_int_subscript_reads_int_dict_keys():
    assert value_of("event.by_id[7]", event={"by_id": {7: "seven"}}) == "seven"


@pytest.mark.parametrize(
    "text",
    [
        "event.nope.deeper.still == 1",
        "event.properties.coupon.code == 'X'",
        "profile.missing > 3",
        "profile.missing <= 3",
        "3 < profile.missing",
        "profile.missing >= profile.other",
        "profile.missing in ['a', 'b']",
        "profile.missing in profile.tags",
        "'x' in profile.missing",
        "event.properties.total + profile.missing > 0",
        "-profile.missing < 0",
        "profile.missing * 2 > 0",
        "profile.missing % 2 == 1",
        "profile.missing == 1",
        "profile.missing > null",
    ],
)
def test_missing_attributes_read_as_null_and_make_conditions_false(text):
    assert compile_rule(text).evaluate(make_ctx()) == RuleResult(False, None)


@pytest.mark.parametrize(
    "text",
    [
        "profile.missing == null",
        "profile.missing != 1",
        "profile.missing not in ['a']",
        "profile.missing in ['a', null]",  # listing null explicitly matches a missing value
        "not profile.missing",
        "event.properties.coupon == null",
    ],
)
def test_null_equality_works_normally(text):
    assert holds(text)


@pytest.mark.parametrize(
    "event",
    [
        {"properties": "not a dict"},
        {"properties": 12},
        {"properties": ["a", "b"]},
        {"properties": 0},
        {"properties": ""},
        {"properties": None},
        {},
    ],
)
def test_non_dict_intermediates_read_as_null(event):
    # given a path through something that is not a dict
    rule = compile_rule("event.properties.total.amount")
    # when / then it is simply missing, with and without a comparison
    assert rule.value(make_ctx(event=event)) is None
    assert rule.evaluate(make_ctx(event=event)) == RuleResult(False, None)
    assert compile_rule("event.properties.total >= 1").evaluate(make_ctx(event=event)) == (
        RuleResult(False, None)
    )


def test_context_defaults_and_normalisation():
    ctx = RuleContext(event=None, profile={}, context=None)
    assert ctx.event == {} and ctx.context == {} and ctx.journey == {}
    assert ctx.now.tzinfo is not None
    assert ctx.events_in_last is None
    assert compile_rule("event.a == null").evaluate(RuleContext()).value is True
    with pytest.raises(ValueError, match="timezone-aware"):
        RuleContext(now=dt.datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        RuleContext(event="nope")  # type: ignore[arg-type]


# --- runtime errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error_start"),
    [
        ('"abc" > 1', "TypeError: '>' not supported"),
        ("event.name > 1", "TypeError: '>' not supported"),
        ("len(5) > 1", "TypeError: len() expects text, a list or an object, got number"),
        ("event.name + 1 == 2", "TypeError: can only concatenate"),
        ("event.name * 2 == 'x'", "TypeError: unsupported operand type(s) for *: 'text' and"),
        ("'%s' % 1 == '1'", "TypeError: unsupported operand type(s) for %"),
        ("1 / 0 > 0", "ZeroDivisionError: division by zero"),
        ("lower(5) == '5'", "TypeError: lower() expects text, got number"),
        ("int('abc') == 1", "ValueError: int() could not read 'abc' as a number"),
        ("days_since('yesterday') > 1", "ValueError: days_since() could not read 'yesterday'"),
        ("days_since(5) > 1", "TypeError: days_since() expects a date"),
        ("1 in 5", "TypeError: argument of type 'int' is not iterable"),
        ("-event.name == 1", "TypeError: bad operand type for unary -"),
    ],
)
def test_runtime_type_errors_make_the_rule_false_and_are_described(text, error_start):
    # when a rule meets data it cannot handle
    result = compile_rule(text).evaluate(make_ctx())
    # then it is false, nothing is raised, and ops get a readable reason
    assert result.value is False
    assert result.error is not None and result.error.startswith(error_start), result.error
    # and value() raises the same description
    with pytest.raises(RuleEvaluationError) as info:
        compile_rule(text).value(make_ctx())
    assert info.value.error == result.error


def test_runtime_error_behind_a_non_dict_intermediate_is_still_reported():
    # given a path that goes through a string before the failing comparison
    result = compile_rule("event.properties.total.x == null and event.name > 1").evaluate(
        make_ctx(event={"name": "n", "properties": {"total": "text"}})
    )
    assert result.value is False
    assert result.error is not None and result.error.startswith("TypeError: '>'")


def test_error_messages_are_bounded():
    long_text = "x" * 2000
    result = compile_rule("int(event.name) == 1").evaluate(make_ctx(event={"name": long_text}))
    assert result.error is not None and len(result.error) <= 300


def test_evaluate_never_raises_when_the_counter_fails():
    def broken(name: str, since: dt.datetime) -> int:
        raise RuntimeError("database is down")

    result = compile_rule("events_in_last('x', days=1) > 0").evaluate(
        make_ctx(events_in_last=broken)
    )
    assert result == RuleResult(False, "RuntimeError: database is down")


def test_truthiness_of_non_boolean_results():
    assert compile_rule("event.properties.total").evaluate(make_ctx()) == RuleResult(True)
    assert compile_rule("event.missing").evaluate(make_ctx()) == RuleResult(False)
    assert bool(RuleResult(True)) is True and bool(RuleResult(False, "x")) is False


# --- functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now()", NOW),
        ("today()", dt.date(2024, 6, 1)),
        ("days_since(profile.signup_at)", 31.0),
        ("days_since('2024-05-31')", 1.5),  # naive values are read in ctx.now's time zone
        ("days_since('2024-05-31T12:00:00Z')", 1.0),
        ("hours_since('2024-06-01T10:00:00+00:00')", 2.0),
        ("days_until('2024-06-11T12:00:00+00:00')", 10.0),
        ("days_since(profile.missing)", None),
        ("date('2024-05-02T10:00:00+00:00')", dt.date(2024, 5, 2)),
        ("datetime('2024-05-02') < now()", True),
        ("lower(profile.email)", "ada@example.com"),
        ("upper(profile.country)", "DE"),
        ("lower(profile.missing)", None),
        ("contains(profile.email, 'Example')", True),
        ("contains(profile.tags, 'vip')", True),
        ("contains(profile.tags, 'gold')", False),
        ("contains(profile.missing, 'x')", False),
        ("contains(event.properties, 'total')", True),
        ("starts_with(event.name, 'Order')", True),
        ("starts_with(profile.missing, 'x')", False),
        ("ends_with(event.name, 'Completed')", True),
        ("ends_with(event.name, 'Started')", False),
        ("len(profile.tags)", 2),
        ("len(event.name)", 15),
        ("len(event.properties)", 5),
        ("len(profile.missing)", None),
        ("abs(-3)", 3),
        ("abs(profile.missing)", None),
        ("min(3, 1, 2)", 1),
        ("min(profile.missing, 4)", 4),
        ("max([1, 9, 4])", 9),
        ("max(profile.missing)", None),
        ("round(2.567)", 3),
        ("round(2.567, 2)", 2.57),
        ("int('42')", 42),
        ("int('3.5')", 3),
        ("int(7.9)", 7),
        ("float('2.5')", 2.5),
        ("str(12)", "12"),
        ("str(true)", "true"),
        ("str(profile.tags)", '["vip", "beta"]'),
        ("str(profile.missing)", None),
        ("coalesce(profile.missing, profile.plan, 'free')", "pro"),
        ("coalesce(profile.missing)", None),
        ("exists(profile.plan)", True),
        ("exists(profile.missing)", False),
        ("exists(event.properties.coupon)", False),
    ],
)
def test_functions(text, expected):
    assert value_of(text) == expected


def test_every_function_has_help_for_the_rule_editor():
    names = {
        "now",
        "today",
        "days_since",
        "hours_since",
        "days_until",
        "lower",
        "upper",
        "contains",
        "starts_with",
        "ends_with",
        "len",
        "abs",
        "min",
        "max",
        "round",
        "int",
        "float",
        "str",
        "coalesce",
        "exists",
        "events_in_last",
    }
    assert names <= set(FUNCTIONS)
    assert all(
        isinstance(text, str) and text.startswith(name + "(") for name, text in FUNCTIONS.items()
    )


def test_date_functions_accept_dates_and_datetimes():
    ctx = make_ctx(profile={"d": dt.date(2024, 5, 30), "naive": dt.datetime(2024, 5, 31, 12)})
    assert compile_rule("days_since(profile.d)").value(ctx) == 2.5
    assert compile_rule("days_since(profile.naive)").value(ctx) == 1.0
    assert compile_rule("date(profile.d)").value(ctx) == dt.date(2024, 5, 30)


class FakeCounter:
    """Stands in for the engine's event store."""

    def __init__(self, count: int | None) -> None:
        self.count = count
        self.calls: list[tuple[str, dt.datetime]] = []

    def __call__(self, name: str, since: dt.datetime) -> int | None:
        self.calls.append((name, since))
        return self.count


def test_events_in_last_days_asks_the_counter_for_the_window():
    # given a counter that saw 3 events
    counter = FakeCounter(3)
    rule = compile_rule("events_in_last('Order Completed', days=7) >= 3")
    # when
    result = rule.evaluate(make_ctx(events_in_last=counter))
    # then
    assert result == RuleResult(True)
    assert counter.calls == [("Order Completed", NOW - dt.timedelta(days=7))]
    assert rule.functions == {"events_in_last"}


def test_events_in_last_hours_and_computed_arguments():
    counter = FakeCounter(1)
    value = compile_rule("events_in_last(event.name, hours=journey.window)").value(
        make_ctx(events_in_last=counter, journey={"window": 2})
    )
    assert value == 1
    assert counter.calls == [("Order Completed", NOW - dt.timedelta(hours=2))]


def test_events_in_last_without_a_counter_is_zero_and_none_is_missing():
    assert value_of("events_in_last('x', days=1)") == 0
    assert compile_rule("events_in_last('x', days=1) > 0").evaluate(
        make_ctx(events_in_last=FakeCounter(None))
    ) == RuleResult(False)


def test_events_in_last_is_called_once_even_when_the_rule_fails():
    counter = FakeCounter(2)
    result = compile_rule(
        "events_in_last('x', days=1) > 0 and event.properties.total.x > 'a'"
    ).evaluate(make_ctx(events_in_last=counter, event={"properties": {"total": {"x": 1}}}))
    assert result.error is not None
    assert len(counter.calls) == 1


# --- syntax errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("event.total >=", "unexpected end of rule", 15),
        ("foo.bar", "unknown name 'foo'", 1),
        ("os.system('x')", "unknown name 'os'", 1),
        ("settings.SECRET_KEY", "unknown name 'settings'", 1),
        ('__import__("os")', "names starting with '_' are not allowed", 1),
        ("event.__class__", "names starting with '_' are not allowed", 7),
        ("event._private", "names starting with '_' are not allowed", 7),
        ('open("x")', "unknown function 'open'", 1),
        ("event.a > 1 and eval('1')", "unknown function 'eval'", 17),
        ("event.a > 1 and unknown(1)", "unknown function 'unknown'", 17),
        ("(event.total >= 100", "expected ')' but found end of rule", 20),
        ("event.total >= 100)", "unexpected ')'", 19),
        ("lower(event.name)) == 'x'", "unexpected ')'", 18),
        ("[1, 2", "expected ']' but found end of rule", 6),
        (r'event.name == "a\q"', "invalid escape '\\q' in string", 17),
        (r'event.name == "\u12"', "invalid \\u escape", 16),
        ('event.name == "open', "unterminated string", 15),
        ("event.a = 1", "unexpected '=' (use == to compare)", 9),
        ("event.a ! 1", "unexpected character '!'", 9),
        ("event.a > 1 && true", "unexpected character '&'", 13),
        ("event.", "expected an attribute name after '.' but found end of rule", 7),
        ("event.properties[total]", "a subscript must be a text or whole-number literal", 18),
        ("event.items[1.5]", "a subscript must be a text or whole-number literal", 13),
        ("event(1)", "'event' is not a function", 1),
        ("now", "'now' is a function", 1),
        ("now(1)", "now() takes at most 0 arguments", 1),
        ("lower()", "lower() needs at least 1 argument", 1),
        ("contains('a')", "contains() needs at least 2 arguments", 1),
        ("lower(s='x')", "lower() has no argument called 's'", 7),
        ("events_in_last('x')", "events_in_last() needs exactly one of days=N or hours=N", 1),
        ("events_in_last('x', days=1, hours=2)", "needs exactly one of", 1),
        ("events_in_last('x', weeks=1)", "has no argument called 'weeks'", 21),
        ("events_in_last('x', days=1, days=2)", "got 'days' twice", 29),
        ("events_in_last(days=1, 'x')", "positional argument after a keyword argument", 24),
        ("lambda: 1", "unknown name 'lambda'", 1),
        ("[x for x in event]", "unknown name 'x'", 2),
        ("event.a if true else 1", "unexpected 'if'", 9),
        ("1 2", "unexpected number 2", 3),
        ("12abc", "invalid number", 1),
        ("and", "unexpected 'and'", 1),
        ("", "rule is empty", 1),
        ("   ", "rule is empty", 1),
        ("'a'.upper()", "unexpected '.'", 4),
    ],
)
def test_syntax_errors_point_at_the_problem(text, message, column):
    error = syntax_error(text)
    assert message in error.message, error.message
    assert error.column == column
    assert error.position == column - 1
    assert error.text == text
    assert str(error) == f"{error.message} at column {column}"


def test_syntax_error_string_format_matches_the_editor():
    assert str(syntax_error("event.a > (1 + 2))")) == "unexpected ')' at column 18"


def test_syntax_errors_survive_pickling():
    # q2 stores task results pickled
    original = syntax_error("1 +")
    error = pickle.loads(pickle.dumps(original))
    assert (error.message, error.position, error.text) == ("unexpected end of rule", 3, "1 +")
    assert str(error) == str(original)


def test_validate_rule_returns_messages_for_forms():
    assert validate_rule(EXAMPLE) == []
    assert validate_rule("foo > 1") == [
        "unknown name 'foo' (a rule can read event, profile, context and journey) at column 1"
    ]


def test_keywords_may_be_used_as_attribute_names():
    assert value_of("event.data.in", event={"data": {"in": 1}}) == 1


def test_underscore_keys_are_reachable_through_subscripts_only():
    assert value_of('event["_id"]', event={"_id": "abc"}) == "abc"


# --- limits -------------------------------------------------------------------------------------


def test_text_length_limit():
    ok = "1 == 1" + " " * (MAX_LENGTH - 6)
    assert compile_rule(ok).evaluate(RuleContext()).value is True
    error = syntax_error(ok + " ")
    assert "longer than" in error.message


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "(" * n + "1" + ")" * n,
        lambda n: "not " * n + "true",
        lambda n: "-" * n + "event.a",
        lambda n: "lower(" * n + "'A'" + ")" * n,
        lambda n: "[" * n + "]" * n,
        lambda n: " + ".join(["event.a"] * n),
        lambda n: "event" + ".a" * n,
    ],
)
def test_nesting_depth_limit(make):
    # a rule well within the limit compiles and runs
    compile_rule(make(MAX_DEPTH // 2 - 2)).evaluate(RuleContext())
    # a deeper one is refused cleanly rather than crashing Python
    error = syntax_error(make(MAX_DEPTH * 2))
    assert "nested too deeply" in error.message


def test_flat_boolean_chains_are_not_limited_by_depth():
    rule = compile_rule(" and ".join(f"event.a{i} == null" for i in range(150)))
    assert rule.evaluate(RuleContext()).value is True


def test_deepest_allowed_rules_compile():
    # exactly at the limit, every construct must still produce valid Python
    for text in [
        " + ".join(["event.a.b"] * (MAX_DEPTH - 3)),
        "-" * (MAX_DEPTH - 2) + "event.a",
        "event" + ".a" * (MAX_DEPTH - 1),
        "not " * (MAX_DEPTH - 1) + "true",
    ]:
        compile_rule(text).evaluate(RuleContext())


# --- packaging --------------------------------------------------------------------------------


def test_rules_import_without_django():
    # the engine's hot path and the benchmark use the package standalone
    code = "import sys, journeys.rules; assert 'django' not in sys.modules, sorted(sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, capture_output=True)


# --- caching and metadata -----------------------------------------------------------------------


def test_compiled_rules_are_cached_by_text():
    assert compile_rule(EXAMPLE) is compile_rule(EXAMPLE)
    assert compile_rule(EXAMPLE) is not compile_rule(EXAMPLE + " ")


def test_references_and_functions_are_collected():
    rule = compile_rule(
        "days_since(profile.signup_at) > 30 and lower(event.properties['Full Name']) == 'x' "
        "or events_in_last('Login', days=7) > coalesce(journey.min, 0) or event.items[0].sku"
    )
    assert rule.references == {
        "profile.signup_at",
        'event.properties["Full Name"]',
        "journey.min",
        "event.items[0].sku",
    }
    assert rule.functions == {"days_since", "lower", "events_in_last", "coalesce"}


def test_generated_code_contains_no_user_text_outside_literals():
    rule = compile_rule("event.a == 'x\\'); import os; (\\''")
    assert rule.value(make_ctx(event={"a": "x'); import os; ('"})) is True
    assert "import os" not in rule.source.replace(repr("x'); import os; ('"), "")


# --- fuzzing ------------------------------------------------------------------------------------

_FRAGMENTS = r"""
    event profile context journey . properties total [ ] ( ) , 0 1 -2 1.5 'a' "b" true null
    and or not in == != < <= > >= + - * / % lower len min coalesce days_since events_in_last
    days= now __import__ os = \ ' "
""".split()  # noqa: SIM905 - a token soup reads better as text


def test_fuzz_random_text_only_ever_raises_rule_syntax_error():
    rng = random.Random(1234)
    alphabet = string.printable + "é€😀"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        try:
            compile_rule(text)
        except RuleSyntaxError as error:
            assert 0 <= error.position <= len(text)


def test_fuzz_token_soup_compiles_or_fails_cleanly_and_never_raises_when_evaluated():
    rng = random.Random(99)
    contexts = [
        make_ctx(),
        RuleContext(),
        make_ctx(event={"properties": "text"}, profile={"tags": 5}, context={"device": None}),
    ]
    compiled = 0
    for _ in range(5000):
        text = " ".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 12)))
        text = text.replace(" . ", ".")
        try:
            rule = compile_rule(text)
        except RuleSyntaxError as error:
            assert 0 <= error.position <= len(text)
            continue
        compiled += 1
        for ctx in contexts:
            result = rule.evaluate(ctx)
            assert isinstance(result.value, bool)
            assert result.error is None or isinstance(result.error, str)
    assert compiled > 50  # the soup must exercise evaluation, not only the parser


def _random_rule(rng: random.Random, depth: int = 0) -> str:
    """A well-formed rule mixing every construct, to shake out code generation bugs."""
    paths = ["event.properties.total", "profile.tags", "event.name", "context.a[0].b", "journey"]
    literals = ["1", "-2", "1.5", "'a'", "'vip'", "true", "null", "[]", "[1, 'a', null]"]
    if depth > 4:
        return rng.choice(paths + literals)
    kind = rng.randrange(9)
    sub = [_random_rule(rng, depth + 1) for _ in range(3)]
    if kind == 0:
        return rng.choice(paths)
    if kind == 1:
        return rng.choice(literals)
    if kind == 2:
        return f"({sub[0]} {rng.choice(['and', 'or'])} {sub[1]})"
    if kind == 3:
        return f"(not {sub[0]})"
    if kind == 4:  # chained comparisons share operands: the tricky part of code generation
        ops = ["==", "!=", "<", "<=", ">", ">=", "in", "not in"]
        return f"({sub[0]} {rng.choice(ops)} {sub[1]} {rng.choice(ops)} {sub[2]})"
    if kind == 5:
        return f"({sub[0]} {rng.choice('+-*/%')} {sub[1]})"
    if kind == 6:
        return f"-({sub[0]})"
    if kind == 7:
        return f"{rng.choice(['lower', 'len', 'exists', 'str', 'abs'])}({sub[0]})"
    return f"{rng.choice(['coalesce', 'min', 'contains', 'starts_with'])}({sub[0]}, {sub[1]})"


def test_fuzz_generated_rules_evaluate_consistently():
    rng = random.Random(7)
    contexts = [
        make_ctx(),
        RuleContext(),
        make_ctx(
            event={"properties": "text", "name": None},
            profile={"tags": 5},
            context={"a": [{"b": 2}]},
            journey={"x": 1},
        ),
    ]
    for _ in range(1500):
        rule = compile_rule(_random_rule(rng))
        for ctx in contexts:
            result = rule.evaluate(ctx)
            try:
                value = rule.value(ctx)
            except RuleEvaluationError as error:
                assert result == RuleResult(False, error.error), rule.text
            else:
                assert result == RuleResult(bool(value)), rule.text
            # internal mistakes (unassigned temporaries, stray attribute access) never leak
            for internal in ("NameError", "UnboundLocalError", "AttributeError", "KeyError"):
                assert internal not in (result.error or ""), (rule.text, result.error)
