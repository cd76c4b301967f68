"""A customer's timezone as clients send it: the tracking API, the traits API and the admin form
forgive spaces and letter case (the zone's own spelling is stored). The traits API refuses a
name no one reads with a 400 naming the field; an identify from the tracking API is kept (its
other traits apply), the unreadable zone stays a trait only, the customer keeps their zone,
and the event names `traits.timezone` and why, as it does an unreadable phone."""

from __future__ import annotations

import pytest

from journeys.choices import ApiScope
from journeys.models import Customer, Event, QuarantinedEvent
from tests.apiclient import Api, make_token
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

BAD = ["+05:30", "Mars/Olympus", "GMT+5", "Europe/Pariss", "../../etc/passwd", 5, ["Asia/Tokyo"]]


def profile(user_id: str) -> Customer:
    return Customer.objects.get(external_id=user_id, merged_into__isnull=True)


@pytest.mark.parametrize(("sent", "stored"), [("Asia/Calcutta ", "Asia/Calcutta"), (" asia/kolkata", "Asia/Kolkata"),
                                              ("america/new_york", "America/New_York"), ("utc", "UTC")])
def test_identify_trims_spaces_and_stores_the_zones_own_spelling(api, sent, stored):
    response = api.post("identify", {"userId": "u", "traits": {"timezone": sent}})

    assert response.status_code == 200 and "rejected" not in response.json(), response.json()
    customer = profile("u")
    assert customer.timezone == stored and customer.traits["timezone"] == stored


@pytest.mark.parametrize("zone", BAD)
def test_identify_with_a_zone_no_one_reads_applies_its_other_traits_keeps_the_zone_and_says_why(api, zone):
    # given a customer on Tokyo time with an email
    api.post("identify", {"userId": "u", "traits": {"timezone": "Asia/Tokyo", "email": "old@example.com"}})
    # when an old app's identify changes the email and plan and sends an offset for a zone
    response = api.post("identify", {"userId": "u", "traits": {"timezone": zone, "plan": "pro",
                                                               "email": "new@example.com"}})
    # then the identify is kept: the other traits apply, the zone stays Tokyo, the event says why
    assert response.status_code == 200 and "rejected" not in response.json(), response.json()
    assert not QuarantinedEvent.objects.exists()
    customer = profile("u")
    assert (customer.timezone, customer.email, customer.traits["plan"]) == ("Asia/Tokyo", "new@example.com", "pro")
    (violation,) = Event.objects.filter(type="identify").order_by("pk").last().violations
    assert violation.startswith("traits.timezone: ") and "is not an IANA time zone" in violation
    assert "the customer keeps the zone they had" in violation


def test_the_events_admin_shows_why_the_zone_was_not_used(api, admin_client):
    api.post("identify", {"userId": "u", "traits": {"timezone": "GMT+5", "plan": "pro"}})

    page = admin_client.get(f"/admin/journeys/event/{Event.objects.get().pk}/change/")

    assert page.status_code == 200
    assert "traits.timezone: &#x27;GMT+5&#x27; is not an IANA time zone" in page.content.decode()


def test_a_new_customer_identified_with_an_offset_is_not_given_a_zone(api):
    response = api.post("identify", {"userId": "n", "traits": {"timezone": "+05:30", "plan": "pro"}})

    assert response.status_code == 200 and "rejected" not in response.json(), response.json()
    assert profile("n").timezone in ("", "UTC") and profile("n").traits["plan"] == "pro"


def test_strict_source_keeps_the_identify_as_it_keeps_an_unreadable_phone(api, source):
    # given a strict source (all or nothing for refused events)
    source.strict = True
    source.save()
    # when an identify carries a zone and a phone no one can read
    response = api.post("identify", {"userId": "u", "traits": {"timezone": "GMT+5", "phone": "call me after 6",
                                                               "plan": "pro"}})
    # then neither refuses it: both are named on the stored event, as the phone alone always was
    assert response.status_code == 200, response.json()
    assert [v.split(":")[0] for v in Event.objects.get().violations] == ["traits.timezone", "traits.phone"]
    assert profile("u").traits["plan"] == "pro"


def test_batch_keeps_the_item_with_an_offset_naming_it_on_the_event(api):
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"timezone": "Europe/Paris"}} for i in range(5)]
    batch[3]["traits"]["timezone"] = "+05:30"
    batch[1]["traits"]["timezone"] = "europe/london "

    response = api.post("batch", {"batch": batch})

    assert response.status_code == 200 and "rejected" not in response.json(), response.json()
    assert Event.objects.count() == 5
    assert dict(Customer.objects.values_list("external_id", "timezone")) == {
        "u0": "Europe/Paris", "u1": "Europe/London", "u2": "Europe/Paris", "u3": "UTC", "u4": "Europe/Paris"}
    (violation,) = Event.objects.get(customer__external_id="u3").violations
    assert violation.startswith("batch[3].traits.timezone: '+05:30' is not an IANA time zone")


