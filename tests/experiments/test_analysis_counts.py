"""The experiment analysis is counted by the database: per group and UTC day, the exposures and
conversions the report and the 15-minute auto-retire read are those of `exposures_list` (the
per-customer view), over days, windows crossing midnight, late, early and future goal events,
merged profiles, the holdout and experiments longer than the days a series shows; and the rows
it reads back do not grow with the number of assignments."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, time, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from experiments.models import Assignment
from experiments.services.analysis import MAX_DAYS, experiment_analyze, experiment_auto_retire, exposures_list
from experiments.services.assignment import assignment_decide
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.models import Customer, JourneyRun
from tests.experiments.factories import make_customers, make_experiment, make_goal_events, split_then_wait
from tests.factories import pending_events, select_rows, xact_table_stat
from tests.journeys.test_event_storage import sequence_at  # noqa: F401  (the fixture: moves the event ids)

pytestmark = pytest.mark.django_db

ARMS = [{"name": "control", "control": True}, {"name": "b"}]


def reference_series(experiment, now) -> dict[str, list[tuple]]:
    """What the analysis computed from the per-customer exposures before it was counted in SQL."""
    exposures = exposures_list(experiment=experiment, now=now)
    last = now.astimezone(UTC).date()
    first = max(min(e.assigned_at for e in exposures).astimezone(UTC).date(), last - timedelta(days=MAX_DAYS - 1))
    out = {}
    for group in {e.group for e in exposures}:
        assigned = sorted(e.assigned_at for e in exposures if e.group == group)
        converted = sorted(e.converted_at for e in exposures if e.group == group and e.converted_at)
        points = []
        for i in range((last - first).days + 1):
            day = first + timedelta(days=i)
            end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)
            points.append((day, bisect.bisect_left(assigned, end), bisect.bisect_left(converted, end)))
        out[group] = points
    return out


def series_of(analysis) -> dict[str, list[tuple]]:
    return {group: [(p["day"], p["n"], p["x"]) for p in points] for group, points in analysis.series.items()}


def totals(analysis) -> dict[str, tuple[int, int]]:
    return {g.name: (g.exposures, g.conversions) for g in analysis.groups if g.exposures}


def reference_totals(experiment, now) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for e in exposures_list(experiment=experiment, now=now):
        n_x = out.setdefault(e.group, [0, 0])
        n_x[0] += 1
        n_x[1] += e.converted_at is not None
    return {k: (n, x) for k, (n, x) in out.items()}


def assigned_over_days(publish, n: int, **experiment) -> tuple:
    """An experiment (split, then a day's wait) and `n` customers assigned through the engine, their
    assignments then moved over the last six days, at hours that put windows across midnight, and
    five or more of them 450 days back (some of every group) (a long experiment: before the first day a series shows).
    Returns (experiment, customers, now, {customer id: assigned at})."""
    experiment = make_experiment(arms=ARMS, **experiment)
    publish(split_then_wait(experiment.key))
    reset_caches()
    customers = make_customers(n)
    events_process(event_ids=pending_events(customers))
    now = timezone.now()
    # the long-ago five: the last customers, and the last of every group (the hash picks the groups,
    # and the ids differ from run to run: without it, no control customer was long ago once in 13 runs)
    last_of_group = {}
    for a in Assignment.objects.filter(experiment=experiment).select_related("arm").order_by("customer_id"):
        last_of_group[a.group] = a.customer_id
    long_ago = set(last_of_group.values()) | {c.pk for c in customers[-5:]}
    at = {}
    for i, customer in enumerate(customers):
        when = now - timedelta(days=i % 6, hours=(i * 7) % 24, minutes=i)
        if customer.pk in long_ago:
            when = now - timedelta(days=450 + i % 3)
        at[customer.pk] = when
        Assignment.objects.filter(customer=customer).update(assigned_at=when)
    return experiment, customers, now, at


def test_counts_and_daily_series_are_those_of_the_exposures_with_a_goal_event(publish):
    experiment, customers, now, at = assigned_over_days(publish, 80, key="goal", goal_event="Buy",
                                                        window_s=2 * 86400, holdout_share=0.2)
    for i, c in enumerate(customers):
        assigned = at[c.pk]
        goals = {0: [timedelta(hours=20)],  # across midnight for most of them
                 1: [timedelta(hours=3), timedelta(hours=30)],  # a second goal event: the first counts
                 2: [timedelta(days=2, hours=1)],  # after the window
                 3: [-timedelta(hours=1)],  # before the assignment
                 4: []}[i % 5]
        for n, offset in enumerate(goals):
            make_goal_events([c], name="Buy", at=assigned + offset, prefix=f"g{n}")
        if i % 7 == 0:
            make_goal_events([c], name="Other", at=assigned + timedelta(hours=1), prefix="other")
    make_goal_events([customers[6]], name="Buy", at=now + timedelta(hours=1), prefix="future")  # after `now`
    # on the bounds (in the window both): at the assignment (the trigger was the goal), at the window's end
    make_goal_events([customers[4]], name="Buy", at=at[customers[4].pk], prefix="at")
    make_goal_events([customers[9]], name="Buy", at=at[customers[9].pk] + timedelta(days=2), prefix="end")
    make_goal_events([customers[14]], name="Buy", at=at[customers[14].pk] + timedelta(days=2, microseconds=1),
                     prefix="past-end")
    make_goal_events([customers[19]], name="Buy", at=now, prefix="now")
    Customer.objects.filter(pk=customers[11].pk).update(merged_into=customers[12])  # merged away: left out

    with timezone.override("Pacific/Kiritimati"):  # UTC+14: days are UTC days whatever the local zone
        analysis = experiment_analyze(experiment=experiment, now=now)

    assert totals(analysis) == reference_totals(experiment, now)
    assert series_of(analysis) == reference_series(experiment, now)
    assert set(analysis.series) == {"control", "b", "holdout"}
    assert sum(x for _, x in totals(analysis).values()) > 20
    converted = {e.customer_id for e in exposures_list(experiment=experiment, now=now) if e.converted_at}
    assert {customers[i].pk for i in (4, 9, 19)} <= converted and customers[14].pk not in converted
    assert len(analysis.series["control"]) == MAX_DAYS  # the long experiment's latest days
    assert analysis.series["control"][0]["n"] > 0  # ... counting the assignments before them


def test_counts_and_daily_series_are_those_of_the_exposures_by_converted_runs(publish):
    experiment, _, now, at = assigned_over_days(publish, 40, key="runs", window_s=86400)
    for i, run in enumerate(JourneyRun.objects.order_by("pk")):
        offset = [timedelta(hours=5), timedelta(hours=30), -timedelta(hours=1), None][i % 4]
        if offset is not None:
            JourneyRun.objects.filter(pk=run.pk).update(converted_at=at[run.customer_id] + offset)

    analysis = experiment_analyze(experiment=experiment, now=now)

    assert totals(analysis) == reference_totals(experiment, now)
    assert series_of(analysis) == reference_series(experiment, now)
    assert sum(x for _, x in totals(analysis).values()) >= 8  # 10 in the window, the newest ones after now


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row counts of SELECTs (SQLite's cursor has none)")
def test_auto_retire_reads_counts_not_a_row_per_assignment(publish):
    experiment = make_experiment(key="many", arms=ARMS, goal_event="Buy", auto_retire=True,
                                 secondary_metrics=["completion"])
    publish(split_then_wait("many"))
    reset_caches()
    customers = make_customers(300)
    events_process(event_ids=pending_events(customers))
    make_goal_events(customers[:50], name="Buy", at=timezone.now() + timedelta(minutes=1))
    with select_rows("experiments_assignment") as rows:
        experiment_auto_retire(experiment=experiment, now=timezone.now() + timedelta(minutes=2))
    assert rows and sum(rows) <= 20, rows


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the event table is partitioned on PostgreSQL only")
@pytest.mark.parametrize("received_late", [False, True])
def test_the_analysis_skips_the_partitions_of_events_received_before_the_experiment(settings, sequence_at,
                                                                                    received_late):
    """Given last month's purchases in a partition the ids have moved past, when the experiment is
    analysed, then its goal queries do not probe that partition for each customer (only its newest
    receipt is read, once a query), and count the same conversions; unless the partition also holds
    an event received lately (a replay, say), when it is probed and that event counts."""
    from experiments.services.analysis import group_counts

    experiment = make_experiment(goal_event="Buy", window_s=86400, arms=ARMS)
    now = timezone.now()
    people = make_customers(30, prefix="p")
    make_goal_events(people, name="Buy", at=now - timedelta(days=30), prefix="old")  # before the experiment
    if received_late:
        make_goal_events(people[:5], name="Buy", at=now - timedelta(minutes=30), prefix="late")
    sequence_at(settings.EVENT_API["PARTITION_IDS"] + 5)  # that partition is full: new events go to the next
    for customer in people:
        assert assignment_decide(experiment=experiment, customer=customer, now=now - timedelta(hours=2)).recorded
    make_goal_events(people[10:20], name="Buy", at=now - timedelta(hours=1), prefix="new")

    before = xact_table_stat("journeys_event_p0", "seq_scan", "idx_scan")
    counts = group_counts(experiment=experiment, now=now)
    analysis = experiment_analyze(experiment=experiment, now=now)
    read = xact_table_stat("journeys_event_p0", "seq_scan", "idx_scan") - before

    converted = {e.customer_id for e in exposures_list(experiment=experiment, now=now) if e.converted_at}
    expected = {c.pk for c in people[10:20]} | ({c.pk for c in people[:5]} if received_late else set())
    assert converted == expected
    assert sum(x for _, x in counts.values()) == len(expected)
    assert sum(g.conversions for g in analysis.groups) == len(expected)
    from journeys.models import Source

    floor_probes = 2 * Source.objects.count()  # two queries, each asks the partition's newest receipt by source
    if received_late:
        assert read > floor_probes, read  # the partition is read for its goal events, not skipped
    else:
        assert read <= floor_probes, read


def test_a_goal_sent_soon_after_a_late_trigger_counts_though_both_are_processed_together(publish):
    from experiments.services.analysis import group_counts

    experiment = make_experiment(key="late", arms=ARMS, goal_event="Order Completed", window_s=86400,
                                 now=timezone.now() - timedelta(hours=1))
    publish(split_then_wait(experiment.key))
    reset_caches()
    customers = make_customers(10, prefix="late")
    # a mobile batch, delivered 30 minutes late: the trigger, and the order 5 minutes after it
    ids = pending_events(customers)
    now = timezone.now()
    from journeys.models import Event

    Event.objects.filter(pk__in=ids).update(timestamp=now - timedelta(minutes=30))
    make_goal_events(customers, name="Order Completed", at=now - timedelta(minutes=25))

    events_process(event_ids=ids)

    assert Assignment.objects.filter(experiment=experiment).count() == 10
    assert sum(x for _, x in group_counts(experiment=experiment, now=timezone.now()).values()) == 10


def test_a_late_trigger_is_not_its_own_conversion_nor_an_entry_before_the_start(publish):
    from experiments.services.analysis import group_counts
    from journeys.models import Event

    # the goal is the trigger's own name (a repeat purchase); the experiment started 10 minutes ago
    started = timezone.now() - timedelta(minutes=10)
    experiment = make_experiment(key="repeat", arms=ARMS, goal_event="Signed Up", window_s=86400, now=started)
    publish(split_then_wait(experiment.key))
    reset_caches()
    customers = make_customers(4, prefix="rep")
    ids = pending_events(customers)
    Event.objects.filter(pk__in=ids).update(timestamp=timezone.now() - timedelta(hours=3))  # before the start

    events_process(event_ids=ids)

    assignments = Assignment.objects.filter(experiment=experiment)
    assert assignments.count() == 4 and all(a.assigned_at >= started for a in assignments)
    assert sum(x for _, x in group_counts(experiment=experiment, now=timezone.now()).values()) == 0
