"""Identity resolution through the tracking API."""

from __future__ import annotations

import pytest
from django.db import connection

from journeys.models import Customer, CustomerMerge, Event, Identity

pytestmark = pytest.mark.django_db


def live_customers():
    return Customer.objects.filter(merged_into__isnull=True)


def test_anonymous_events_then_identify_merge_into_one_profile(api):
    api.post("track", {"anonymousId": "anon-1", "event": "Viewed Product"})
    api.post("page", {"anonymousId": "anon-1", "name": "Pricing"})
    api.post("identify", {"userId": "u-42", "traits": {"email": "Ada@Example.com", "plan": "pro"}})
    assert live_customers().count() == 2

    response = api.post("identify", {"userId": "u-42", "anonymousId": "anon-1", "traits": {"name": "Ada"}})

    assert response.status_code == 200
    customer = live_customers().get()
    assert customer.external_id == "u-42"
    assert customer.traits == {"email": "Ada@Example.com", "plan": "pro", "name": "Ada"}
    assert customer.email == "Ada@Example.com"
    assert Event.objects.filter(customer=customer).count() == 4
    assert set(Identity.objects.filter(customer=customer).values_list("kind", "value")) == {
        ("user_id", "u-42"), ("anonymous_id", "anon-1"), ("email", "ada@example.com")}
    merge = CustomerMerge.objects.get()
    assert merge.target == customer
    assert merge.actor == "source:web"
    assert "anonymous_id:anon-1" in merge.details["identities"]
    assert merge.details["events_moved"] == 2


def test_anonymous_profile_becomes_known_when_user_id_first_appears(api):
    api.post("track", {"anonymousId": "anon-2", "event": "Signed Up"})
    api.post("identify", {"anonymousId": "anon-2", "userId": "u-2", "traits": {"plan": "free"}})

    customer = live_customers().get()
    assert customer.external_id == "u-2"
    assert customer.traits == {"plan": "free"}
    assert CustomerMerge.objects.count() == 0


def test_alias_merges_previous_id_into_user_when_the_source_allows_known_merges(api, source):
    source.allow_known_merges = True
    source.save()
    api.post("track", {"userId": "old-id", "event": "A"})
    api.post("track", {"userId": "new-id", "event": "B"})

    api.post("alias", {"previousId": "old-id", "userId": "new-id"})

    customer = live_customers().get()
    assert customer.external_id == "new-id"
    assert Event.objects.filter(customer=customer).count() == 3
    assert CustomerMerge.objects.get().reason == "alias of old-id"


def test_shared_device_does_not_merge_two_known_users(api):
    api.post("identify", {"userId": "alice", "anonymousId": "device-1"})
    api.post("identify", {"userId": "bob", "anonymousId": "device-1"})

    assert live_customers().count() == 2
    assert CustomerMerge.objects.count() == 0
    assert Event.objects.filter(user_id="bob").get().customer.external_id == "bob"


def test_merge_in_one_batch(api):
    batch = [
        {"type": "track", "anonymousId": "a9", "event": "Viewed"},
        {"type": "identify", "anonymousId": "a9", "userId": "u9", "traits": {"tier": "gold"}},
        {"type": "track", "userId": "u9", "event": "Bought"},
    ]
    api.post("batch", {"batch": batch})

    customer = live_customers().get()
    assert Event.objects.filter(customer=customer).count() == 3
    assert customer.traits == {"tier": "gold"}


def test_first_and_last_seen_follow_event_time(api):
    api.post("track", {"userId": "u", "event": "E", "timestamp": "2024-01-01T00:00:00Z"})
    api.post("track", {"userId": "u", "event": "E", "timestamp": "2024-03-01T00:00:00Z"})
    api.post("track", {"userId": "u", "event": "E", "timestamp": "2024-02-01T00:00:00Z"})
    customer = live_customers().get()
    assert customer.first_seen.month == 1 and customer.last_seen.month == 3


def test_context_timezone_fills_profile(api):
    api.post("track", {"userId": "u", "event": "E", "context": {"timezone": "Europe/Paris", "locale": "fr-FR"}})
    customer = live_customers().get()
    assert (customer.timezone, customer.locale) == ("Europe/Paris", "fr-FR")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "+05:30", "../../etc/passwd", "", 5, ["Asia/Tokyo"], {"z": 1}])
