"""set_stage in the engine's batches (journeys.services.lifecycle.StageBatch): a batch's stage
moves are written with one UPDATE per stage, their transitions and their `Stage Left`/`Stage
Entered` events with one INSERT each (before: a flush of the batch, a savepoint and ~10
statements per visit); two moves of one customer in one batch chain; a stage a rule gives in
the same batch builds on the step's move; a concurrent writer's stage is the one moved from
(PostgreSQL: a real concurrent transaction)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Customer, Event, LifecycleStage, StageTransition
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import CustomerFactory, events_process_counted, pending_events
from tests.marks import postgres_test


def _publish(name: str, steps: list[dict]) -> None:
    unit, _ = BusinessUnit.objects.get_or_create(slug="growth", defaults={"name": "Growth"})
    version_publish(version=version_build(workflow=workflow_create(name=name, business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up", "reentry_policy": "always",
        "steps": steps,
        "edges": [{"from": a["key"], "outcome": "next", "to": b["key"]} for a, b in zip(steps, steps[1:])],
    }), reason="test")


@pytest.fixture
def stages(db):
    reset_caches()
    LifecycleStage.objects.create(key="trial", name="Trial", order=1)
    LifecycleStage.objects.create(key="paid", name="Paid", order=2)
    yield
    reset_caches()


def _people(n: int, prefix: str, stage: str = "") -> list[Customer]:
    return [CustomerFactory(external_id=f"{prefix}{i}", stage=stage) for i in range(n)]


@pytest.mark.django_db
def test_a_batch_moves_its_customers_with_statements_that_do_not_grow_with_it(stages):
    _publish("onboard", [{"key": "trial", "kind": "set_stage", "config": {"stage": "trial"}}])
    small, large = _people(5, "s"), _people(60, "l", stage="paid")

    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    assert statements_large - statements_small <= 6, (statements_small, statements_large)
    assert set(Customer.objects.values_list("stage", flat=True)) == {"trial"}
    assert StageTransition.objects.count() == 65
    first = StageTransition.objects.get(customer=small[0])
    assert (first.from_stage, first.to_stage, first.reason) == ("", "trial", "workflow step trial")
    entered = Event.objects.get(name="Stage Entered", customer=small[0])
    assert entered.properties == {"stage": "trial", "from": ""} and entered.message_id == f"stage-entered:{first.pk}"
    assert not Event.objects.filter(name="Stage Left", customer=small[0]).exists()  # there was no stage to leave
    left = Event.objects.get(name="Stage Left", customer=large[0])
    moved = StageTransition.objects.get(customer=large[0])
    assert left.properties == {"stage": "paid", "to": "trial"} and left.message_id == f"stage-left:{moved.pk}"
    assert Event.objects.filter(name__in=["Stage Left", "Stage Entered"]).count() == 5 + 2 * 60


@pytest.mark.django_db
def test_two_moves_of_one_customer_in_one_batch_chain_and_a_repeat_records_nothing(stages):
    _publish("upgrade", [{"key": "try", "kind": "set_stage", "config": {"stage": "trial"}},
                         {"key": "buy", "kind": "set_stage", "config": {"stage": "paid"}}])
    ada = _people(1, "ada")[0]

    events_process_counted(pending_events([ada, ada]))  # the second visit finds ada paid: trial, then paid again

    ada.refresh_from_db()
    assert ada.stage == "paid"
    moves = list(StageTransition.objects.order_by("id").values_list("from_stage", "to_stage"))
    assert moves == [("", "trial"), ("trial", "paid"), ("paid", "trial"), ("trial", "paid")]
    assert [e.properties for e in Event.objects.filter(name="Stage Left").order_by("id")] == [
        {"stage": "trial", "to": "paid"}, {"stage": "paid", "to": "trial"}, {"stage": "trial", "to": "paid"}]


@pytest.mark.django_db
def test_a_rule_stage_given_in_the_same_batch_moves_from_the_stage_the_step_set(stages):
    """After the step moved the customer (recorded with the batch), the event's rule-stage
    evaluation sees a stage a step owns and leaves it alone, as when written at once."""
    LifecycleStage.objects.create(key="active", name="Active", order=0, rule="profile.plan == 'pro'")
    _publish("onboard", [{"key": "trial", "kind": "set_stage", "config": {"stage": "trial"}}])
    people = [CustomerFactory(external_id=f"r{i}", traits={"plan": "pro"}) for i in range(3)]

    events_process_counted(pending_events(people))

    assert set(Customer.objects.values_list("stage", flat=True)) == {"trial"}
    assert set(StageTransition.objects.values_list("to_stage", flat=True)) == {"trial"}


@postgres_test("a concurrent transaction")
def test_a_concurrent_stage_change_is_waited_for_and_is_the_stage_moved_from(stages):
    """Another transaction has moved one customer to `paid` and not yet committed: the batch
    waits for that row at its first move, reads it fresh, and records paid -> trial."""
    from tests.proc import database_url

    _publish("onboard", [{"key": "trial", "kind": "set_stage", "config": {"stage": "trial"}}])
    people = _people(8, "c")
    target = people[3]
    ids = pending_events(people)
    rival = psycopg.connect(database_url(connection.settings_dict))
    rival.execute("UPDATE journeys_customer SET stage = 'paid' WHERE id = %s", [target.pk])
    threading.Thread(target=lambda: (time.sleep(1.0), rival.commit(), rival.close())).start()

    events_process_counted(ids)

    target.refresh_from_db()
    assert target.stage == "trial"
    assert StageTransition.objects.get(customer=target).from_stage == "paid"
    assert set(StageTransition.objects.exclude(customer=target).values_list("from_stage", flat=True)) == {""}
