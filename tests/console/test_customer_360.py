"""Customer 360 in the admin: profile, identities and merges, consents and their history,
events, messages, journey runs and cases on one page, limited to what the user may see."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from journeys.console import selectors as console_selectors
from journeys.models import Customer
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _section(page: str, name: str) -> str:
    match = re.search(rf'<section class="card[^"]*" id="c360-{name}">(.*?)</section>', page, re.S)
    assert match, f"no {name} section"
    return match.group(1)


def _page(client, customer) -> str:
    response = client.get(reverse("admin:journeys_customer_change", args=[customer.pk]))
    assert response.status_code == 200
    return response.content.decode()


def test_everything_about_a_customer_on_one_page(traffic, send, admin_client):
    from agents.models import Case
    from channels_app.models import Topic
    from channels_app.services.consent import consent_set

    # given Alan wrote an angry support message (escalated to a case, acknowledged by email) and
    # later opted out of SMS, then in again; and an anonymous visitor turned out to be him
    alan = Customer.objects.get(external_id="u-alan")
    topic = Topic.objects.first()
    consent_set(customer=alan, channel_kind="sms", topic=topic, status="opted_out", source="sms_stop")
    consent_set(customer=alan, channel_kind="sms", topic=topic, status="opted_in", source="preference_centre")
    send(anonymousId="anon-77", event="Viewed Pricing")
    send(anonymousId="anon-77", userId="u-alan", event="Logged In")

    page = _page(admin_client, alan)

    profile = _section(page, "profile")
    assert "Alan" in profile and "business" in profile and "1500" in profile
    identities = _section(page, "identities")
    assert "alan@example.com" in identities and "anon-77" in identities
    assert re.search(r"#\d+ → #%d" % alan.pk, identities)
    consents = _section(page, "consents")
    assert "sms_stop" in consents and "preference_centre" in consents and "Opted in" in consents
    events = _section(page, "events")
    assert "Support Message" in events and "Viewed Pricing" in events  # moved over by the merge
    messages = _section(page, "messages")
    assert "We&#x27;re on it" in messages and "sent" in messages
    runs = _section(page, "runs")
    assert "High-value support query" in runs and "completed" in runs
    cases = _section(page, "cases")
    case = Case.objects.get(customer=alan)
    assert reverse("admin:agents_case_change", args=[case.pk]) in cases
    activity = _section(page, "activity")
    for kind in ("event", "message", "journey", "case", "consent", "merge"):
        assert f'class="kind-tag {kind}"' in activity
    assert 'name="email"' in page  # the edit form is still below


def test_sections_follow_the_viewer_s_permissions(traffic, client):
    clerk = UserFactory(username="clerk", is_staff=True)
    clerk.user_permissions.add(*Permission.objects.filter(codename__in=["view_customer", "change_customer"]))
    client.force_login(clerk)

    page = _page(client, Customer.objects.get(external_id="u-alan"))

    assert 'id="c360-profile"' in page and 'id="c360-identities"' in page
    for hidden in ("consents", "messages", "cases", "events"):
        assert f'id="c360-{hidden}"' not in page
    assert "High-value support query" not in page  # runs only of workflows the clerk may view


def test_the_page_works_without_the_other_apps(traffic, admin_client, monkeypatch):
    """journeys is the core: with channels_app and agents gone the 360 shows what it has."""

    class OnlyJourneys:
        @staticmethod
        def get_model(app_label, model_name):
            if app_label in ("channels_app", "agents"):
                raise LookupError(app_label)
            from django.apps import apps

            return apps.get_model(app_label, model_name)

    monkeypatch.setattr(console_selectors, "apps", OnlyJourneys)
    alan = Customer.objects.get(external_id="u-alan")

    data = console_selectors.customer_360(customer=alan, user=UserFactory(is_superuser=True, is_staff=True))
    page = _page(admin_client, alan)
    dashboard = admin_client.get(reverse("console:dashboard_data")).json()["metrics"]

    assert data["consents"] is data["deliveries"] is data["cases"] is None
    assert 'id="c360-runs"' in page and 'id="c360-cases"' not in page and 'id="c360-messages"' not in page
    assert dashboard["deliveries"] is dashboard["cases"] is dashboard["circuits"] is None


def test_an_absorbed_profiles_page_leads_to_the_profile_it_was_merged_into(admin_client):
    from journeys.services.identity import customer_merge
    from tests.factories import CustomerFactory

    anonymous, known = CustomerFactory(), CustomerFactory(external_id="known-one")
    customer_merge(target=known, merged=anonymous, reason="identified", actor="test")

    response = admin_client.get(f"/admin/journeys/customer/{anonymous.pk}/change/", follow=True)

    assert response.redirect_chain[-1][0] == f"/admin/journeys/customer/{known.pk}/change/"
    assert f"was merged into #{known.pk}" in response.content.decode()
    assert admin_client.get(f"/admin/journeys/customer/{10**30}/change/").status_code == 302  # no such id: no 500


def test_a_message_whose_template_was_deleted_is_listed_by_its_text(admin_client):
    from channels_app.models import Delivery, MessageTemplate
    from tests.channels_app.factories import ChannelFactory, TemplateFactory

    # given an SMS sent to a customer from a template (no subject), and a template-less email
    customer = Customer.objects.create(external_id="u-tpl")
    template = TemplateFactory(name="winback", channel_kind="sms", subject="")
    sms = ChannelFactory(name="sms", kind="sms", provider="webhook")
    Delivery.objects.create(idempotency_key="k-1", customer=customer, channel=sms, template=template,
                            body="We miss you, come back for 10% off")
    # when the template is deleted in the admin (the delivery keeps its text, template SET_NULL)
    response = admin_client.post(reverse("admin:channels_app_messagetemplate_delete", args=[template.pk]),
                                 {"post": "yes", "change_reason": "campaign over"})
    assert response.status_code == 302 and not MessageTemplate.objects.filter(pk=template.pk).exists()

    # then the customer's page opens and names the message by its text
    messages = _section(_page(admin_client, customer), "messages")
    assert "We miss you, come back" in messages


@pytest.mark.parametrize("typed", ["+44 20 7946 0022", "+442079460022", "0044 20 7946 0022"])
def test_the_customer_search_finds_a_number_in_either_international_spelling(
        admin_client, api, django_capture_on_commit_callbacks, typed):
    # given a customer who gave their number with 00 (stored as 0044...), as the STOP matching finds it
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("identify", {"userId": "u-00", "traits": {"phone": "0044 20 7946 0022"}}).status_code == 200
    customer = Customer.objects.get(external_id="u-00")

    # when ops search the customers list for it, written as a carrier or the customer would
    response = admin_client.get("/admin/journeys/customer/", {"q": typed})

    # then the customer is listed
    assert response.status_code == 200
    assert f"/admin/journeys/customer/{customer.pk}/change/" in response.content.decode()
