"""Erasing a customer (right to erasure) leaves an experiment's counts as they were: the goal event
that converted each of the person's assignments stays, stripped of everything personal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app.services.privacy import customer_erase
from experiments.services.analysis import experiment_analyze
from experiments.services.assignment import assignment_decide
from journeys.models import Event
from journeys.services.internal_events import internal_source
from tests.experiments.factories import make_customers, make_experiment

pytestmark = pytest.mark.django_db


def _event(customer, name, at, n):
    return Event.objects.create(
        source=internal_source(), message_id=f"m-{customer.pk}-{n}", type="track", name=name, customer=customer,
        user_id=customer.external_id, anonymous_id=f"anon-{customer.pk}", timestamp=at, received_at=at,
        status="processed", properties={"card": "4111-secret"}, traits={"email": "x@example.com"},
        context={"ip": "10.0.0.1"}, ip="10.0.0.1")


def test_erasing_converted_customers_keeps_the_experiment_counts_and_nothing_personal():
    now = timezone.now()
    t0 = now - timedelta(days=3)
    experiment = make_experiment(key="erase", goal_event="buy", window_s=86400, now=t0)
    other = make_experiment(key="erase-other", goal_event="signup", window_s=3600, now=t0)
    people = make_customers(40, prefix="er")
    for i, customer in enumerate(people):
        assignment_decide(experiment=experiment, customer=customer, now=t0 + timedelta(minutes=i))
    for i, customer in enumerate(people[:12]):
        _event(customer, "buy", t0 + timedelta(minutes=i, seconds=30), 1)
    erased = people[:2]
    assignment_decide(experiment=other, customer=erased[0], now=t0)
    _event(erased[0], "buy", t0 + timedelta(hours=2), 2)  # a second purchase in the window: not needed
    _event(erased[0], "buy", t0 + timedelta(days=2), 3)  # after the window: never counted
    _event(erased[0], "signup", t0 + timedelta(minutes=5), 4)  # converts the other experiment
    _event(erased[1], "Viewed", t0 + timedelta(minutes=2), 5)  # not a goal
    before = [(g.name, g.exposures, g.conversions) for g in experiment_analyze(experiment=experiment, now=now).groups]
    before_other = [(g.name, g.exposures, g.conversions) for g in experiment_analyze(experiment=other, now=now).groups]

    for customer in erased:
        record = customer_erase(customer=customer, actor="dpo", reason="art. 17")

    after = [(g.name, g.exposures, g.conversions) for g in experiment_analyze(experiment=experiment, now=now).groups]
    assert after == before and sum(x for _, _, x in after) == 12
    assert [(g.name, g.exposures, g.conversions)
            for g in experiment_analyze(experiment=other, now=now).groups] == before_other
    left = Event.objects.filter(customer__in=erased).order_by("customer_id", "timestamp")
    assert [(e.customer_id, e.name, e.timestamp) for e in left] == [
        (erased[0].pk, "buy", t0 + timedelta(seconds=30)),
        (erased[0].pk, "signup", t0 + timedelta(minutes=5)),
        (erased[1].pk, "buy", t0 + timedelta(minutes=1, seconds=30)),
    ]
    for e in left:  # name, time and the tombstone only
        assert (e.message_id, e.user_id, e.anonymous_id, e.properties, e.traits, e.context, e.ip) == (
            "erased", "", "", {}, {}, {}, None)
    assert not Event.objects.filter(properties__card="4111-secret", customer__in=erased).exists()
    assert record.counts["events_kept_stripped"] == 1 and record.counts["events"] == 1

