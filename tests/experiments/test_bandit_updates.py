"""Bandit weights at broadcast scale: the per-arm counts come from one aggregate statement (the same
counts as the exposures the report lists); an engine batch only records assignments, and a schedule
moves the weights at most once a minute, without holding up the batches."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from django.db import connection

from experiments.models import Assignment, Experiment
from experiments.services.analysis import exposures_list, group_counts
from experiments.services.bandits import bandits_update_due
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.models import Customer, JourneyRun
from tests.experiments.factories import make_customers, make_experiment, make_goal_events, split_then_wait
from tests.factories import pending_events

pytestmark = pytest.mark.django_db


ARMS = [{"name": "control", "control": True}, {"name": "b"}]


def from_exposures(experiment, now) -> dict[str, tuple[int, int]]:
    n, x = Counter(), Counter()
    for e in exposures_list(experiment=experiment, now=now):
        n[e.group] += 1
        x[e.group] += e.converted_at is not None
    return {group: (n[group], x[group]) for group in n}


def test_group_counts_are_the_exposures_counted_with_a_goal_event(publish):
    experiment = make_experiment(key="goal", arms=ARMS, goal_event="Buy", window_s=3600, holdout_share=0.2)
    publish(split_then_wait("goal"))
    reset_caches()
    customers = make_customers(60)
    events_process(event_ids=pending_events(customers))
    now = timezone.now()
    make_goal_events(customers[0:10], name="Buy", at=now + timedelta(minutes=5), prefix="in")  # inside the window
    make_goal_events(customers[5:15], name="Buy", at=now + timedelta(minutes=10), prefix="again")  # a second one
    make_goal_events(customers[15:25], name="Buy", at=now + timedelta(hours=2), prefix="late")  # after the window
    make_goal_events(customers[25:35], name="Buy", at=now - timedelta(days=1), prefix="before")  # before assignment
    make_goal_events(customers[35:45], name="Other", at=now + timedelta(minutes=5), prefix="other")  # not the goal
    make_goal_events(customers[45:50], name="Buy", at=now + timedelta(minutes=50), prefix="future")  # after `now`
    Customer.objects.filter(pk=customers[2].pk).update(merged_into=customers[58])  # merged away: left out
    at = now + timedelta(minutes=30)

    counts = group_counts(experiment=experiment, now=at)

    assert counts == from_exposures(experiment, at)
    assert sum(x for _, x in counts.values()) == 14  # customers 0-14 but the merged-away one
    assert set(counts) == {"control", "b", "holdout"}


def test_group_counts_are_the_exposures_counted_by_converted_runs(publish):
    experiment = make_experiment(key="runs", arms=ARMS, window_s=3600)
    publish(split_then_wait("runs"))
    reset_caches()
    customers = make_customers(40)
    events_process(event_ids=pending_events(customers))
    now = timezone.now()
    runs = JourneyRun.objects.order_by("pk")
    JourneyRun.objects.filter(pk__in=[r.pk for r in runs[0:10]]).update(converted_at=now + timedelta(minutes=5))
    JourneyRun.objects.filter(pk__in=[r.pk for r in runs[10:20]]).update(converted_at=now + timedelta(hours=2))
    JourneyRun.objects.filter(pk__in=[r.pk for r in runs[20:25]]).update(converted_at=now - timedelta(days=1))

    counts = group_counts(experiment=experiment, now=now + timedelta(hours=3))

    assert counts == from_exposures(experiment, now + timedelta(hours=3))
    assert sum(x for _, x in counts.values()) == 10
    assert sum(n for n, _ in counts.values()) == Assignment.objects.count() == 40


def weights(experiment) -> dict[str, float]:
    return dict(experiment.arms.values_list("name", "weight"))


def test_batches_only_record_assignments_and_the_minute_schedule_moves_the_weights(publish, orm_broker):
    """A broadcast's batches neither lock the experiment nor count its assignments nor queue work for
    the bandit; every minute the bandits with `bandit_every` new assignments since their last update
    are updated, whatever the clocks of the batches and of the update said."""
    from django_q.models import OrmQ, Schedule

    experiment = make_experiment(key="news", arms=ARMS, mode="bandit", goal_event="Buy", bandit_every=10)
    publish(split_then_wait("news"))
    reset_caches()
    before = weights(experiment)

    events_process(event_ids=pending_events(make_customers(30, prefix="a")))

    assert Assignment.objects.count() == 30 and weights(experiment) == before  # nothing done in the batch
    assert not [q for q in OrmQ.objects.all() if "bandit" in q.task["func"]]
    schedule = Schedule.objects.get(name="experiments.bandits")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == ("experiments.tasks.bandits_due", "I", 1)

    late = timezone.now() + timedelta(minutes=5)  # a clock ahead of the engine's (another host)
    assert bandits_update_due(now=late) == 1  # never updated: due
    updated = Experiment.objects.get(pk=experiment.pk)
    assert updated.assignments_at_update == 30 and updated.weights_updated_at == late
    assert bandits_update_due(now=late + timedelta(minutes=1)) == 0  # nothing new

    # assigned by a batch whose clock reads before the update: counted all the same
    events_process(event_ids=pending_events(make_customers(200, prefix="b"), source="b"))
    assert bandits_update_due(now=late + timedelta(minutes=2)) == 1  # 200 new
    assert Experiment.objects.get(pk=experiment.pk).assignments_at_update == 230
    assert experiment.arms.get(name="b").history.filter(history_change_reason__startswith="bandit update").count() == 2

    events_process(event_ids=pending_events(make_customers(5, prefix="c"), source="c"))
    assert bandits_update_due(now=late + timedelta(minutes=3)) == 0  # 5 new: fewer than bandit_every


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks")
@pytest.mark.django_db(transaction=True)
def test_a_running_weight_update_does_not_hold_up_the_batches_that_assign(publish):
    """The update locks the experiment and its arms FOR NO KEY UPDATE: an assignment's foreign keys
    only need FOR KEY SHARE, so a batch inserting assignments goes on while the update runs."""
    import threading

    from django.db import connections, transaction

    experiment = make_experiment(key="news", arms=ARMS, mode="bandit", goal_event="Buy", bandit_every=10)
    arm = experiment.arms.get(name="b")
    customer = make_customers(1, prefix="x")[0]
    locked, release, errors = threading.Event(), threading.Event(), []

    def update_in_progress():
        try:
            with transaction.atomic():
                Experiment.objects.select_for_update(no_key=True).get(pk=experiment.pk)
                list(experiment.arms.select_for_update(no_key=True))
                locked.set()
                release.wait(10)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=update_in_progress)
    thread.start()
    try:
        assert locked.wait(10)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            Assignment.objects.create(experiment=experiment, customer=customer, arm=arm, bucket=0.5,
                                      assigned_at=timezone.now())
    finally:
        release.set()
        thread.join()
    assert not errors and Assignment.objects.filter(experiment=experiment).count() == 1
