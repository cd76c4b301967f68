"""update_profile in the engine's batches (journeys.services.profiles.ProfileBatch): a batch's
profile changes are written with one UPDATE and their `Profile Updated` events with one INSERT
(before: a flush of the batch, a savepoint and ~14 statements per visit); a counter rule still
counts every visit, also two of one customer in one batch, and a concurrent writer's change is
not lost (PostgreSQL: a real concurrent transaction)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Customer, Event
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import CustomerFactory, events_process_counted, pending_events
from tests.marks import postgres_test

COUNTER = {"orders_seen": {"rule": "coalesce(profile.orders_seen, 0) + 1"}, "welcomed": True}


@pytest.fixture
def tagging(db):
    reset_caches()
    unit = BusinessUnit.objects.create(name="Growth", slug="growth")
    version_publish(version=version_build(workflow=workflow_create(name="tagging", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up", "reentry_policy": "always",
        "steps": [{"key": "tag", "kind": "update_profile", "config": {"traits": COUNTER, "variables": {"x": 1}}}],
    }), reason="test")
    yield
    reset_caches()


def _people(n: int, prefix: str) -> list[Customer]:
    return [CustomerFactory(external_id=f"{prefix}{i}", traits={"plan": "pro"}) for i in range(n)]


@pytest.mark.django_db
def test_a_batch_writes_its_profiles_with_statements_that_do_not_grow_with_it(tagging):
    small, large = _people(5, "s"), _people(60, "l")

    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    assert statements_large - statements_small <= 6, (statements_small, statements_large)
    for customer in Customer.objects.all():
        assert customer.traits == {"plan": "pro", "orders_seen": 1, "welcomed": True}
    updates = Event.objects.filter(name="Profile Updated")
    assert updates.count() == 65
    first = updates.get(customer=small[0])
    assert first.type == "identify" and first.traits == {"orders_seen": 1, "welcomed": True}
    assert first.changes == {"orders_seen": [None, 1], "welcomed": [None, True]}
    assert first.properties == {"reason": "workflow step tag"}


@pytest.mark.django_db
def test_two_visits_of_one_customer_in_one_batch_both_count(tagging):
    ada = _people(1, "ada")[0]

    events_process_counted(pending_events([ada, ada]))

    ada.refresh_from_db()
    assert ada.traits["orders_seen"] == 2
    changes = [e.changes for e in Event.objects.filter(name="Profile Updated").order_by("id")]
    assert changes == [{"orders_seen": [None, 1], "welcomed": [None, True]}, {"orders_seen": [1, 2]}]


@postgres_test("a concurrent transaction")
def test_a_concurrent_change_to_a_profile_of_the_batch_is_not_lost(tagging):
    """Another transaction has set orders_seen = 5 and other = 'kept' on one customer and not yet
    committed: the batch waits for that row at its first profile change, reads it fresh, counts on
    from 5, and keeps the other transaction's trait."""
    from tests.proc import database_url

    people = _people(8, "c")
    target = people[3]
    ids = pending_events(people)
    rival = psycopg.connect(database_url(connection.settings_dict))
    rival.execute("""UPDATE journeys_customer SET traits = traits || '{"orders_seen": 5, "other": "kept"}'"""
                  " WHERE id = %s", [target.pk])
    threading.Thread(target=lambda: (time.sleep(1.0), rival.commit(), rival.close())).start()

    events_process_counted(ids)

    target.refresh_from_db()
    assert target.traits == {"plan": "pro", "orders_seen": 6, "welcomed": True, "other": "kept"}
    assert {c.traits["orders_seen"] for c in Customer.objects.exclude(pk=target.pk)} == {1}


@pytest.mark.django_db
def test_a_trait_set_to_null_or_to_an_object_replaces_the_old_value_as_one_at_a_time_does():
    reset_caches()
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    version_publish(version=version_build(workflow=workflow_create(name="reset", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Signed Up",
        "steps": [{"key": "reset", "kind": "update_profile",
                   "config": {"traits": {"nickname": None, "address": {"city": "Paris"}, "tier": "gold"}}}],
    }), reason="test")
    people = [CustomerFactory(external_id=f"r{i}", traits={"nickname": "Bo", "address": {"city": "Lyon", "zip": "69"}})
              for i in range(3)]

    events_process_counted(pending_events(people))

    for customer in Customer.objects.all():
        assert customer.traits == {"nickname": None, "address": {"city": "Paris"}, "tier": "gold"}
    reset_caches()