def test_a_device_timezone_nobody_knows_is_not_the_profiles_zone(api, zone):
    # (a zone sent as a trait that names none is kept as a trait only, named on the event: test_timezone_input.py)
    api.post("identify", {"userId": "u", "traits": {"timezone": "Asia/Tokyo"}})
    api.post("identify", {"userId": "u", "traits": {"plan": "pro"}, "context": {"timezone": zone}})
    customer = live_customers().get()
    assert customer.timezone == "Asia/Tokyo" and customer.traits["timezone"] == "Asia/Tokyo"


def test_events_before_a_merge_in_the_same_batch_land_on_the_survivor(api):
    api.post("identify", {"userId": "known", "traits": {"plan": "pro"}})
    batch = [
        {"type": "track", "anonymousId": "anon-x", "event": "Viewed"},
        {"type": "track", "userId": "known", "event": "Browsed"},
        {"type": "identify", "anonymousId": "anon-x", "userId": "known"},
    ]
    assert api.post("batch", {"batch": batch}).status_code == 200

    customer = live_customers().get()
    assert customer.external_id == "known"
    assert Event.objects.filter(customer=customer).count() == 4


def _ingest_at_once(source, *batches) -> None:
    """Store each batch through the ingestion service on its own connection, all at the same moment."""
    import threading

    from django.db import connections
    from django.utils import timezone

    from journeys.services.ingest import event_ingest, events_parse

    barrier, errors = threading.Barrier(len(batches)), []

    def ingest(payloads):
        try:
            events = events_parse(payloads=payloads, received_at=timezone.now(), in_batch=True)
            barrier.wait(timeout=10)
            event_ingest(source=source, events=events)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest, args=(batch,)) for batch in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


CONCURRENT = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql",
                       reason="needs PostgreSQL (concurrent writers; SQLite serialises them)"),
]


@CONCURRENT[0]
@CONCURRENT[1]
def test_two_requests_creating_the_same_new_people_at_once_leave_one_profile_each(source):
    """Two batches with overlapping brand-new people (and their emails) are stored at the same
    moment on two connections: each person ends with one profile, no profile without identity
    is left behind (the loser's profiles are deleted), and every event points at the survivor."""
    def batch(users, tag):
        return [{"type": "identify", "userId": f"p{u}", "anonymousId": f"a{u}", "messageId": f"{tag}{u}",
                 "traits": {"email": f"P{u}@example.com"}} for u in users]

    _ingest_at_once(source, batch(range(0, 200), "x"), batch(reversed(range(100, 300)), "y"))

    assert Event.objects.count() == 400
    assert live_customers().count() == 300
    assert not live_customers().filter(identities__isnull=True).exists(), "a profile was left without identity"
    owner = dict(Identity.objects.filter(kind="user_id").values_list("value", "customer_id"))
    assert len(owner) == 300
    for kind, value in (("anonymous_id", "a{}"), ("email", "p{}@example.com")):
        rows = dict(Identity.objects.filter(kind=kind).values_list("value", "customer_id"))
        assert rows == {value.format(u): owner[f"p{u}"] for u in range(300)}
    assert all(owner[user] == cid for user, cid in Event.objects.values_list("user_id", "customer_id"))


@CONCURRENT[0]
@CONCURRENT[1]
def test_two_requests_bringing_new_devices_of_the_same_known_people_do_not_deadlock(source):
    """Known people arrive from new devices (new anonymousIds) in two batches at once, in
    opposite orders: the new identities are written in key order, so neither request deadlocks
    (a deadlock would be a 503 for the client) and each device ends on its person's profile."""
    _ingest_at_once(source, [{"type": "track", "userId": f"k{u}", "event": "Seen", "messageId": f"s{u}"}
                             for u in range(150)])
    owner = dict(Identity.objects.filter(kind="user_id").values_list("value", "customer_id"))

    def batch(users, tag):
        return [{"type": "track", "userId": f"k{u}", "anonymousId": f"d{u}", "event": "Seen", "messageId": f"{tag}{u}"}
                for u in users]

    _ingest_at_once(source, batch(range(150), "x"), batch(reversed(range(150)), "y"))

    assert Event.objects.count() == 450
    assert live_customers().count() == 150
    devices = dict(Identity.objects.filter(kind="anonymous_id").values_list("value", "customer_id"))
    assert devices == {f"d{u}": owner[f"k{u}"] for u in range(150)}


