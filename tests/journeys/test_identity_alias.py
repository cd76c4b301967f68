"""Aliases never merge two known users unless the source says so (issue #15 item 6); every
refusal is recorded where ops see it (admin list, Customer 360)."""

from __future__ import annotations

import json

import pytest

from journeys.models import Customer, CustomerMerge, Event, MergeRefusal

pytestmark = pytest.mark.django_db


def profile(user_id):
    return Customer.objects.get(external_id=user_id, merged_into__isnull=True)


def test_an_alias_through_a_known_users_anonymous_id_merges_nobody(api, admin_client):
    # given dave, known on device "a" with his email and events
    api.post("identify", {"userId": "dave", "anonymousId": "a", "traits": {"email": "dave@example.com"}})
    api.post("track", {"userId": "dave", "event": "Order Completed"})

    # when another write key holder aliases erin to dave's device
    response = api.post("alias", {"userId": "erin", "previousId": "a", "messageId": "m-alias"})

    # then it is accepted but nothing moves: dave keeps his profile, email and events
    assert response.status_code == 200
    dave, erin = profile("dave"), profile("erin")
    assert CustomerMerge.objects.count() == 0
    assert dave.email == "dave@example.com" and Event.objects.filter(customer=dave).count() == 2
    assert Event.objects.get(message_id="m-alias").customer == erin
    # and the refusal is recorded for ops
    refusal = MergeRefusal.objects.get()
    assert (refusal.customer, refusal.other, refusal.previous_id, refusal.message_id) == (erin, dave, "a", "m-alias")
    assert "never merges two known users" in refusal.reason
    listing = admin_client.get("/admin/journeys/mergerefusal/").content.decode()
    assert "never merges two known users" in listing
    c360 = admin_client.get(f"/admin/journeys/customer/{dave.pk}/change/").content.decode()
    assert "Merge refusals" in c360 and "never merges two known users" in c360


def test_a_known_to_known_alias_needs_the_sources_setting(api, source):
    api.post("identify", {"userId": "dave", "traits": {"email": "dave@example.com"}})
    api.post("identify", {"userId": "erin"})

    api.post("alias", {"userId": "erin", "previousId": "dave"})
    assert CustomerMerge.objects.count() == 0 and profile("dave").email == "dave@example.com"
    assert "does not allow known-to-known merges" in MergeRefusal.objects.get().reason

    source.allow_known_merges = True
    source.save()
    api.post("alias", {"userId": "erin", "previousId": "dave"})
    assert CustomerMerge.objects.get().merged.external_id == "dave"
    assert profile("erin").email == "dave@example.com"


def test_even_with_the_setting_an_anonymous_id_of_a_known_user_merges_nobody(api, source):
    source.allow_known_merges = True
    source.save()
    api.post("identify", {"userId": "dave", "anonymousId": "a"})
    api.post("alias", {"userId": "erin", "previousId": "a"})
    assert CustomerMerge.objects.count() == 0 and MergeRefusal.objects.count() == 1


def test_an_alias_of_an_anonymous_visitor_still_merges(api):
    api.post("track", {"anonymousId": "visitor-1", "event": "Viewed"})
    api.post("alias", {"userId": "erin", "previousId": "visitor-1"})
    assert CustomerMerge.objects.get().reason == "alias of visitor-1"
    assert MergeRefusal.objects.count() == 0


def test_an_alias_that_arrives_first_still_links_the_device_events_sent_after_it(api):
    # given a sign-in's alias reaching the server before the device's queued anonymous events
    api.post("alias", {"previousId": "device-9", "userId": "frank"})

    # when those events arrive, alone and beside another event in a batch
    api.post("track", {"anonymousId": "device-9", "event": "Cart Viewed"})
    api.post("batch", {"batch": [{"type": "track", "anonymousId": "device-9", "event": "Checkout Started"}]})

    # then they are frank's: one profile, no anonymous orphan
    frank = profile("frank")
    assert set(Event.objects.filter(customer=frank).values_list("name", flat=True)) >= {"Cart Viewed",
                                                                                       "Checkout Started"}
    assert Customer.objects.filter(merged_into__isnull=True).count() == 1


def test_an_alias_from_a_known_user_to_a_new_user_id_renames_them(api):
    # given dave, known with his email, a device and events
    api.post("identify", {"userId": "dave", "anonymousId": "a", "traits": {"email": "dave@example.com"}})
    api.post("track", {"userId": "dave", "event": "Order Completed"})

    # when he changes his id (RudderStack's JS sends the device's anonymousId with the alias)
    response = api.post("alias", {"userId": "dave-2", "previousId": "dave", "anonymousId": "a", "messageId": "m-a"})

    # then no empty profile is made and nothing is refused: dave-2 is dave
    assert response.json() == {"success": True}
    assert MergeRefusal.objects.count() == 0 and CustomerMerge.objects.count() == 0
    dave = Customer.objects.get()
    assert (dave.external_id, dave.email) == ("dave-2", "dave@example.com")
    assert Event.objects.get(message_id="m-a").customer == dave
    # and his later events, under either id, reach his history
    api.post("track", {"userId": "dave-2", "event": "Checkout Started"})
    api.post("track", {"userId": "dave", "event": "Late Event"})
    assert Customer.objects.count() == 1 and Event.objects.filter(customer=dave).count() == 5


