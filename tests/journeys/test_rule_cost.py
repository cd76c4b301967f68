"""Every rule's cost is bounded (issue #15 item 9): what the text shows is refused by the rule
checker with the reason; what only the data shows makes the rule false with the reason, fast."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from journeys.rules import RuleContext, compile_rule, validate_rule


@pytest.mark.parametrize("rule, why", [
    ("round(1, -100000000) > 0", "round() digits must be between -100 and 100"),
    ("round(profile.x, 101) > 0", "round() digits must be between -100 and 100"),
    ("1" + "0" * 400 + " > 1", "number too long"),
    (" or ".join(["events_in_last('Order', days=1) > 0"] * 6), "at most 5 events_in_last() calls"),
])
def test_the_rule_checker_refuses_costly_rules_and_says_why(rule, why):
    [message] = validate_rule(rule)
    assert why in message


@pytest.mark.django_db
def test_the_console_rule_checker_answers_with_the_reason(admin_client):
    response = admin_client.post(reverse("console:rule_check"), {"rule": "round(1, -100000000) > 0"})
    assert response.status_code == 200
    assert "round() digits must be between -100 and 100" in response.content.decode()


@pytest.mark.parametrize("rule, why", [
    ("round(1, profile.digits) > 0", "round() digits must be between"),
    ("profile.big * profile.big * profile.big > 0", "number too large"),
    ("str(profile.long) + str(profile.long) + str(profile.long) == ''", "text too long"),
    ("profile.items + profile.items + profile.items == []", "list too long"),
    ("int(profile.digits_text) > 0", "int() reads at most 100 characters"),
])
def test_costly_data_makes_the_rule_false_with_the_reason_in_milliseconds(rule, why):
    ctx = RuleContext(event={}, context={}, journey={}, profile={
        "digits": -100_000_000, "big": 10 ** 300, "long": "x" * 60_000, "items": list(range(60_000)),
        "digits_text": "9" * 4000})
    started = time.perf_counter()
    result = compile_rule(rule).evaluate(ctx)
    assert time.perf_counter() - started < 0.5
    assert result.value is False and why in result.error


def test_ordinary_arithmetic_and_text_still_work():
    ctx = RuleContext(event={"properties": {"total": 120}}, profile={"first": "Ada", "n": 3}, context={}, journey={})
    for rule in ("event.properties.total * 2 == 240", "profile.n + 1 == 4", "profile.first + '!' == 'Ada!'",
                 "round(12.345, 2) == 12.35", "round(1234, -2) == 1200", "profile.missing * 2 == null",
                 "profile.missing + 1 == null", "[1] + [2] == [1, 2]"):
        assert compile_rule(rule).evaluate(ctx).value is True, rule
