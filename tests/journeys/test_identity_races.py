"""Identity resolution racing itself (PostgreSQL, real threads on their own connections, real commits).

A batch reads the identities it mentions, then resolves and writes; another batch for the same
people can commit in between. Each test holds the first batch right after that read until the
other one has committed (the window the QA runs hit at random with 20 threads), then lets it go
on: what it stores must be as if it had come after.
"""

from __future__ import annotations

import threading

from django.utils import timezone

from journeys.models import Customer, CustomerMerge, Event
from journeys.services.identity import IdentityMap
from journeys.services.ingest import event_ingest, events_parse
from tests.marks import on_postgres
from tests.proc import run_in_threads

pytestmark = on_postgres("two batches commit on their own connections while one waits")

PEOPLE = 30


def _store(source, payloads: list[dict]) -> None:
    event_ingest(source=source, events=events_parse(payloads=payloads, received_at=timezone.now(), in_batch=True))


def _overtaken(source, monkeypatch, slow: list[dict], fast: list[dict]) -> None:
    """Store `slow` and `fast` on two connections; `slow` reads its identities first, then waits
    until `fast` has committed before it resolves anything."""
    read, committed = threading.Event(), threading.Event()
    slow_thread: list[threading.Thread] = []
    init = IdentityMap.__init__

    def reading_then_waiting(imap, keys):
        init(imap, keys)
        if slow_thread and threading.current_thread() is slow_thread[0]:
            read.set()
            assert committed.wait(30), "the other batch did not commit"

    monkeypatch.setattr(IdentityMap, "__init__", reading_then_waiting)

    def slow_batch():
        slow_thread.append(threading.current_thread())
        _store(source, slow)

    def fast_batch():
        assert read.wait(30), "the first batch did not start"
        try:
            _store(source, fast)
        finally:
            committed.set()

    run_in_threads(slow_batch, fast_batch)


def test_events_racing_the_merge_of_their_anonymous_profile_land_on_the_survivor(source, monkeypatch):
    # given people who browsed anonymously on a device and are known by their user id
    _store(source, [{"type": "page", "anonymousId": f"a{i}", "name": "Home", "messageId": f"p{i}"}
                    for i in range(PEOPLE)])
    _store(source, [{"type": "identify", "userId": f"u{i}", "messageId": f"i{i}"} for i in range(PEOPLE)])
    anonymous = {i: Customer.objects.get(identities__value=f"a{i}").pk for i in range(PEOPLE)}

    # when the devices' next events are being stored while their sign-in merges the anonymous profiles
    device_events = [{"type": "track", "anonymousId": f"a{i}", "event": "QA Promo", "messageId": f"t{i}"}
                     for i in range(PEOPLE)]
    sign_ins = [{"type": "identify", "userId": f"u{i}", "anonymousId": f"a{i}", "messageId": f"s{i}"}
                for i in range(PEOPLE)]
    _overtaken(source, monkeypatch, slow=device_events, fast=sign_ins)

    # then every anonymous profile is merged, and no event is stored on a merged-away profile:
    # the devices' events are on the people's surviving profiles (their page and runs see them)
    assert set(Customer.objects.filter(pk__in=anonymous.values()).values_list("merged_into_id", flat=True)) - {None}
    stranded = Event.objects.filter(customer__merged_into__isnull=False).values_list("message_id", flat=True)
    assert list(stranded) == []
    for i in range(PEOPLE):
        known = Customer.objects.get(external_id=f"u{i}", merged_into__isnull=True)
        assert Event.objects.get(message_id=f"t{i}").customer_id == known.pk
        assert Customer.objects.get(pk=anonymous[i]).merged_into_id == known.pk


def test_an_identify_and_a_track_for_one_user_at_once_keep_the_identify_traits(source, monkeypatch):
    # given known users on the free plan
    _store(source, [{"type": "identify", "userId": f"u{i}", "traits": {"plan": "free"}, "messageId": f"i{i}"}
                    for i in range(PEOPLE)])

    # when analytics.js sends identify() and track() as two requests at the same moment
    tracks = [{"type": "track", "userId": f"u{i}", "event": "Viewed", "messageId": f"t{i}"} for i in range(PEOPLE)]
    identifies = [{"type": "identify", "userId": f"u{i}", "traits": {"plan": "gold", "tier": "vip"},
                   "messageId": f"g{i}"} for i in range(PEOPLE)]
    _overtaken(source, monkeypatch, slow=tracks, fast=identifies)

    # then each profile holds what the identify set (the track only moved last_seen)
    lost = [c.external_id for c in Customer.objects.filter(merged_into__isnull=True)
            if (c.traits.get("plan"), c.traits.get("tier")) != ("gold", "vip")]
    assert lost == []
    for i in range(PEOPLE):
        customer = Customer.objects.get(external_id=f"u{i}")
        assert customer.last_seen >= Event.objects.get(message_id=f"t{i}").timestamp


def test_the_same_merge_arriving_twice_at_once_is_done_and_recorded_once(source, monkeypatch):
    # given people with an anonymous profile and a known one
    _store(source, [{"type": "page", "anonymousId": f"a{i}", "name": "Home", "messageId": f"p{i}"}
                    for i in range(PEOPLE)])
    _store(source, [{"type": "identify", "userId": f"u{i}", "traits": {"plan": "free"}, "messageId": f"i{i}"}
                    for i in range(PEOPLE)])

    # when two requests each carry the sign-in that merges them (a retry, two tabs)
    first = [{"type": "identify", "userId": f"u{i}", "anonymousId": f"a{i}", "traits": {"plan": "gold"},
              "messageId": f"x{i}"} for i in range(PEOPLE)]
    second = [{"type": "identify", "userId": f"u{i}", "anonymousId": f"a{i}", "messageId": f"y{i}"}
              for i in range(PEOPLE)]
    _overtaken(source, monkeypatch, slow=second, fast=first)

    # then each anonymous profile is merged once, recorded once, and the traits of the first are kept
    merged = list(CustomerMerge.objects.values_list("merged_id", flat=True))
    assert len(merged) == PEOPLE and len(set(merged)) == PEOPLE
    assert all(c.traits.get("plan") == "gold" for c in Customer.objects.filter(merged_into__isnull=True))
    assert not Event.objects.filter(customer__merged_into__isnull=False).exists()

