"""Segments in SQL select exactly the customers the Python evaluator selects.

The Python compiler is the reference. Every rule of the rule test-suite
(tests/journeys/test_rules.py: its literals, also read with every root as `profile`,
and its random rule generator), a grid of comparisons over awkward data and
hypothesis-made rules are run both ways over one varied population: missing traits,
nulls, wrong types, text that looks like numbers or dates, nested objects, lists,
unicode and case. On PostgreSQL the SQL path must agree on every rule it translates;
elsewhere the Python path must be the one used.
"""

from __future__ import annotations

import ast
import datetime as dt
import random
import re
from pathlib import Path

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journeys.models import Customer
from journeys.rules import RuleSyntaxError, compile_rule
from journeys.services.segments import (
    customers_matching,
    segment_customer_ids,
    segment_plan,
    segment_translation,
)
from tests.journeys.test_event_storage import sequence_at  # noqa: F401  (the fixture: moves the event ids)
from tests.journeys.test_rules import _random_rule

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _sql_never_falls_back(caplog):
    """A statement PostgreSQL refuses is logged and answered in Python (a campaign must not stop):
    here that is a failure, or a broken translation would pass as the Python answer."""
    yield
    failed = [r.getMessage() for r in caplog.get_records("call") if "SQL failed" in r.getMessage()]
    assert not failed, failed
on_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the SQL path is PostgreSQL's"
)

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)

# Values a trait may hold: every JSON type, numbers at the edges of float precision,
# text that looks like numbers, dates (valid, invalid, unusual ISO forms), case and unicode.
VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -2,
    0.5,
    1.5,
    30,
    30.0,
    45,
    100,
    150,
    1000,
    2**53 + 1,
    1e20,
    1e-7,
    0.1,
    "0",
    "1",
    "30",
    "1.5",
    "pro",
    "Pro",
    "PRO",
    "free",
    "",
    " ",
    "vip",
    "beta",
    "abc",
    "A1",
    "Ada@Example.com",
    "ÄÖÜ",
    "straße",
    "İstanbul",
    "日本",
    "😀",
    "mobile",
    "EUR",
    "2024-05-01",
    "2024-05-01T12:00:00+00:00",
    "2024-05-31",
    "2024-06-01T12:00:00Z",
    "2024-02-30",
    "2024-06-01 11:59:59.999999",
    "2024-06-01T13:00:00+01:00",
    "20240501",
    " 2024-05-01",
    "yesterday",
    "2024-05-01T12:00:00+01:60",
    "0001-01-01",
    "2024-13-01",
    "2024-05-01T12:00",
    "2024-05-01 12:00Z",
    "2024-05-01T12:00:00,5",
    "2024-05-31T12:00:00.123456-03:30",
    "2024-05-01T12:00:00+15:59",
    "2024-05-01T12:00:00+16:00",
    "2024-02-29",
    "2023-02-29",
    "2024-04-31",
    "2024-05-01T24:00",
    "2024-05-01T23:60",
    "9999-12-31",
    "0000-01-01",
    "2024-05-01T12:00:00.1234567",
    [],
    ["vip", "beta"],
    ["vip"],
    [1, True, "a", None],
    [[1]],
    [1.0],
    [{"sku": "A1"}, {"sku": "B2"}],
    {},
    {"city": "Berlin"},
    {"city": None},
    {"total": 150, "currency": "EUR"},
    {"city": {"zip": "10115"}},
]
KEYS = [
    "plan",
    "tags",
    "total",
    "age",
    "ltv",
    "lifetime_value",
    "score",
    "signup_at",
    "birthday",
    "address",
    "name",
    "email",
    "phone",
    "country",
    "device",
    "flag",
    "step",
    "a",
    "b",
    "x",
]
MOMENTS = [
    None,
    NOW - dt.timedelta(days=40, hours=3),
    NOW - dt.timedelta(days=1),
    NOW,
    NOW + dt.timedelta(days=2),
]


