"""Events do not grow without end: retention per source in bounded batches, dedup keys with a
window, and (PostgreSQL) id-range partitions created ahead and dropped whole."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from journeys.models import BusinessUnit, Event, EventKey, JourneyRun, Source, TriggerWatch
from journeys.services.bulk_ingest import event_id_sequence
from journeys.services.event_storage import (
    event_keys_purge,
    events_housekeeping,
    events_partitions_drop,
    events_partitions_ensure,
    events_retention_run,
)
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import CustomerFactory, make_source

pytestmark = pytest.mark.django_db


def track(mid: str, **extra) -> dict:
    return {"userId": "u1", "event": "Order Completed", "messageId": mid, **extra}


def age(days: int, **filters) -> None:
    """Make matching events (and their keys) as old as `days` days."""
    at = timezone.now() - timedelta(days=days)
    ids = list(Event.objects.filter(**filters).values_list("pk", flat=True))
    Event.objects.filter(pk__in=ids).update(received_at=at, timestamp=at)
    EventKey.objects.filter(event_id__in=ids).update(received_at=at)


@pytest.fixture
def version(db):
    unit = BusinessUnit.objects.create(name="R", slug="r")
    workflow = workflow_create(name="retained", business_unit=unit)
    definition = {"trigger_event": "Order Completed", "steps": [{"key": "s", "kind": "goal", "config": {}}], "edges": []}
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def test_retention_deletes_only_what_is_past_its_sources_window_in_bounded_batches(api, source, version):
    # Given a source keeping 30 days, five of its events 40 days old and one new; another source keeps all
    source.retention_days = 30
    source.save()
    _forever, other_key = make_source("warehouse")
    for n in range(5):
        api.post("track", track(f"old-{n}"))
    api.post("track", track("new"))
    api.post("track", track("other-old"), key=other_key)
    age(40, message_id__startswith="old-")
    age(400, message_id="other-old")
    old = Event.objects.get(message_id="old-0")
    run = JourneyRun.objects.create(workflow=version.workflow, version=version, customer=old.customer,
                                    trigger_key="t", trigger_event=old)
    TriggerWatch.objects.create(version=version, customer=old.customer, start_event=old, due_at=timezone.now())

    # When retention runs two events at a time
    deleted = events_retention_run(batch=2)

    # Then the five old events are gone, the rest stays, and what pointed at them followed its relation
    assert deleted == 5
    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["new", "other-old"]
    run.refresh_from_db()
    assert run.trigger_event_id is None  # SET_NULL: the run and its history stay
    assert not TriggerWatch.objects.exists()  # CASCADE: an open window of a deleted event goes too


def test_a_resent_message_id_is_stored_once_within_the_dedup_window_only(api, settings):
    assert api.post("track", track("again")).status_code == 200
    assert api.post("track", track("again")).status_code == 200
    assert Event.objects.count() == 1

    age(settings.EVENT_API["DEDUP_DAYS"] + 1, message_id="again")
    assert event_keys_purge() == 1
    api.post("track", track("again"))  # a client resending a month later: stored again, as documented

    assert Event.objects.count() == 2


def test_the_products_own_events_keep_their_keys_as_long_as_the_events(db, settings):
    from journeys.services.internal_events import event_record_internal

    customer = CustomerFactory()
    first = event_record_internal(customer=customer, name="Email Opened", message_id="open:7")
    age(settings.EVENT_API["DEDUP_DAYS"] + 5, pk=first.pk)
    event_keys_purge()

    again = event_record_internal(customer=customer, name="Email Opened", message_id="open:7")

    assert again.pk == first.pk and Event.objects.count() == 1


def test_retention_of_the_products_own_events_takes_their_keys_along(db):
    from journeys.services.internal_events import event_record_internal, internal_source

    customer = CustomerFactory()
    old = event_record_internal(customer=customer, name="Email Opened", message_id="open:1")
    kept = event_record_internal(customer=customer, name="Email Opened", message_id="open:2")
    age(40, pk=old.pk)
    Source.objects.filter(pk=internal_source().pk).update(retention_days=30)

    assert events_retention_run() == 1

    assert list(EventKey.objects.values_list("message_id", flat=True)) == ["open:2"]
    again = event_record_internal(customer=customer, name="Email Opened", message_id="open:1")
    assert again.pk not in (old.pk, kept.pk) and Event.objects.count() == 2


def test_housekeeping_runs_as_a_scheduled_task(api, source):
    from django_q.models import Schedule

    from journeys import tasks

    assert Schedule.objects.filter(func="journeys.tasks.events_housekeeping").exists()
    source.retention_days = 1
    source.save()
    api.post("track", track("stale"))
    age(2)

    result = tasks.events_housekeeping()

    assert result["events_deleted"] == 1 and Event.objects.count() == 0


# -- PostgreSQL: partitions ------------------------------------------------------------------------

def pg_only(test):
    return pytest.mark.postgres(
        pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's")(test))


def _partition_of(event_id: int) -> str:
    with connection.cursor() as cur:
        cur.execute("SELECT tableoid::regclass::text FROM journeys_event WHERE id = %s", [event_id])
        return cur.fetchone()[0]


def _partitions() -> list[str]:
    with connection.cursor() as cur:
        cur.execute("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'journeys_event'::regclass")
        return sorted(r[0] for r in cur.fetchall())


@pytest.fixture
def sequence_at():
    """Move the event id sequence (not transactional, so it is put back after the test)."""
    with connection.cursor() as cur:
        cur.execute(f"SELECT last_value, is_called FROM {event_id_sequence()}")
        saved = cur.fetchone()

    def move(value: int) -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT setval(%s, %s)", [event_id_sequence(), value])

    yield move
    with connection.cursor() as cur:
        cur.execute("SELECT setval(%s, %s, %s)", [event_id_sequence(), saved[0], saved[1]])


@pg_only
def test_events_are_partitioned_by_id_and_partitions_are_made_ahead(api, settings, sequence_at):
    size = settings.EVENT_API["PARTITION_IDS"]
    api.post("track", track("first"))
    assert _partition_of(Event.objects.get().pk) == "journeys_event_p0"
    assert "journeys_event_p2" in _partitions() and "journeys_event_default" in _partitions()

    # When the ids reach the second-to-last partition, housekeeping adds the next ones
    sequence_at(2 * size + 10)
    made = events_partitions_ensure()

    assert made == ["journeys_event_p3", "journeys_event_p4"]
    api.post("track", track("later"))
    assert _partition_of(Event.objects.get(message_id="later").pk) == "journeys_event_p2"


@pg_only
def test_a_partition_past_every_retention_is_dropped_whole(api, source, version, settings, sequence_at):
    size = settings.EVENT_API["PARTITION_IDS"]
    Source.objects.update(retention_days=30)
    api.post("track", track("ancient"))
    old = Event.objects.get()
    run = JourneyRun.objects.create(workflow=version.workflow, version=version, customer=old.customer,
                                    trigger_key="t", trigger_event=old)
    from journeys.services.internal_events import event_record_internal

    event_record_internal(customer=old.customer, name="Email Opened", message_id="open:1")  # its key lives with it
    Source.objects.update(retention_days=30)
    age(60)
    sequence_at(size + 5)  # p0 is full: the ids moved on to p1
    api.post("track", track("recent"))

    assert events_partitions_drop() == ["journeys_event_p0"]

    assert list(Event.objects.values_list("message_id", flat=True)) == ["recent"]
    assert not EventKey.objects.filter(message_id="open:1").exists()  # the product's own key went with its event
    run.refresh_from_db()
    assert run.trigger_event_id is None
    assert "journeys_event_p0" not in _partitions()


@pg_only
def test_a_partition_is_kept_while_any_source_keeps_its_events(api, source, settings, sequence_at):
    api.post("track", track("kept"))  # the source keeps forever (no retention)
    age(3650)
    sequence_at(settings.EVENT_API["PARTITION_IDS"] + 5)

    assert events_partitions_drop() == []
    assert events_housekeeping()["events_deleted"] == 0
    assert Event.objects.count() == 1


# -- q2's record of finished tasks ---------------------------------------------------------------

def test_housekeeping_keeps_the_newest_successful_task_results_and_every_failure(settings):
    """Q_CLUSTER save_limit 0: a finished task is saved without q2's per-task pruning (which locks
    every kept row); the housekeeping schedule trims successes to Q_SUCCESS_KEEP, newest first."""
    from django_q.models import Failure, Success
    from django_q.tasks import async_task

    for n in range(8):
        async_task("math.floor", n + 0.5)        # sync in tests: worker and monitor run inline
    now = timezone.now()                        # a failure, as a worker's monitor saves it
    Failure.objects.create(id="f1", name="f1", func="math.sqrt", started=now, stopped=now, success=False)
    assert Success.objects.count() == 8 and Failure.objects.count() == 1  # nothing pruned per task
    newest = list(Success.objects.order_by("-stopped", "-pk").values_list("pk", flat=True)[:3])

    settings.Q_SUCCESS_KEEP = 3
    assert events_housekeeping()["task_results_pruned"] == 5

    assert sorted(Success.objects.values_list("pk", flat=True)) == sorted(newest)
    assert set(Success.objects.values_list("result", flat=True)) <= {4, 5, 6, 7}  # the last ones run
    assert Failure.objects.count() == 1
    assert events_housekeeping()["task_results_pruned"] == 0
