"""Ingest when identity resolution or the database fails: cost, blame and deadlock retries (review 26-3)."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, OperationalError
from django.utils import timezone

from journeys.models import Event, QuarantinedEvent
from journeys.services import ingest


def _counting(monkeypatch, calls):
    real_ingest = ingest.event_ingest

    def counting(**kw):
        calls["ingest"] += 1
        return real_ingest(**kw)

    monkeypatch.setattr(ingest, "event_ingest", counting)


def _failing_traits(monkeypatch, exc):
    real_traits = ingest.customer_apply_traits

    def buggy(*, imap, customer, traits, context):
        if traits.get("shape") == "bad":
            raise exc
        return real_traits(imap=imap, customer=customer, traits=traits, context=context)

    monkeypatch.setattr(ingest, "customer_apply_traits", buggy)


@pytest.mark.django_db
def test_a_batch_whose_events_all_fail_resolution_is_stored_in_at_most_two_passes(source, monkeypatch):
    # given a bug in trait handling that every identify of some shape hits
    calls = {"ingest": 0}
    _counting(monkeypatch, calls)
    _failing_traits(monkeypatch, KeyError("shape"))
    n = 60
    payloads = [{"type": "identify", "userId": f"q{i}", "messageId": f"m{i}", "traits": {"shape": "bad"}}
                for i in range(n)] + [{"type": "track", "event": "Ok", "userId": "ok", "messageId": "ok"}]
    # when it arrives in one request
    result = ingest.events_receive(source=source, payloads=payloads, received_at=timezone.now(), in_batch=True)
    # then the good event is stored, the bad ones quarantined, and the batch was not re-run per bad event:
    # one set-based pass, then one pass of one event each
    assert Event.objects.filter(name="Ok").count() == 1
    assert QuarantinedEvent.objects.count() == n
    assert [r.index for r in result.rejected] == list(range(n))
    assert calls["ingest"] == 1 + n + 1


@pytest.mark.django_db
def test_a_batch_without_failures_is_stored_in_one_pass(source, monkeypatch):
    calls = {"ingest": 0}
    _counting(monkeypatch, calls)
    payloads = [{"type": "track", "event": "Ok", "userId": f"u{i}", "messageId": f"m{i}"} for i in range(5)]
    result = ingest.events_receive(source=source, payloads=payloads, received_at=timezone.now(), in_batch=True)
    assert result.stored == 5 and calls["ingest"] == 1


@pytest.mark.django_db
def test_a_database_error_in_resolution_fails_the_request_instead_of_quarantining_a_good_event(source, monkeypatch):
    # given a server fault (a unique race) while resolving one event
    _failing_traits(monkeypatch, IntegrityError("duplicate key value violates unique constraint"))
    payloads = [{"type": "identify", "userId": "a", "messageId": "m1", "traits": {"shape": "bad"}},
                {"type": "track", "event": "Ok", "userId": "ok", "messageId": "ok"}]
    # then the request fails (5xx: the client retries), and the event is not blamed on the client
    with pytest.raises(IntegrityError):
        ingest.events_receive(source=source, payloads=payloads, received_at=timezone.now(), in_batch=True)
    assert QuarantinedEvent.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_hits_a_deadlock_is_stored_again_not_lost(source, monkeypatch):
    psycopg_errors = pytest.importorskip("psycopg.errors")
    # given the batch transaction is chosen as a deadlock victim once (as with the engine, review 26-3 #1)
    real_ingest = ingest.event_ingest
    calls = {"ingest": 0}

    def deadlocking(**kw):
        calls["ingest"] += 1
        result = real_ingest(**kw)
        if calls["ingest"] == 1:
            try:
                raise psycopg_errors.DeadlockDetected("deadlock detected")
            except psycopg_errors.DeadlockDetected as cause:
                raise OperationalError("deadlock detected") from cause
        return result

    monkeypatch.setattr(ingest, "event_ingest", deadlocking)
    payloads = [{"type": "track", "event": "Ok", "userId": f"u{i}", "messageId": f"m{i}"} for i in range(3)]
    # when it arrives
    result = ingest.events_receive(source=source, payloads=payloads, received_at=timezone.now(), in_batch=True)
    # then it is stored once, after a retry, and the client sees success
    assert result.stored == 3 and calls["ingest"] == 2
    assert Event.objects.filter(name="Ok").count() == 3
