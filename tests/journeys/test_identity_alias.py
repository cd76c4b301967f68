"""Aliases never merge two known users unless the source says so (issue #15 item 6); every
refusal is recorded where ops see it (admin list, Customer 360)."""

from __future__ import annotations

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
