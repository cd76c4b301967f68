"""Bandit weights at broadcast scale: the per-arm counts come from one aggregate statement (the same
counts as the exposures the report lists), and an engine batch that records assignments only queues
the weight update (a task that decides again under the experiment's lock), at most once a minute,
instead of locking the experiment and reading every assignment inside the batch."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from experiments.models import Assignment, Experiment
from experiments.services.analysis import exposures_list, group_counts
from experiments.tasks import bandit_update
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.models import Customer, JourneyRun
from tests.experiments.factories import edges, make_customers, make_experiment, make_goal_events, steps
from tests.factories import pending_events

pytestmark = pytest.mark.django_db


def split_then_wait(key: str) -> dict:
    return {
        "trigger_event": "Signed Up",
        "reentry_policy": "always",
        "steps": steps(("split", "experiment_split", {"experiment": key}),
                       ("wait_a", "delay", {"duration": "1d"}), ("wait_b", "delay", {"duration": "1d"})),
        "edges": edges(("split", "control", "wait_a"), ("split", "b", "wait_b")),
    }


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


def queued_updates() -> list[tuple]:
    return [task["args"] for task in (q.task for q in OrmQ.objects.all())
            if task["func"] == "experiments.tasks.bandit_update"]


def weights(experiment) -> dict[str, float]:
    return dict(experiment.arms.values_list("name", "weight"))


def test_an_engine_batch_queues_the_bandit_update_instead_of_doing_it(publish, orm_broker):
    experiment = make_experiment(key="news", arms=ARMS, mode="bandit", goal_event="Buy", bandit_every=10)
    publish(split_then_wait("news"))
    reset_caches()
    before = weights(experiment)

    events_process(event_ids=pending_events(make_customers(30, prefix="a")))

    assert Assignment.objects.count() == 30
    assert weights(experiment) == before  # nothing done in the batch
    (args,) = queued_updates()
    assert args[0] == experiment.pk

    assert bandit_update(*args) == 2  # the task: new weights for both arms
    assert bandit_update(*args) == 0  # queued twice: the second finds the update done
    experiment.refresh_from_db()
    assert experiment.assignments_at_update == 30 and experiment.weights_updated_at is not None
    assert experiment.arms.get(name="b").history.filter(history_change_reason__startswith="bandit update").count() == 1

    OrmQ.objects.all().delete()
    events_process(event_ids=pending_events(make_customers(30, prefix="b"), source="b"))
    assert queued_updates() == []  # 30 more within the minute: the weights moved less than a minute ago

    Experiment.objects.filter(pk=experiment.pk).update(
        weights_updated_at=experiment.weights_updated_at - timedelta(minutes=2))
    events_process(event_ids=pending_events(make_customers(5, prefix="c"), source="c"))
    assert len(queued_updates()) == 1  # a minute later: 35 new since the last update
    assert bandit_update(*queued_updates()[0]) == 2
    assert Experiment.objects.get(pk=experiment.pk).assignments_at_update == 65
