"""/v1/identify checks an email or phone trait as the customer import does. An identify whose
email cannot be an address is quarantined naming the field; the rest of its batch is stored.
A phone is read as apps send it (separators, `tel:`, an extension); one that still is no number
stays a trait, is noted on the event, and neither fills the profile's number nor claims it."""

from __future__ import annotations

import pytest

from journeys.models import Customer, Event, Identity, QuarantinedEvent

pytestmark = pytest.mark.django_db


def test_an_identify_with_an_invalid_email_is_quarantined_and_its_batch_stored(api):
    # given a batch: a good identify, one with `not-an-email`
    batch = [{"type": "identify", "userId": "c-1", "traits": {"email": "c1@example.com", "phone": "+1 555 0100"}},
             {"type": "identify", "userId": "c-2", "traits": {"email": "not-an-email"}}]
    # when it is posted
    response = api.post("batch", {"batch": batch})
    # then the bad item is rejected naming its field, and the good one is stored
    assert response.status_code == 200, response.content
    assert [r["field"] for r in response.json()["rejected"]] == ["batch[1].traits.email"]
    assert QuarantinedEvent.objects.count() == 1
    assert Customer.objects.get(external_id="c-1").email == "c1@example.com"
    assert not Identity.objects.filter(value="not-an-email").exists()


@pytest.mark.parametrize("phone", [
    "+1 555-777-0001 x123",  # an extension (libphonenumber, CRM, iOS contacts)
    "+1 555 777 0001 ext. 12",
    "+1-555-777-0001;ext=12",  # RFC 3966
    "tel:+15557770001",  # a tel: URI (Android intents, vCards)
    "+1 (555) 777\u20130001",  # an en dash pasted from a document
    "+1\u2011555\u2011777\u20110001",  # non-breaking hyphens from OS autoformat
])
def test_an_identify_with_a_phone_as_apps_send_it_is_stored_and_merges_the_device(api, phone):
    # given a device profile, then the sign-in's identify with a phone written as an app sends it
    api.post("track", {"anonymousId": "dev-1", "event": "Cart Viewed"})
    response = api.post("identify", {"userId": "u-1", "anonymousId": "dev-1",
                                     "traits": {"phone": phone, "plan": "pro", "email": "u1@example.com"}})
    # then the identify is stored whole: the trait as sent, the number without its extension, the device merged
    assert response.status_code == 200, response.content
    assert not QuarantinedEvent.objects.exists()
    customer = Customer.objects.get(external_id="u-1")
    assert (customer.traits["phone"], customer.traits["plan"], customer.phone) == (phone, "pro", "+15557770001")
    assert Identity.objects.get(kind="phone").value == "+15557770001"
    assert Identity.objects.get(kind="anonymous_id", value="dev-1").customer == customer
    assert Event.objects.get(type="identify").violations == []


def test_a_german_number_with_a_slash_is_the_profiles_number(api):
    response = api.post("batch", {"batch": [{"type": "identify", "userId": "de-1", "traits": {"phone": "030/12345678"}}]})
    assert response.status_code == 200, response.content
    assert response.json().get("rejected", []) == []
    assert Customer.objects.get(external_id="de-1").phone == "03012345678"


def test_an_identify_whose_phone_is_no_number_keeps_it_as_a_trait_and_says_so(api):
    # given a signed-in identify from a device, with a phone field holding words
    api.post("track", {"anonymousId": "dev-2", "event": "Cart Viewed"})
    response = api.post("batch", {"batch": [{"type": "identify", "userId": "c-3", "anonymousId": "dev-2",
                                             "traits": {"phone": "call me after 6", "plan": "pro"}}]})
    # then the identify counts (traits, merge), the words are a trait only, and the event says why
    assert response.status_code == 200, response.content
    assert response.json().get("rejected", []) == []
    customer = Customer.objects.get(external_id="c-3")
    assert (customer.traits["phone"], customer.traits["plan"], customer.phone) == ("call me after 6", "pro", "")
    assert not Identity.objects.filter(kind="phone").exists()
    assert Identity.objects.get(kind="anonymous_id", value="dev-2").customer == customer
    (violation,) = Event.objects.get(type="identify").violations
    assert violation.startswith("batch[0].traits.phone: is not a phone number")
    assert "kept as a trait" in violation