def populate(n: int = 240, seed: int = 14) -> list[Customer]:
    """Customers with a bit of everything; the same ones in every run."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        traits: dict[str, object] = {}
        for key in rng.sample(KEYS, rng.randint(0, 8)):
            traits[key] = rng.choice(VALUES)
        if rng.random() < 0.3:
            traits["properties"] = {
                "total": rng.choice([150, 99.5, "150", None, True]),
                "currency": rng.choice(["EUR", "usd", None]),
                "items": rng.choice([[{"sku": "A1"}, {"sku": "B2"}], [], "none", None]),
                "item count": rng.choice([3, "3", None]),
                "coupon": None,
            }
        if rng.random() < 0.2:
            traits["tags"] = rng.choice(
                [["vip", "beta"], ["gold"], [], ["VIP", "vip"], "vip", None]
            )
        rows.append(
            Customer(
                external_id=rng.choice([f"u-{i}", "", f"U-{i}"]),
                email=rng.choice(["", f"c{i}@example.com", "Ada@Example.com"]),
                phone=rng.choice(["", "+491701234567"]),
                timezone=rng.choice(["UTC", "Europe/Berlin", ""]),
                locale=rng.choice(["", "de", "en-GB"]),
                traits=traits,
                first_seen=rng.choice(MOMENTS),
                last_seen=rng.choice(MOMENTS),
                last_engaged_at=rng.choice(MOMENTS),
            )
        )
    Customer.objects.bulk_create(rows)
    Customer.objects.update(created_at=NOW - dt.timedelta(days=100))
    return list(Customer.objects.order_by("pk"))


def python_ids(rule: str, customers: list[Customer]) -> list[int]:
    return [c.pk for c in customers_matching(rule=rule, now=NOW, customers=customers)]


def mismatches(rules: list[str], customers: list[Customer]) -> tuple[int, list[str]]:
    """(rules translated, descriptions of every disagreement)."""
    translated, wrong = 0, []
    for rule in rules:
        if segment_plan(rule) != "sql":
            continue
        translated += 1
        expected = python_ids(rule, customers)
        got = segment_customer_ids(rule=rule, now=NOW, limit=10**6)
        if got != expected:
            missing = sorted(set(expected) - set(got))[:3]
            extra = sorted(set(got) - set(expected))[:3]
            samples = {pk: Customer.objects.get(pk=pk).traits for pk in (missing + extra)[:2]}
            wrong.append(f"{rule!r}: missing {missing} extra {extra} e.g. {samples}")
    return translated, wrong


# --- the rule corpus ----------------------------------------------------------------------------


def _test_rules_literals() -> list[str]:
    """Every string literal of tests/journeys/test_rules.py that compiles as a rule."""
    source = (Path(__file__).parent / "test_rules.py").read_text()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip():
            try:
                compile_rule(node.value)
            except (RuleSyntaxError, TypeError):
                continue
            found.append(node.value)
    return sorted(set(found))


def _as_profile(rule: str) -> str:
    """The same rule reading the profile instead of the event, context or journey."""
    return re.sub(r"\b(event|context|journey)\b(?=\s*[.\[])", "profile", rule)


CORPUS = _test_rules_literals()

PATHS = [
    "profile.plan",
    "profile.total",
    "profile.tags",
    "profile.address.city",
    "profile.email",
    "profile.ltv",
    "profile.last_seen",
    "profile.tenure_days",
    "profile.first_seen",
    "profile.missing",
    "profile.tags[0]",
    "profile.tags[-1]",
    "profile.properties.total",
    'profile.properties["item count"]',
    "profile.user_id",
    "profile.timezone",
    "profile.days_since_last_seen",
    "profile.address",
    "profile.signup_at",
    "profile.phone",
    "profile.flag",
    "profile.score",
]
LITERALS = [
    "null",
    "true",
    "false",
    "0",
    "1",
    "1.5",
    "30",
    "30.0",
    "0.1",
    "-2",
    "9007199254740993",
    "1e20",
    "'pro'",
    "''",
    "'2024-05-01'",
    "'vip'",
    "[]",
    "['vip']",
    "[1, 'a', null]",
    "['pro', 1, null]",
    "['vip', 'beta']",
    "now()",
    "today()",
    "'Berlin'",
]
OPS = ["==", "!=", "<", "<=", ">", ">=", "in", "not in"]
FUNCTION_RULES = [
    "lower({p}) == 'pro'",
    "upper({p}) == 'PRO'",
    "lower({p}) in ['pro', 'vip', 'straße']",
    "len({p}) > 1",
    "len({p}) == 0",
    "abs({p}) >= 1",
    "exists({p})",
    "not exists({p})",
    "contains({p}, 'vip')",
    "contains({p}, 1)",
    "contains({p}, null)",
    "starts_with({p}, 'p')",
    "ends_with({p}, 'o')",
    "days_since({p}) > 30",
    "days_since({p}) <= 1",
    "hours_since({p}) < 24",
    "days_until({p}) > 0",
    "date({p}) == today()",
    "date({p}) < date('2024-05-15')",
    "datetime({p}) < now()",
    "coalesce({p}, 'none') == 'none'",
    "coalesce({p}, profile.plan, 0) == 0",
    "{p} + 1 > 2",
    "{p} - 1 < 0",
    "{p} * 2 >= 60",
    "{p} / 2 > 10",
    "-{p} < 0",
    "{p} + 'x' == 'prox'",
    "{p}",
    "not {p}",
    "{p} and profile.plan",
    "{p} or profile.missing == null",
    "not ({p} > 3)",
    "1 < {p} <= 150",
    "{p} == {p}",
    "{p} < profile.total",
    "{p} in profile.tags",
    "'vip' in {p}",
    "{p} in profile.address",
    "{p} != null and {p} >= 30",
    "int({p}) > 3",
    "int({p}) == 30",
    "float({p}) >= 1.5",
    "{p} in [profile.plan, 'vip', 30]",
    "{p} not in [profile.tags[0], 1]",
    "{p} not in [profile.plan, null] == true",
]


def grid(rng: random.Random, n: int) -> list[str]:
    """n comparisons and n function rules, sampled from every combination."""
    comparisons = [f"{p} {op} {lit}" for p in PATHS for op in OPS for lit in LITERALS]
    functions = [template.format(p=p) for p in PATHS for template in FUNCTION_RULES]
    return rng.sample(comparisons, n) + rng.sample(functions, n)


# --- tests ------------------------------------------------------------------------------------


@on_postgres
def test_sql_and_python_select_the_same_customers_for_the_rule_test_suite():
    # given a varied population
    customers = populate()
    # when every rule of the rule test-suite (and its profile reading) is run both ways
    rules = CORPUS + [_as_profile(rule) for rule in CORPUS]
    translated, wrong = mismatches(sorted(set(rules)), customers)
    # then SQL agrees with Python on every rule it translates, and it translates many
    assert not wrong, "\n".join(wrong)
    assert translated >= 150, translated


@on_postgres
def test_sql_and_python_agree_on_a_grid_of_paths_operators_literals_and_functions():
    customers = populate()
    rules = grid(random.Random(1), 250)
    translated, wrong = mismatches(rules, customers)
    assert not wrong, "\n".join(wrong)
    assert translated >= 480, translated


@on_postgres
def test_sql_and_python_agree_on_random_rules_from_the_rule_suite_generator():
    customers = populate(120)
    rng = random.Random(5)
    rules = [_as_profile(_random_rule(rng)) for _ in range(250)]
    translated, wrong = mismatches(rules, customers)
    assert not wrong, "\n".join(wrong)
    assert translated >= 100, translated


_path = st.sampled_from(PATHS)
_literal = st.sampled_from(LITERALS)
_leaf = st.one_of(_path, _literal)
_rule = st.recursive(
    st.builds(lambda a, op, b: f"{a} {op} {b}", _leaf, st.sampled_from(OPS), _leaf),
    lambda inner: st.one_of(
        st.builds(
            lambda a, op, b: f"({a}) {op} ({b})", inner, st.sampled_from(["and", "or"]), inner
        ),
        st.builds(lambda a: f"not ({a})", inner),
        st.builds(lambda f, a: f.format(p=a), st.sampled_from(FUNCTION_RULES), _path),
    ),
    max_leaves=6,
)


@on_postgres
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rule=_rule)
def test_sql_and_python_agree_on_hypothesis_rules(rule):
    # given the population (made once: hypothesis runs every example in one test transaction)
    customers = list(Customer.objects.order_by("pk")) or populate(80)
    # when a generated rule is run both ways, then both select the same customers
    _, wrong = mismatches([rule], customers)
    assert not wrong, "\n".join(wrong)


@on_postgres
def test_pages_and_rechecked_rows_walk_the_audience_exactly_once():
    # given customers whose dates only Python can read (so SQL asks Python about them)
    populate(150)
    for text in ["20240501", " 2024-05-01", "2024-06-01T11:00", "2024-W01-1", "20240601"] * 3:
        Customer.objects.create(traits={"signup_at": text})
    customers = list(Customer.objects.order_by("pk"))
    rule = "days_since(profile.signup_at) > 20 or profile.plan == 'pro' or exists(profile.tags)"
    assert segment_plan(rule) == "sql"
    expected = python_ids(rule, customers)
    # when the audience is read in pages of 3
    ids, after = [], 0
    while page := segment_customer_ids(rule=rule, now=NOW, after_id=after, limit=3):
        assert len(page) <= 3 and page == sorted(page) and page[0] > after
        ids += page
        after = page[-1]
    # then every selected customer comes once, in order
    assert ids == expected and len(ids) > 20


@on_postgres
def test_rules_that_only_a_running_journey_can_answer_stay_in_python():
    for rule in [
        "event.name == 'x'",
        "context.device == 'mobile'",
        "journey.step == 'a'",
        "events_in_last(profile.favourite, days=7) > 1",  # a name read from the data
        "events_in_last('Login', days=profile.window) > 1",
        "round(profile.total) == 150",
        "profile.total % 2 == 0",
        "int(profile.total) % 2 == 0",
        "str(profile.total) == '150'",
        "min(profile.a, profile.b) > 1",
        "now() - profile.last_seen == 1",
    ]:
        assert segment_plan(rule) == "python", rule
        assert segment_translation(rule=rule) is None


BIG = "9" * 20  # past int8, let alone the int4 `jsonb -> int` takes
# Literals of any size: a subscript no list can have is "no such item" (null), numbers past int8 or
# float8 compare as Python compares them; none of them may make PostgreSQL refuse the statement.
LITERAL_SIZE_RULES = [
    f"profile.tags[{BIG}] == 'a'",
    "profile.tags[-9223372036854775809] == 'a'",
    "profile.tags[2147483648] == null",
    "not profile.tags[-2147483649]",
    f"profile.address[{BIG}] == null",
    f"profile.properties.items[{BIG}].sku == 'A1'",
    f"profile.tags[{BIG}][{BIG}] == null",
    f"profile.plan == 'pro' or profile.tags[{BIG}] == 'a'",
    f"coalesce(profile.tags[{BIG}], 1) == 1",
    f"profile.tags[{BIG}] in ['a', null]",
    f"profile.total == {'9' * 40}",
    f"profile.total == -{BIG}",
    f"profile.total >= {2**63}",
    f"profile.total + {BIG} > 0",
    f"profile.total in [{BIG}, 1e308, 5e-324, 1e999, -1e999]",
    f"contains(profile.tags, {BIG})",
    "profile.total < 1e308",
    "profile.total == 1e999",
    "1e999 > profile.total",
    "profile.total < 5e-324",
    "profile.total * 1e308 > 1",
    "profile.total / 1e-320 > 1",
    "profile.total == 1.7976931348623157e308",
    f"days_since(profile.signup_at) > {BIG}",
    "days_since(profile.signup_at) > 1e308",
    "hours_since(profile.signup_at) < 1e999",
    "days_until(profile.signup_at) < -1e308",
    f"len(profile.tags) > {BIG}",
    f"int(profile.total) == {BIG}",
    "abs(profile.total) > 1e308",
    f"events_in_last('Buy', days={BIG}) > 1",
    "events_in_last('Buy', hours=2147483648) > 0",
    f"profile.ltv > {BIG}",
]


@on_postgres
def test_literals_of_any_size_translate_and_agree_with_python_in_segments_counts_and_stages():
    from journeys.models import LifecycleStage
    from journeys.services.lifecycle import customer_stages_refresh
    from journeys.services.segments import segment_size

    # given the varied population (with lists to subscript) and its events
    customers = populate(120)
    with_events(customers)
    # when rules with subscripts and numbers too large for int4, int8 or float8 are run both ways
    translated, wrong = mismatches(LITERAL_SIZE_RULES, customers)
    # then every one is SQL, the SQL is accepted (no fallback: the fixture) and agrees with Python
    assert not wrong, "\n".join(wrong)
    assert translated == len(LITERAL_SIZE_RULES)
    big_index = f"profile.tags[{BIG}] == null"
    size = segment_size(rule=big_index, now=NOW)
    assert (size.count, size.exact, size.plan) == (len(customers), True, "sql")
    # and a stage with such a rule is refreshed in SQL, every customer in it as Python says
    LifecycleStage.objects.create(key="huge", name="Huge", order=1, rule=big_index)
    assert customer_stages_refresh(now=NOW) == len(customers)
    assert set(Customer.objects.values_list("stage", flat=True)) == {"huge"}


EVENT_RULES = [
    "events_in_last('Buy', days=7) > 1",
    "events_in_last('Buy', days=7) == 0",
    "events_in_last('Buy', days=30) >= 1 and profile.plan == 'pro'",
    "events_in_last('Buy', hours=12) > 0 or events_in_last('View', days=1.5) > 2",
    "events_in_last('Buy', days=7) + events_in_last('View', hours=36) >= 3",
    "not events_in_last('View', days=3)",
    "events_in_last('View', days=0) == 0",
    "events_in_last('Buy', days=-1) == 0",  # a window that starts after now
    "events_in_last('Buy', days=True) > 0",  # not a number of days: the rule raises, false for all
    "events_in_last(3, days=1) == 0",  # not an event name: raises
    "events_in_last('Buy', days=1e12) == 0",  # a window Python cannot subtract: raises
    "events_in_last('Buy', days=null) == null",  # no window: None
    "events_in_last('Buy', days=7) > profile.visits",
    "events_in_last('Buy', days=7) >= 1 and events_in_last('Buy', days=7) < 3",  # one count, read twice
]


def with_events(customers: list[Customer]) -> None:
    """Buy and View events at moments around the windows of EVENT_RULES (some on their edges)."""
    from journeys.models import Event
    from tests.factories import make_source

    source = make_source("seg")[0]
    rng = random.Random(3)
    offsets = [dt.timedelta(**kw) for kw in ({"hours": 1}, {"hours": 12}, {"hours": 13}, {"days": 1},
                                                {"days": 1.5}, {"days": 3}, {"days": 7}, {"days": 8},
                                                {"days": 29}, {"days": 31}, {"hours": -2}, {"seconds": 0})]
    rows = [
        Event(source=source, customer=c, name=rng.choice(["Buy", "View", "Other"]), type="track",
              timestamp=NOW - rng.choice(offsets), received_at=NOW, status="processed", properties={})
        for c in customers for _ in range(rng.randint(0, 4))
    ]
    Event.objects.bulk_create(rows)


@on_postgres
def test_event_counts_translate_and_select_what_python_selects():
    # given the varied population, and events around the windows the rules ask about
    customers = populate(120)
    with_events(customers)
    # when rules counting events (constant names and windows) are run both ways
    translated, wrong = mismatches(EVENT_RULES, customers)
    # then every one of them is SQL, and SQL agrees with Python
    assert not wrong, "\n".join(wrong)
    assert translated == len(EVENT_RULES)
    assert 0 < len(python_ids(EVENT_RULES[0], customers)) < len(customers)
    assert 0 < len(python_ids(EVENT_RULES[1], customers)) < len(customers)


@on_postgres
def test_a_part_written_twice_is_computed_once_a_row():
    # given rules that read the same event count, or the same date trait, more than once
    rules = {
        "events_in_last('Buy', days=7) >= 1 and events_in_last('Buy', days=7) < 3": 1,
        "events_in_last('Buy', days=7) > 1 or events_in_last('Buy', days=7) + events_in_last('View', days=7) > 4": 2,
        "days_since(profile.signup_at) > 1 and days_since(profile.signup_at) < 400": 2,  # the text, its parse
    }
    customers = populate(120)
    with_events(customers)
    for rule, joins in rules.items():
        translation = segment_translation(rule=rule, now=NOW)
        # then each distinct count or parse is one LATERAL join (a probe of the index or a parse a row)
        assert len(translation.joins) == joins, (rule, translation.joins)
    # and the customers selected are still those Python selects
    translated, wrong = mismatches(list(rules), customers)
    assert not wrong, "\n".join(wrong)
    assert translated == len(rules)


@pytest.mark.skipif(connection.vendor == "postgresql", reason="the fallback is for other databases")
def test_other_databases_use_the_python_path_with_the_same_answers():
    # given the varied population
    customers = populate(120)
    for rule in [
        "profile.plan == 'pro'",
        "days_since(profile.signup_at) > 20",
        "lower(profile.plan) == 'pro'",
    ]:
        # then the rule is evaluated in Python pages, and selects what Python selects
        assert segment_plan(rule) == "python"
        assert segment_translation(rule=rule) is None
        assert segment_customer_ids(rule=rule, now=NOW, limit=7) == python_ids(rule, customers)[:7]


# Expectations written out by hand: both databases must give these answers, whichever path.
KNOWN = [
    ("profile.plan == 'pro'", {"pro"}),
    ("lower(profile.plan) == 'pro'", {"pro", "Pro", "PRO"}),
    ("profile.plan in ['pro', 'free']", {"pro", "free"}),
    ("profile.age >= 30", {"n30", "n30.0", "n45"}),
    ("not (profile.age >= 30) and exists(profile.age)", {"n1", "true_is_1", "true_is_1_false"}),
    ("profile.age == 1", {"n1", "true_is_1"}),
    ("days_since(profile.signup_at) > 30", {"old_date", "old_date_naive"}),
    ("'vip' in profile.tags", {"tags_vip", "tags_text"}),
    ("profile.address.city == 'Berlin'", {"berlin"}),
    ("exists(profile.address.city)", {"berlin"}),
    ("profile.missing == null and profile.email == 'x@example.com'", {"email_trait"}),
]


def _known_population() -> dict[str, int]:
    people = {
        "pro": {"plan": "pro"},
        "Pro": {"plan": "Pro"},
        "PRO": {"plan": "PRO"},
        "free": {"plan": "free"},
        "n1": {"age": 1},
        "n30": {"age": 30},
        "n30.0": {"age": 30.0},
        "n45": {"age": 45},
        "text30": {"age": "30"},
        "true_is_1": {"age": True, "flag": 1},
        "true_is_1_false": {"age": False},
        "old_date": {"signup_at": "2024-04-01T00:00:00+00:00"},
        "old_date_naive": {"signup_at": "2024-04-01"},
        "new_date": {"signup_at": "2024-05-30"},
        "bad_date": {"signup_at": "2024-02-30"},
        "tags_vip": {"tags": ["vip", "beta"]},
        "tags_text": {"tags": "vip"},
        "tags_num": {"tags": 5},
        "berlin": {"address": {"city": "Berlin"}},
        "no_city": {"address": "Berlin"},
        "email_trait": {"email": "x@example.com"},
        "nobody": {},
    }
    ids = {}
    for name, traits in people.items():
        ids[name] = Customer.objects.create(external_id=name, email="", traits=traits).pk
    return ids


@pytest.mark.parametrize(("rule", "expected"), KNOWN)
def test_known_answers_on_every_database(rule, expected):
    # given people whose traits are named after them
    ids = _known_population()
    names = {pk: name for name, pk in ids.items()}
    # when the segment is selected (SQL on PostgreSQL, Python elsewhere)
    got = {names[pk] for pk in segment_customer_ids(rule=rule, now=NOW)}
    # then it is what the rule says: booleans are numbers, text is not, a type error is false
    assert got == expected


@on_postgres
def test_text_equality_on_stored_traits_gives_the_database_a_containment_to_skip_rows_with():
    # given rules that need a trait to be certain texts
    selective = {
        "profile.plan == 'pro'": ['{"plan": "pro"}'],
        "profile.address.city == 'Berlin' and days_since(profile.signup_at) > 30": [
            '{"address": {"city": "Berlin"}}'
        ],
        "profile.country in ['DE', 'FR'] or profile.plan == 'pro'": [
            '{"country": "DE"}',
            '{"country": "FR"}',
            '{"plan": "pro"}',
        ],
    }
    for rule, documents in selective.items():
        translation = segment_translation(rule=rule, now=NOW)
        # then the statement carries JSON containment on the traits (which a GIN index answers)
        assert translation.prefilter is not None and translation.prefilter.count("@>") == len(
            documents
        ), rule
        assert sorted(
            v for v in translation.params.values() if isinstance(v, str) and v.startswith("{")
        ) == sorted(documents)
    # and nothing that could select other rows gets one: computed attributes, negations, numbers
    for rule in [
        "profile.email == 'a@b.c'",
        "not (profile.plan == 'pro')",
        "profile.plan == 'pro' or profile.age > 3",
        "profile.age == 30",
        "profile.tags[0] == 'vip'",
        "profile.plan in ['pro', null]",
    ]:
        assert segment_translation(rule=rule, now=NOW).prefilter is None, rule


@on_postgres
def test_event_counts_skip_the_partitions_of_events_received_before_their_window(settings, sequence_at):
    """Given last year's purchases in a partition the event ids have moved past and this week's
    events in the next, when rules counting events are walked in SQL, then they select what Python
    selects, and the old partition is not probed for each customer (only its newest receipt is
    read, once a source)."""
    from django.db import transaction

    from journeys.models import Event, Source
    from tests.factories import make_source, xact_table_stat

    customers = populate(120)
    source = make_source("old")[0]
    year_ago = NOW - dt.timedelta(days=200)
    Event.objects.bulk_create([Event(source=source, customer=c, name="Buy", type="track", timestamp=year_ago,
                                     received_at=year_ago, status="processed", properties={}) for c in customers])
    sequence_at(settings.EVENT_API["PARTITION_IDS"] + 5)  # that partition is full: new events go to the next
    with_events(customers)

    translated, wrong = mismatches(EVENT_RULES, customers)
    assert not wrong, "\n".join(wrong)
    assert translated == len(EVENT_RULES)
    with transaction.atomic():
        before = xact_table_stat("journeys_event_p0", "seq_scan", "idx_scan")
        found = segment_customer_ids(rule="events_in_last('Buy', days=7) > 1", now=NOW, limit=10**6)
        read = xact_table_stat("journeys_event_p0", "seq_scan", "idx_scan") - before
    assert found == python_ids("events_in_last('Buy', days=7) > 1", customers) != []
    assert read <= Source.objects.count(), read
