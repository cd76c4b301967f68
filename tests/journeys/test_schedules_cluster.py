"""The q2 schedules run on a cluster of their own (settings.Q_SCHEDULE_CLUSTER), so the minute tick,
the audit and the other periodic jobs never take the event workers (the proof with real processes
is tests/proof/test_broadcast.py)."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django_q.models import Schedule

from journeys.schedules import schedules_assign

pytestmark = pytest.mark.django_db


def test_migrate_puts_every_schedule_on_the_schedules_cluster():
    names = set(Schedule.objects.values_list("name", flat=True))
    assert {"journeys.engine_tick", "journeys.audit", "channels_app.deliveries_tick", "agents.sla_tick"} <= names
    assert set(Schedule.objects.values_list("cluster", flat=True)) == {"schedules"}


def test_a_schedule_added_later_is_moved_at_the_next_migrate_and_the_setting_can_keep_them_on_the_main_cluster():
    Schedule.objects.create(name="later", func="math.floor", args="1", schedule_type=Schedule.HOURLY)
    schedules_assign()
    assert Schedule.objects.get(name="later").cluster == "schedules"

    with override_settings(Q_SCHEDULE_CLUSTER=""):  # one qcluster does everything
        schedules_assign()
    assert set(Schedule.objects.values_list("cluster", flat=True)) == {None}