def test_identify_traits_sent_in_context_are_named_under_their_path(api):
    response = api.post("identify", {"userId": "u", "context": {"traits": {"timezone": "Mars/Olympus"}}})

    assert response.status_code == 200 and "rejected" not in response.json(), response.json()
    assert Event.objects.get().violations[0].startswith("context.traits.timezone: ")


def test_a_quarantined_identify_replayed_with_an_offset_zone_is_stored_keeping_the_zone(api):
    import json

    from journeys.services.quarantine import quarantine_replay

    # given a customer on Tokyo time and an identify quarantined for its email, sent with an offset zone
    api.post("identify", {"userId": "u", "traits": {"timezone": "Asia/Tokyo"}})
    api.post("identify", {"userId": "u", "traits": {"timezone": "+05:30", "email": "not-an-email"}})
    entry = QuarantinedEvent.objects.get()
    assert entry.field == "traits.email"
    # when its email is corrected and it is replayed
    entry.payload = json.dumps({**json.loads(entry.payload), "traits": {"timezone": "+05:30", "email": "u@example.com"}})
    entry.save()
    result = quarantine_replay(entries=[entry], reason="email fixed")
    # then it is stored: the email applies, the zone stays Tokyo, the event names the zone
    assert len(result.replayed) == 1, result.still_bad
    customer = profile("u")
    assert (customer.email, customer.timezone) == ("u@example.com", "Asia/Tokyo")
    assert Event.objects.filter(type="identify").order_by("pk").last().violations[0].startswith("traits.timezone: ")


def test_a_device_zone_is_forgiven_its_case_and_one_no_one_reads_is_not_used(api):
    api.post("track", {"userId": "a", "event": "E", "context": {"timezone": "asia/tokyo "}})
    api.post("track", {"userId": "b", "event": "E", "context": {"timezone": "GMT+0530"}})

    assert (profile("a").timezone, profile("b").timezone) == ("Asia/Tokyo", "UTC")
    assert Event.objects.count() == 2  # the events themselves are kept


@pytest.fixture
def crm():
    _, key = make_token(ApiScope.CUSTOMERS_READ, ApiScope.CUSTOMERS_WRITE, name="crm")
    return Api(key)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "+05:30", "Asia/Calcuta"])
def test_traits_api_refuses_a_bad_zone_with_400_naming_it_and_changes_nothing(crm, zone):
    customer = CustomerFactory(external_id="c", timezone="Pacific/Chatham", traits={"timezone": "Pacific/Chatham"})

    response = crm.patch(f"customers/{customer.pk}/traits", {"traits": {"timezone": zone, "plan": "pro"}})

    assert (response.status_code, response.body["field"]) == (400, "traits.timezone"), response.body
    assert "not an IANA time zone" in response.body["message"]
    customer.refresh_from_db()
    assert customer.timezone == "Pacific/Chatham" and customer.traits == {"timezone": "Pacific/Chatham"}
    assert not Event.objects.exists()


def test_traits_api_stores_and_reports_the_canonical_zone(crm):
    customer = CustomerFactory(external_id="c", timezone="Pacific/Chatham", traits={"timezone": "Pacific/Chatham"})

    response = crm.patch(f"customers/{customer.pk}/traits", {"traits": {"timezone": " asia/kolkata "}})

    assert response.status_code == 200, response.body
    assert response.body["changes"] == {"timezone": ["Pacific/Chatham", "Asia/Kolkata"]}
    assert response.body["customer"]["timezone"] == "Asia/Kolkata"


def test_traits_api_takes_a_customer_whose_stored_zone_trait_is_an_offset(crm):
    # given a customer the tracking API identified with timezone "+05:30" (kept as a trait only)
    customer = CustomerFactory(external_id="c", timezone="Asia/Tokyo", traits={"timezone": "+05:30"})
    # when a client sends their traits back with a new email, the zone unchanged
    response = crm.patch(f"customers/{customer.pk}/traits",
                         {"traits": {"timezone": "+05:30", "email": "fixed@example.com"}})
    # then it is taken, and the customer keeps their zone
    assert response.status_code == 200, response.body
    customer.refresh_from_db()
    assert customer.email == "fixed@example.com" and customer.timezone == "Asia/Tokyo"
    # but a changed offset is still refused naming it
    response = crm.patch(f"customers/{customer.pk}/traits", {"traits": {"timezone": "+06:00"}})
    assert (response.status_code, response.body["field"]) == (400, "traits.timezone"), response.body
