"""A customer's timezone as clients send it: the tracking API, the traits API and the admin form
forgive spaces and letter case (the zone's own spelling is stored) and refuse anything else
naming the field, instead of answering 200 while the profile stays on UTC."""

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
def test_identify_with_a_zone_no_one_reads_is_refused_naming_the_field(api, zone):
    api.post("identify", {"userId": "u", "traits": {"timezone": "Asia/Tokyo"}})

    response = api.post("identify", {"userId": "u", "traits": {"timezone": zone, "plan": "pro"}})

    [rejected] = response.json()["rejected"]
    assert (rejected["field"], rejected["code"]) == ("traits.timezone", "invalid_event")
    assert "is not an IANA time zone" in rejected["message"]
    assert QuarantinedEvent.objects.get().field == "traits.timezone"
    customer = profile("u")
    assert customer.timezone == "Asia/Tokyo" and customer.traits == {"timezone": "Asia/Tokyo"}


def test_strict_source_answers_400_naming_the_field(api, source):
    source.strict = True
    source.save()

    response = api.post("identify", {"userId": "u", "traits": {"timezone": "Mars/Olympus"}})

    assert response.status_code == 400 and response.json()["field"] == "traits.timezone"
    assert not Event.objects.exists()


def test_batch_quarantines_the_item_naming_it_and_stores_the_rest(api):
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"timezone": "Europe/Paris"}} for i in range(5)]
    batch[3]["traits"]["timezone"] = "+05:30"
    batch[1]["traits"]["timezone"] = "europe/london "

    response = api.post("batch", {"batch": batch})

    [rejected] = response.json()["rejected"]
    assert (rejected["index"], rejected["field"]) == (3, "batch[3].traits.timezone")
    assert Event.objects.count() == 4
    assert dict(Customer.objects.values_list("external_id", "timezone")) == {
        "u0": "Europe/Paris", "u1": "Europe/London", "u2": "Europe/Paris", "u4": "Europe/Paris"}


def test_identify_traits_sent_in_context_are_checked_under_their_path(api):
    response = api.post("identify", {"userId": "u", "context": {"traits": {"timezone": "Mars/Olympus"}}})

    assert response.json()["rejected"][0]["field"] == "context.traits.timezone"


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
