"""Audiences: segment_customer_ids selects the customers a rule describes, page by page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from journeys.models import Customer, Event
from journeys.services.internal_events import event_record_internal
from journeys.services.segments import segment_customer_ids, segment_plan
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)


def walk(rule: str, *, limit: int = 5000, now: dt.datetime = NOW) -> list[int]:
    """Every id of the audience, read the way callers read it: page after page."""
    ids: list[int] = []
    after = 0
    while page := segment_customer_ids(rule=rule, now=now, after_id=after, limit=limit):
        assert page == sorted(page) and page[0] > after and len(page) <= limit
        ids += page
        after = page[-1]
    return ids


def test_an_empty_rule_selects_every_unmerged_customer_in_id_order():
    # given three customers, one merged into another
    a, b, c = CustomerFactory(), CustomerFactory(), CustomerFactory()
    Customer.objects.filter(pk=b.pk).update(merged_into=a)
    # when the whole base is read two at a time
    ids = walk("", limit=2)
    # then the merged profile is left out
    assert ids == [a.pk, c.pk]
    assert segment_plan("") == "sql"


def test_a_rule_selects_by_trait_and_pages_never_overlap():
    # given pro and free customers interleaved
    pros = []
    for i in range(7):
        customer = CustomerFactory(traits={"plan": "pro" if i % 2 else "free"})
        if i % 2:
            pros.append(customer.pk)
    # when the audience is read in pages of two
    ids = walk("profile.plan == 'pro'", limit=2)
    # then every pro customer is selected once, in order
    assert ids == pros
    assert segment_customer_ids(rule="profile.plan == 'pro'", now=NOW, after_id=pros[-1]) == []


def test_events_in_last_counts_each_customers_own_events():
    # given two customers, one of whom logged in three times this week
    busy, quiet = CustomerFactory(), CustomerFactory()
    for i in range(3):
        event_record_internal(customer=busy, name="Logged In", at=NOW - dt.timedelta(days=i))
    event_record_internal(customer=quiet, name="Logged In", at=NOW - dt.timedelta(days=30))
    assert Event.objects.filter(name="Logged In").count() == 4
    # when the segment asks for frequent visitors
    ids = walk("events_in_last('Logged In', days=7) >= 3")
    # then only the busy one is in it (PostgreSQL counts in SQL, other databases in Python pages)
    assert ids == [busy.pk]
    expected = "sql" if connection.vendor == "postgresql" else "python"
    assert segment_plan("events_in_last('Logged In', days=7) >= 3") == expected


def test_a_broken_rule_is_refused_and_a_naive_clock_too():
    from journeys.rules import RuleSyntaxError

    with pytest.raises(RuleSyntaxError):
        segment_customer_ids(rule="profile.plan ==", now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        segment_customer_ids(rule="profile.plan == 'pro'", now=dt.datetime(2024, 1, 1))
