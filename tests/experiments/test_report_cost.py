"""The report's cost follows aggregates, not its assignments: a conversion is found by matching
the goal events to the assignments (a semi-join), and only converted assignments look up their
conversion moment and last message. Before, the page looked up the goal events of every
assignment, one index probe each, in two statements (4-8 s at 40,000 assignments; QA)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from experiments.models import Assignment
from experiments.services.analysis import exposures_list, group_counts
from tests.experiments.factories import make_customers, make_experiment, make_goal_events
from tests.factories import UserFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="index probes are counted by PostgreSQL"),
]

ARMS = [{"name": "control", "control": True}, {"name": "b"}]


def event_reads() -> int:
    """How often this transaction scanned the event table (every partition), by index or in full."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)"
                       " FROM pg_stat_xact_user_tables WHERE relname LIKE 'journeys_event%%'")
        return cursor.fetchone()[0]


def test_the_report_page_does_not_probe_the_events_of_each_assignment(client):
    # given a broadcast: 3,000 customers assigned within a minute, 40 of them bought
    experiment = make_experiment(key="broadcast", arms=ARMS, goal_event="Buy", holdout_share=0.1,
                                 secondary_metrics=["completion", "open_rate"])
    customers = make_customers(3000, prefix="b")
    now = timezone.now()
    arms = list(experiment.arms.all())
    Assignment.objects.bulk_create([
        Assignment(experiment=experiment, customer=c, arm=arms[i % 2], holdout=i % 10 == 0, bucket=0.5,
                   weights={"control": 0.45, "b": 0.45, "holdout": 0.1}, assigned_at=now - timedelta(seconds=i % 60))
        for i, c in enumerate(customers)])
    make_goal_events(customers[::75], name="Buy", at=now)
    with connection.cursor() as cursor:  # as autovacuum would have by then
        cursor.execute("ANALYZE experiments_assignment; ANALYZE journeys_customer; ANALYZE journeys_event")
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))

    # when ops open the report
    before = event_reads()
    response = client.get(reverse("admin:experiments_experiment_report", args=[experiment.pk]))
    reads = event_reads() - before

    # then the events were read a few times per statement and per conversion (its first goal event,
    # a probe per partition), never once per assignment
    assert response.status_code == 200
    assert reads <= 10 * 40, reads
    # and the conversions are those of the per-customer reference
    converted = sum(1 for e in exposures_list(experiment=experiment) if e.converted_at)
    assert converted == 40 == sum(x for _, x in group_counts(experiment=experiment).values())
