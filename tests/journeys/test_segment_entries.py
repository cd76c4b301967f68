"""Segment entry without an event: the hourly refresh enrols customers who came into the segment
through time passing or a change that sent no event, once, and never those the event path enrolled."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as djtz

from journeys.engine.scheduler import engine_tick, segment_entries_refresh
from journeys.models import BusinessUnit, Customer, JourneyRun, SegmentMember, Workflow
from journeys.services.workflows import version_build, version_publish, workflow_create

pytestmark = pytest.mark.django_db
UTC = timezone.utc


def publish(rule: str, **extra):
    unit, _ = BusinessUnit.objects.get_or_create(slug="seg", defaults={"name": "Seg"})
    workflow = workflow_create(name="vip welcome", business_unit=unit)
    definition = {"trigger_kind": "segment_entry", "trigger_config": {"rule": rule}, "reentry_policy": "always",
                  "steps": [{"key": "done", "kind": "goal", "config": {}}], **extra}
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def entered() -> list[str]:
    return sorted(JourneyRun.objects.values_list("customer__external_id", flat=True))


def test_who_is_in_the_segment_at_go_live_does_not_enter_and_newcomers_enter_once():
    publish("profile.ltv >= 500")
    Customer.objects.create(external_id="already", traits={"ltv": 900})
    quiet = Customer.objects.create(external_id="quiet", traits={"ltv": 100})
    segment_entries_refresh(now=djtz.now())  # the baseline
    assert entered() == [] and SegmentMember.objects.count() == 1

    Customer.objects.filter(pk=quiet.pk).update(traits={"ltv": 700})  # no event: a direct update
    assert segment_entries_refresh(now=djtz.now()) == 1
    assert segment_entries_refresh(now=djtz.now()) == 0
    assert entered() == ["quiet"]


def test_a_new_trigger_records_its_members_at_the_next_minute_not_the_next_hour():
    """Who comes into the segment without an event before the first refresh counts as in at
    go-live; that first refresh runs at the next minute tick, the later ones hourly."""
    publish("profile.ltv >= 500")
    Customer.objects.create(external_id="already", traits={"ltv": 900})
    quiet = Customer.objects.create(external_id="quiet", traits={"ltv": 100})
    engine_tick(now=datetime(2026, 12, 7, 10, 1, tzinfo=UTC))  # 10:01: the baseline, at once
    assert SegmentMember.objects.count() == 1

    Customer.objects.filter(pk=quiet.pk).update(traits={"ltv": 700})  # at 10:05, through the admin or SQL
    assert engine_tick(now=datetime(2026, 12, 7, 10, 6, tzinfo=UTC))["segments"] == 0  # hourly from now on
    assert engine_tick(now=datetime(2026, 12, 7, 11, 0, tzinfo=UTC))["segments"] == 1
    assert entered() == ["quiet"]


def test_time_passing_brings_customers_into_a_segment():
    publish("profile.days_since_last_seen >= 30")
    now = djtz.now()
    Customer.objects.create(external_id="fading", last_seen=now - timedelta(days=29, hours=23))
    segment_entries_refresh(now=now)
    assert segment_entries_refresh(now=now + timedelta(hours=1)) == 1
    assert entered() == ["fading"]


def test_leaving_and_coming_back_enters_again_and_the_event_path_is_not_doubled(send):
    publish("profile.plan == 'pro'")
    segment_entries_refresh(now=djtz.now())
    send("identify", userId="u", traits={"plan": "pro"})  # the event path enrols at once
    assert entered() == ["u"]
    assert segment_entries_refresh(now=djtz.now()) == 0  # already entered since the last refresh

    Customer.objects.filter(external_id="u").update(traits={"plan": "free"})
    segment_entries_refresh(now=djtz.now())
    assert not SegmentMember.objects.exists()
    Customer.objects.filter(external_id="u").update(traits={"plan": "pro"})
    assert segment_entries_refresh(now=djtz.now() + timedelta(minutes=1)) == 1
    assert entered() == ["u", "u"]


def test_pages_of_the_audience_are_compared_range_by_range(monkeypatch):
    from journeys.engine import segment_entries

    monkeypatch.setattr(segment_entries, "PAGE", 3)
    publish("profile.vip == true")
    people = Customer.objects.bulk_create(Customer(external_id=f"c{i:02d}", traits={"vip": i % 2 == 0}) for i in range(12))
    segment_entries_refresh(now=djtz.now())
    assert SegmentMember.objects.count() == 6
    Customer.objects.filter(pk__in=[p.pk for p in people[:6]]).update(traits={"vip": True})
    Customer.objects.filter(pk=people[10].pk).update(traits={"vip": False})

    assert segment_entries_refresh(now=djtz.now()) == 3
    assert entered() == ["c01", "c03", "c05"]
    assert SegmentMember.objects.count() == 8


def test_the_refresh_is_hourly_and_a_paused_workflow_forgets_its_members():
    version = publish("profile.ltv >= 500")
    Customer.objects.create(external_id="a", traits={"ltv": 900})
    engine_tick(now=datetime(2025, 1, 6, 9, 1, tzinfo=UTC))  # just live: its members at once
    assert SegmentMember.objects.count() == 1
    Customer.objects.create(external_id="b", traits={"ltv": 900})
    engine_tick(now=datetime(2025, 1, 6, 9, 2, tzinfo=UTC))
    assert SegmentMember.objects.count() == 1  # then not at :02
    engine_tick(now=datetime(2025, 1, 6, 10, 0, tzinfo=UTC))
    assert SegmentMember.objects.count() == 2

    Workflow.objects.filter(pk=version.workflow_id).update(status="paused")
    segment_entries_refresh(now=djtz.now())
    assert not SegmentMember.objects.exists()