@CONCURRENT[0]
@CONCURRENT[1]
@pytest.mark.parametrize("max_key_locks", [512, 2], ids=["key-locks", "gate-for-big-batches"])
def test_new_devices_written_in_two_steps_by_two_requests_do_not_deadlock(source, monkeypatch, max_key_locks):
    """A batch writes new identities in two steps: brand-new people first, then the new devices of
    known people. Request X brings anonymous visitors d* and known people on new devices e*,
    request Y the same ids with the roles swapped; both finish their first step before either
    starts the second (the barrier), which deadlocked (a 503) before the batch locked its new keys
    up front in one order (or, over the limit of key locks, the gate)."""
    import threading

    from journeys.services import bulk_ingest
    from journeys.services.identity import IdentityMap

    monkeypatch.setattr(bulk_ingest, "MAX_KEY_LOCKS", max_key_locks)

    users = range(3)
    _ingest_at_once(source, [{"type": "track", "userId": f"k{u}", "event": "Seen", "messageId": f"s{u}"}
                             for u in users])
    owner = dict(Identity.objects.filter(kind="user_id").values_list("value", "customer_id"))

    def batch(anonymous, device, tag):
        return ([{"type": "track", "anonymousId": f"{anonymous}{u}", "event": "Seen", "messageId": f"{tag}a{u}"}
                 for u in users]
                + [{"type": "track", "userId": f"k{u}", "anonymousId": f"{device}{u}", "event": "Seen",
                    "messageId": f"{tag}k{u}"} for u in users])

    both_precreated = threading.Barrier(2)
    flush = IdentityMap.claims_flush

    def flush_when_both_precreated(imap):
        try:
            both_precreated.wait(timeout=3)
        except threading.BrokenBarrierError:
            pass  # the other request waits for this one's keys: it cannot reach the barrier
        return flush(imap)

    monkeypatch.setattr(IdentityMap, "claims_flush", flush_when_both_precreated)

    _ingest_at_once(source, batch("d", "e", "x"), batch("e", "d", "y"))

    assert Event.objects.count() == 15
    # Whichever ran first, the other folded its anonymous visitors into the known people.
    devices = dict(Identity.objects.filter(kind="anonymous_id").values_list("value", "customer_id"))
    assert devices == {f"{p}{u}": owner[f"k{u}"] for p in "de" for u in users}
    assert live_customers().count() == 3


def test_a_phone_written_with_spaces_is_stored_and_matched_as_one_number(api):
    # when a user is identified with a phone number written with spaces, dashes and parentheses
    api.post("identify", {"userId": "u-7", "traits": {"phone": "+1 (555) 777-0001"}})
    # and again with it written another way
    api.post("identify", {"userId": "u-7", "traits": {"phone": "+1.555.777.0001"}})

    # then the profile and its identity hold the number without separators; the trait keeps what was sent
    customer = live_customers().get()
    assert customer.phone == "+15557770001" and customer.traits["phone"] == "+1.555.777.0001"
    assert list(Identity.objects.filter(kind="phone").values_list("value", "customer")) == [
        ("+15557770001", customer.pk)]


def test_a_trunk_zero_written_after_the_country_code_is_not_part_of_the_number(api):
    # when a user is identified with a UK number written with its national trunk prefix
    api.post("identify", {"userId": "u-8", "traits": {"phone": "+44 (0)20 7946 0010"}})

    # then the number is stored as a carrier sends it (E.164), which finds the same profile
    customer = live_customers().get()
    assert customer.phone == "+442079460010"
    assert list(Identity.objects.filter(kind="phone").values_list("value", flat=True)) == ["+442079460010"]


def test_a_phone_or_locale_too_long_for_the_profile_is_kept_as_a_trait_only(api):
    # when a user is identified with a "phone" of 100 digits and a locale of 40 characters
    response = api.post("identify", {"userId": "u-9", "traits": {"phone": "1" * 100, "locale": "x" * 40},
                                     "context": {"locale": "y" * 40}})

    # then the event is stored (not a storage error to retry forever) and the profile's columns
    # stay empty rather than holding a number or locale cut short; the traits keep what was sent
    assert response.status_code == 200
    customer = live_customers().get()
    assert (customer.phone, customer.locale) == ("", "")
    assert customer.traits == {"phone": "1" * 100, "locale": "x" * 40}
    assert not Identity.objects.filter(kind="phone").exists()