def test_an_alias_to_a_new_user_id_in_a_batch_takes_the_events_after_it(api):
    api.post("identify", {"userId": "erin", "traits": {"email": "erin@example.com", "plan": "pro"}})

    batch = [
        {"type": "alias", "userId": "erin-2", "previousId": "erin"},
        {"type": "track", "userId": "erin-2", "event": "Checkout Started"},
        {"type": "identify", "userId": "erin-2", "traits": {"plan": "team"}},
    ]
    assert api.post("batch", {"batch": batch}).json() == {"success": True}

    erin = Customer.objects.get()
    assert erin.external_id == "erin-2" and erin.traits == {"email": "erin@example.com", "plan": "team"}
    assert Event.objects.filter(customer=erin).count() == 4
    assert MergeRefusal.objects.count() == 0


def test_an_alias_of_one_known_user_into_another_existing_one_is_still_refused_in_a_batch(api):
    api.post("identify", {"userId": "dave", "traits": {"email": "dave@example.com"}})
    batch = [
        {"type": "identify", "userId": "erin"},
        {"type": "alias", "userId": "erin", "previousId": "dave"},
        {"type": "track", "userId": "erin", "event": "Viewed"},
    ]
    assert api.post("batch", {"batch": batch}).status_code == 200

    assert CustomerMerge.objects.count() == 0 and profile("dave").email == "dave@example.com"
    assert "does not allow known-to-known merges" in MergeRefusal.objects.get().reason
    assert Event.objects.filter(customer=profile("erin")).count() == 3


def _ajs_alias(user_id: str, anonymous_id: str, message_id: str) -> dict:
    """An alias as analytics.js (and analytics-kotlin/swift) send it: previousId defaults to the
    browser's own anonymousId."""
    return {"type": "alias", "userId": user_id, "anonymousId": anonymous_id, "previousId": anonymous_id,
            "messageId": message_id, "context": {"library": {"name": "analytics.js", "version": "next-1.70.0"}}}


@pytest.mark.parametrize("path", ["alias", "a", "batch", "beacon"])
def test_an_analytics_js_alias_of_a_browsed_anonymous_device_merges_it_once(api, client, write_key, path):
    # given a known user and a browser that browsed anonymously before signing in
    api.post("identify", {"userId": "u-ajs", "traits": {"plan": "gold"}})
    api.post("page", {"anonymousId": "A-ajs", "name": "Home", "messageId": "p-1"})
    anonymous = Customer.objects.get(identities__value="A-ajs")

    # when the site calls analytics.alias("u-ajs") (anonymousId == previousId), alone or in a batch
    alias = _ajs_alias("u-ajs", "A-ajs", "m-ajs-alias")
    orders = [{"type": "track", "userId": f"buyer-{i}", "event": "Order Completed", "messageId": f"o-{i}"}
              for i in range(50)]
    if path in ("alias", "a"):
        response = api.post(path, alias)
    elif path == "batch":
        response = api.post("batch", {"batch": [*orders[:25], alias, *orders[25:]]})
    else:
        response = client.post(f"/beacon/v1/batch?writeKey={write_key}", content_type="text/plain;charset=UTF-8",
                               data=json.dumps({"batch": [*orders[:25], alias, *orders[25:]]}))

    # then it is accepted, the anonymous profile is merged into the known one once, nothing is lost
    assert response.status_code == 200, response.content
    known = profile("u-ajs")
    assert Customer.objects.get(pk=anonymous.pk).merged_into_id == known.pk
    assert list(CustomerMerge.objects.values_list("merged_id", "target_id")) == [(anonymous.pk, known.pk)]
    assert set(Event.objects.filter(message_id__in=["p-1", "m-ajs-alias"]).values_list("customer_id", flat=True)) == {
        known.pk}
    assert known.traits["plan"] == "gold"
    if path in ("batch", "beacon"):
        assert Event.objects.filter(name="Order Completed").count() == 50
        assert response.json().get("rejected", []) == []


def test_an_event_whose_identity_resolution_fails_is_quarantined_and_its_batch_stored(api, monkeypatch):
    """Whatever goes wrong resolving one event's ids (a case nobody foresaw), that event is set aside
    with the field, and the other events of its request are stored: the batch is not lost."""
    from journeys.models import QuarantinedEvent
    from journeys.services import ingest

    resolve = ingest.customer_resolve

    def failing_for_one_user(**kwargs):
        if kwargs["user_id"] == "broken":
            raise ValueError("an unforeseen case")
        return resolve(**kwargs)

    monkeypatch.setattr(ingest, "customer_resolve", failing_for_one_user)
    orders = [{"type": "track", "userId": f"buyer-{i}", "event": "Order Completed", "messageId": f"o-{i}"}
              for i in range(50)]
    bad = {"type": "alias", "userId": "broken", "previousId": "x", "messageId": "m-bad"}

    # when a batch carries 50 good events and the one that fails
    response = api.post("batch", {"batch": [*orders[:10], bad, *orders[10:]]})

    # then the 50 are stored and the bad one is quarantined, naming its field
    assert response.status_code == 200, response.content
    assert Event.objects.filter(name="Order Completed").count() == 50
    assert not Event.objects.filter(message_id="m-bad").exists()
    (rejected,) = response.json()["rejected"]
    assert (rejected["index"], rejected["field"], rejected["code"]) == (10, "batch[10].previousId", "invalid_event")
    entry = QuarantinedEvent.objects.get()
    assert (entry.field, entry.message_id, entry.batch_index) == ("batch[10].previousId", "m-bad", 10)
    assert "identity resolution failed" in entry.message and "an unforeseen case" in entry.message

    # and a single-event endpoint answers the same way (the event quarantined, not a 500)
    response = api.post("identify", {"userId": "broken", "anonymousId": "dev-9", "messageId": "m-bad-2"})
    assert response.status_code == 200, response.content
    assert [r["field"] for r in response.json()["rejected"]] == ["userId"]
    assert QuarantinedEvent.objects.filter(message_id="m-bad-2", field="userId").exists()
