"""experiment_split in the engine's batches (AssignmentBatch): a batch of entries is assigned with
a few statements, not a flush, a savepoint and five queries per customer; the decisions are the
ones assignment_decide makes one at a time (hash, sticky, holdout), and a customer another worker
assigned first keeps that arm (PostgreSQL: a real concurrent transaction)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from experiments.models import Assignment
from experiments.services.assignment import assignment_decide
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.models import JourneyRun
from tests.experiments.factories import edges, make_customers, make_experiment, steps
from tests.factories import events_process_counted, pending_events
from tests.marks import postgres_test


def split_then_wait(key: str = "welcome", arms=("control", "short"), holdout: bool = False,
                    wait: str = "1d") -> dict:
    """Signed Up -> experiment split -> a delay per arm (nothing else with side effects)."""
    items = [("split", "experiment_split", {"experiment": key})]
    items += [(f"wait_{a}", "delay", {"duration": wait}) for a in arms]
    links = [("split", a, f"wait_{a}") for a in arms]
    if holdout:
        links.append(("split", "holdout", f"wait_{arms[0]}"))
    return {"trigger_event": "Signed Up", "reentry_policy": "always", "steps": steps(*items), "edges": edges(*links)}


@pytest.mark.django_db
def test_a_batch_assigns_as_one_at_a_time_would_with_statements_that_do_not_grow_with_it(publish):
    experiment = make_experiment(holdout_share=0.2)
    publish(split_then_wait(holdout=True))
    reset_caches()
    small, large = make_customers(10, prefix="s"), make_customers(120, prefix="l")

    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    assert statements_large - statements_small <= 6, (statements_small, statements_large)
    assignments = {a.customer_id: a for a in Assignment.objects.select_related("arm")}
    assert len(assignments) == 130
    for customer in small + large:
        expected = assignment_decide(experiment=experiment, customer=customer, now=timezone.now(), dry_run=True)
        mine = assignments[customer.pk]
        assert (mine.arm.name, mine.holdout) == (expected.arm.name, expected.holdout)
        run = JourneyRun.objects.get(customer=customer)
        assert run.variables == {"experiment": experiment.pk, "experiment_arm": mine.arm.name, "holdout": mine.holdout}
        assert mine.run_id == run.pk and mine.weights and mine.bucket == expected.bucket
    assert 0 < sum(a.holdout for a in assignments.values()) < 130


@pytest.mark.django_db
def test_earlier_assignments_and_a_second_entry_in_the_same_batch_are_sticky(publish):
    from experiments.services.experiments import experiment_set_weights

    experiment = make_experiment()
    publish(split_then_wait(wait="0s"))  # runs end at once: a second entry may start a second run
    reset_caches()
    customers = make_customers(40)
    before = {c.pk: assignment_decide(experiment=experiment, customer=c, now=timezone.now()).arm.name
              for c in customers[:20]}
    experiment_set_weights(experiment=experiment, weights={"control": 0, "short": 1}, reason="all new to short")

    events_process_counted(pending_events(customers) + pending_events(customers[20:], source="again"))  # the last 20 enter twice

    arms = dict(Assignment.objects.values_list("customer_id", "arm__name"))
    assert len(arms) == 40
    assert {pk: arms[pk] for pk in before} == before             # earlier ones kept their arm
    assert {arms[c.pk] for c in customers[20:]} == {"short"}      # new ones drawn with the new weights
    for customer in customers[20:]:
        runs = JourneyRun.objects.filter(customer=customer)
        assert runs.count() == 2 and {r.variables["experiment_arm"] for r in runs} == {"short"}


@postgres_test("a concurrent transaction")
def test_a_customer_another_worker_assigned_first_keeps_that_arm(publish):
    """Another transaction holds an uncommitted assignment of the other arm for one customer of the
    batch; the batch's INSERT waits for it, meets the conflict when it commits, and the batch is
    replayed one entry at a time: that customer follows the arm recorded first, the others are
    assigned as usual, and each has one assignment."""
    experiment = make_experiment()
    publish(split_then_wait())
    reset_caches()
    customers = make_customers(12)
    target = customers[5]
    hashed = assignment_decide(experiment=experiment, customer=target, now=timezone.now(), dry_run=True).arm
    other = experiment.arms.exclude(pk=hashed.pk).get()
    ids = pending_events(customers)

    from tests.proc import database_url

    rival = psycopg.connect(database_url(connection.settings_dict))
    rival.execute(
        "INSERT INTO experiments_assignment (experiment_id, customer_id, arm_id, holdout, via, bucket, weights,"
        " scores, assigned_at) VALUES (%s, %s, %s, false, 'hash', 0.5, '{}', '{}', now())",
        [experiment.pk, target.pk, other.pk])
    threading.Thread(target=lambda: (time.sleep(1.0), rival.commit(), rival.close())).start()

    assert events_process(event_ids=ids) == 12

    arms = dict(Assignment.objects.values_list("customer_id", "arm__name"))
    assert len(arms) == 12 and arms[target.pk] == other.name
    run = JourneyRun.objects.get(customer=target)
    assert run.variables["experiment_arm"] == other.name
    assert run.executions.order_by("id").first().outcome == other.name


@pytest.mark.django_db
def test_a_personalized_split_reads_its_model_once_a_batch_not_once_a_customer(publish):
    """Given a next-best-action experiment with a trained model, when batches of 10 and of 120
    new customers enter, then both take the same statements give or take a few (the model is read
    once a batch) and the model picks the arm of those it does not leave to explore."""
    from experiments.services.nba import nba_train
    from tests.experiments.factories import make_goal_events

    experiment = make_experiment(mode="personalized", goal_event="Order Completed", exploration_share=0.1,
                                 arms=[{"name": "control", "control": True}, {"name": "short"}])
    learners = make_customers(60, prefix="t", traits={"ltv": 100})
    decisions = [assignment_decide(experiment=experiment, customer=c, now=timezone.now()) for c in learners]
    make_goal_events([d.assignment.customer for d in decisions if d.arm.name == "short"], name="Order Completed",
                     at=timezone.now() + timedelta(minutes=1))
    nba_train(experiment=experiment, features=["ltv"], now=timezone.now() + timedelta(hours=1))
    publish(split_then_wait())
    reset_caches()
    small, large = make_customers(10, prefix="s", traits={"ltv": 100}), make_customers(120, prefix="l",
                                                                                      traits={"ltv": 100})

    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    assert statements_large - statements_small <= 6, (statements_small, statements_large)
    chosen = Assignment.objects.filter(customer__in=small + large).select_related("arm")
    assert chosen.count() == 130
    by_model = [a for a in chosen if a.via == "model"]
    assert len(by_model) > 100 and {a.arm.name for a in by_model} == {"short"}
