"""Editing a customer in the admin saves as the API's trait update does (an identify): attribute
triggers fire, identities follow, the event names who did it; bad input is a form error."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from django.utils import timezone

from journeys.models import Customer, Event, Identity, JourneyRun
from tests.factories import CustomerFactory, live_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def upgrade():
    """A live workflow triggered when `plan` changes to "pro"."""
    return live_workflow(name="upgrade", definition={
        "trigger_kind": "attribute_change", "trigger_config": {"attribute": "plan", "to": "pro"},
        "steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []})


def _form(customer: Customer, **changes) -> dict:
    data = {"external_id": customer.external_id, "email": customer.email, "phone": customer.phone,
            "timezone": customer.timezone, "locale": customer.locale, "traits": json.dumps(customer.traits)}
    return {**data, **changes}


def _save(client, customer, capture, **changes):
    with capture(execute=True):
        return client.post(reverse("admin:journeys_customer_change", args=[customer.pk]), _form(customer, **changes))


def test_changing_a_trait_in_the_admin_fires_the_attribute_change_trigger(
        admin_client, upgrade, django_capture_on_commit_callbacks):
    # given a customer on the free plan
    customer = CustomerFactory(external_id="bo", traits={"plan": "free", "city": "Lyon"})

    # when an admin sets the plan to "pro" and saves
    response = _save(admin_client, customer, django_capture_on_commit_callbacks,
                     traits=json.dumps({"plan": "pro", "city": "Lyon"}))

    # then the profile changed, through an identify naming the admin, and the workflow started
    assert response.status_code == 302, response.content.decode()[:2000]
    customer.refresh_from_db()
    assert customer.traits == {"plan": "pro", "city": "Lyon"}
    event = Event.objects.get(customer=customer, type="identify")
    assert event.changes == {"plan": ["free", "pro"]} and event.context["actor"] == "admin:admin"
    assert JourneyRun.objects.filter(workflow=upgrade, customer=customer).exists()


def test_an_email_typed_in_the_admin_becomes_an_identity_and_a_removed_trait_is_cleared(
        admin_client, django_capture_on_commit_callbacks):
    # given a known customer with a temporary trait
    customer = CustomerFactory(external_id="cy", email="", traits={"tmp": 1, "plan": "free"})

    # when an admin types an email and timezone, and removes the trait
    response = _save(admin_client, customer, django_capture_on_commit_callbacks, email="Cy@Example.com",
                     timezone="Europe/Paris", traits=json.dumps({"plan": "free"}))

    # then the columns are set, the address finds the customer, and the trait is cleared (null)
    assert response.status_code == 302, response.content.decode()[:2000]
    customer.refresh_from_db()
    assert (customer.email, customer.timezone) == ("Cy@Example.com", "Europe/Paris")
    assert Identity.objects.filter(kind="email", value="cy@example.com", customer=customer).exists()
    assert customer.traits["tmp"] is None and customer.traits["plan"] == "free"
    assert Event.objects.get(customer=customer, type="identify").changes["tmp"] == [1, None]


def test_a_profile_known_only_by_an_address_is_updated_and_its_trigger_fires(
        admin_client, upgrade, django_capture_on_commit_callbacks):
    # given a profile that has no user id nor anonymous id (made by a message to an address)
    customer = CustomerFactory(external_id="", email="lee@example.com", traits={"plan": "free"})

    # when an admin sets its plan and phone
    response = _save(admin_client, customer, django_capture_on_commit_callbacks, phone="+33612345678",
                     traits=json.dumps({"plan": "pro"}))

    # then both are stored and the workflow started
    assert response.status_code == 302, response.content.decode()[:2000]
    customer.refresh_from_db()
    assert customer.traits["plan"] == "pro" and customer.phone == "+33612345678"
    assert JourneyRun.objects.filter(workflow=upgrade, customer=customer).exists()


@pytest.mark.parametrize(("traits", "message"), [
    ('["pro"]', "must be a JSON object"),
    ('{"n": NaN}', "traits.n: is not a finite number"),
    ('{"x": "a\\u0000b"}', "traits.x: contains a NUL character"),
], ids=["not-object", "nan", "nul"])
def test_bad_traits_are_a_form_error_naming_them(admin_client, traits, message):
    customer = CustomerFactory(external_id="dee", traits={"plan": "free"})

    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, traits=traits))

    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["traits"])
    assert Customer.objects.get(pk=customer.pk).traits == {"plan": "free"}


@pytest.mark.parametrize(("depth", "refused"), [(62, False), (63, True)])
def test_traits_nested_deeper_than_an_identify_takes_are_a_form_error(admin_client, depth, refused):
    """Saved through an identify, the traits sit one level down: the form refuses what ingest would
    (it answered 500 at 63 levels)."""
    customer = CustomerFactory(external_id="deep", traits={})
    deep = node = {}
    for _ in range(depth):
        node["a"] = node = {}

    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, traits=json.dumps(deep)))

    assert response.status_code == (200 if refused else 302)
    if refused:
        assert "is nested more than 63 levels deep" in " ".join(response.context["adminform"].form.errors["traits"])
        assert Customer.objects.get(pk=customer.pk).traits == {}


def test_an_erased_customer_cannot_be_edited(admin_client):
    customer = CustomerFactory(external_id="gone", traits={})
    Customer.objects.filter(pk=customer.pk).update(erased_at=timezone.now())
    customer.refresh_from_db()

    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, traits=json.dumps({"plan": "x"})))

    assert response.status_code == 200
    assert "takes no new data" in " ".join(response.context["adminform"].form.non_field_errors())
    assert Customer.objects.get(pk=customer.pk).traits == {}


def test_a_timezone_the_server_does_not_know_is_a_form_error(admin_client):
    customer = CustomerFactory(external_id="tz", timezone="Asia/Tokyo", traits={})

    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, timezone="Mars/Olympus"))

    assert response.status_code == 200
    assert "'Mars/Olympus' is not an IANA time zone" in " ".join(
        response.context["adminform"].form.errors["timezone"])
    assert Customer.objects.get(pk=customer.pk).timezone == "Asia/Tokyo"


def test_a_timezone_in_the_traits_is_checked_as_the_api_checks_it(admin_client):
    customer = CustomerFactory(external_id="tz", timezone="Asia/Tokyo", traits={})

    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, traits=json.dumps({"timezone": "+05:30"})))

    assert response.status_code == 200
    assert "traits.timezone: '+05:30' is not an IANA time zone" in " ".join(
        response.context["adminform"].form.errors["traits"])
    assert Customer.objects.get(pk=customer.pk).traits == {}


def test_a_customer_whose_stored_zone_trait_is_an_offset_can_still_be_edited(
        admin_client, django_capture_on_commit_callbacks):
    # given a customer the tracking API identified with timezone "+05:30" (kept as a trait only)
    customer = CustomerFactory(external_id="off", email="old@example.com", timezone="Asia/Tokyo",
                               traits={"timezone": "+05:30", "plan": "free"})
    # when ops fix their email, the traits left as they are
    response = _save(admin_client, customer, django_capture_on_commit_callbacks, email="new@example.com")
    # then it saves
    assert response.status_code == 302, response.context["adminform"].form.errors
    customer.refresh_from_db()
    assert customer.email == "new@example.com" and customer.traits["timezone"] == "+05:30"
    # but changing that trait to another offset is still refused, naming it
    response = _save(admin_client, customer, django_capture_on_commit_callbacks,
                     traits=json.dumps({"timezone": "+06:00", "plan": "free"}))
    assert response.status_code == 200
    assert "traits.timezone: '+06:00' is not an IANA time zone" in " ".join(
        response.context["adminform"].form.errors["traits"])


def test_a_timezone_typed_in_another_case_is_stored_in_its_own_spelling(admin_client):
    customer = CustomerFactory(external_id="tz", timezone="Asia/Tokyo", traits={})

    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, timezone=" europe/paris"))

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Customer.objects.get(pk=customer.pk).timezone == "Europe/Paris"


def test_a_phone_typed_in_the_admin_is_stored_without_separators(admin_client, django_capture_on_commit_callbacks):
    # given a known customer
    customer = CustomerFactory(external_id="di", phone="")

    # when an admin types a phone number with spaces, dashes and parentheses
    response = _save(admin_client, customer, django_capture_on_commit_callbacks, phone="+44 (20) 7946-0958")

    # then the profile and its identity hold it as inbound SMS will name it
    assert response.status_code == 302, response.content.decode()[:2000]
    customer.refresh_from_db()
    assert customer.phone == "+442079460958"
    assert Identity.objects.filter(kind="phone", value="+442079460958", customer=customer).exists()


def test_a_phone_that_is_no_number_is_a_form_error_and_changes_nothing(admin_client):
    # given a customer with a number
    customer = CustomerFactory(external_id="ph", phone="+33612345678", traits={})

    # when an admin types words in the phone box
    response = admin_client.post(reverse("admin:journeys_customer_change", args=[customer.pk]),
                                 _form(customer, phone="call me after 6"))

    # then the form says what to fix and the number stays
    assert response.status_code == 200
    assert "'call me after 6' is not a phone number" in " ".join(response.context["adminform"].form.errors["phone"])
    assert Customer.objects.get(pk=customer.pk).phone == "+33612345678"
