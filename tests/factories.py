"""factory-boy factories shared by the whole suite."""

from __future__ import annotations

import contextlib

import factory
from django.contrib.auth import get_user_model

from journeys.models import Customer, Identity
from journeys.services.sources import source_create


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw")


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"cust-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.external_id}@example.com")
    timezone = "UTC"
    traits = factory.LazyFunction(dict)

    @factory.post_generation
    def identities(obj, create, extracted, **kwargs):
        if create and obj.external_id:
            Identity.objects.get_or_create(kind="user_id", value=obj.external_id, defaults={"customer": obj})


def live_workflow(*, name: str, definition: dict, unit: str = "growth"):
    """A workflow whose version built from `definition` is published (live), in business unit `unit`."""
    from journeys.models import BusinessUnit
    from journeys.services.workflows import version_build, version_publish, workflow_create

    business_unit, _ = BusinessUnit.objects.get_or_create(slug=unit, defaults={"name": unit.title()})
    workflow = workflow_create(name=name, business_unit=business_unit)
    version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")
    return workflow


def make_source(name: str = "web", **kwargs):
    """A source and its write key (keys are only known at creation)."""
    return source_create(name=name, **kwargs)


def pending_events(customers, *, name: str = "Signed Up", source: str = "batch") -> list[int]:
    """One pending track event per customer (as the API stores them), for events_process."""
    from django.utils import timezone

    from journeys.choices import EventStatus
    from journeys.models import Event

    src = make_source(source)[0]
    now = timezone.now()
    rows = Event.objects.bulk_create([
        Event(source=src, customer=c, name=name, type="track", timestamp=now, received_at=now,
              status=EventStatus.PENDING, properties={}) for c in customers])
    return [e.pk for e in rows]


def events_process_counted(ids: list[int]) -> int:
    """events_process over one batch (all of `ids` processed); returns how many statements it made."""
    from django.db import connection

    from journeys.engine.processor import events_process

    count = [0]

    def counting(execute, sql, params, many, context):
        count[0] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(counting):
        assert events_process(event_ids=ids) == len(ids)
    return count[0]


@contextlib.contextmanager
def row_held(model, pk: int):
    """Another connection holds this row (SELECT ... FOR UPDATE, as a busy worker would) for the
    duration of the block (needs a transactional test: the row must be committed)."""
    import threading

    from django.db import connection, transaction

    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            model.objects.select_for_update().get(pk=pk)
            locked.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(10), "the row could not be locked"
        yield
    finally:
        release.set()
        thread.join()


def in_a_thread(func) -> tuple:
    """Call `func` on a thread of its own (its own database connection: a second session), started
    now; returns the thread and the list that receives its answer or the exception it raised."""
    import threading

    from django.db import connections

    answers: list = []

    def run() -> None:
        try:
            answers.append(func())
        except Exception as exc:  # surfaced by the test
            answers.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def lock_waiters(count: int = 1, timeout: float = 30) -> bool:
    """PostgreSQL: at least `count` other connections wait for a lock (a race held open), within `timeout` s."""
    import time

    from django.db import connection

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()")
            if cursor.fetchone()[0] >= count:
                return True
        time.sleep(0.02)
    return False


def xact_table_stat(table: str, *counters: str) -> int:
    """PostgreSQL: the sum of these counters of `table` in pg_stat_xact_user_tables, for the current
    transaction (e.g. seq_tup_read + idx_tup_fetch: the rows a code path fetched, inside a test's
    transaction; seq_scan + idx_scan: how often it was scanned at all)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {' + '.join(f'coalesce({c}, 0)' for c in counters)} FROM pg_stat_xact_user_tables"
                       " WHERE relname = %s", [table])
        return cursor.fetchone()[0]


@contextlib.contextmanager
def select_rows(table: str):
    """PostgreSQL: the row counts of the SELECTs on `table` made inside the block (a list, filled
    as they run): what a code path reads back, e.g. to show it does not grow with the history."""
    from django.db import connection

    rows: list[int] = []

    def counted(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("SELECT") and table in sql:
            rows.append(context["cursor"].rowcount)
        return result

    with connection.execute_wrapper(counted):
        yield rows
