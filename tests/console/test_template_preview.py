"""Inline template preview in the send_message step form: the channels app's own rendering
(locale variant, personalization consent) for a chosen customer or a sample one."""

from __future__ import annotations

import pytest
from django.urls import reverse

from journeys.models import BusinessUnit, Customer, Identity, WorkflowVersion
from journeys.services.workflows import workflow_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def grace(demo):
    from channels_app.models import MessageTemplate, TemplateVariant

    template = MessageTemplate.objects.get(name="cart-reminder")
    TemplateVariant.objects.create(template=template, locale="de", subject="Dein Warenkorb, {{ profile.first_name }}",
                                   body="Noch da.")
    customer = Customer.objects.create(external_id="u-greta", email="greta@example.com", traits={"first_name": "Greta"})
    Identity.objects.create(kind="user_id", value="u-greta", customer=customer)
    return customer


def preview(client, **params):
    return client.get(reverse("console:template_preview"), params)


def test_preview_for_a_chosen_customer_in_a_chosen_locale(ops, grace):
    data = preview(ops, template="cart-reminder", customer="u-greta", locale="de").json()
    assert data["ok"] and data["customer"] == "u-greta" and data["locale"] == "de"
    assert data["subject"] == "Dein Warenkorb, Greta"
    default = preview(ops, template="cart-reminder", customer="u-greta").json()
    assert default["subject"] == "You left something in your cart, Greta"
    assert "event.properties.total" in default["missing"]  # no event named: the sample has no total


def test_preview_reads_the_latest_trigger_event_of_the_customer(ops, grace):
    from journeys.services.internal_events import event_record_internal

    event_record_internal(customer=grace, name="Checkout Started", properties={"total": 42})
    data = preview(ops, template="cart-reminder", customer="u-greta", event="Checkout Started").json()
    assert data["body"] == "Your cart worth 42 is waiting."


def test_preview_without_a_customer_uses_the_latest_one_and_bad_input_names_the_field(ops, grace):
    assert preview(ops, template="cart-reminder").json()["customer"] == "u-greta"
    bad = preview(ops, template="nope")
    assert bad.status_code == 400 and bad.json() == {"ok": False, "field": "template",
                                                     "error": "no template named 'nope'"}
    nobody = preview(ops, template="cart-reminder", customer="ghost").json()
    assert nobody["field"] == "preview_customer" and "ghost" in nobody["error"]


def test_the_preview_button_works_without_javascript(ops, grace):
    version = WorkflowVersion.objects.create(
        workflow=workflow_create(name="Preview", business_unit=BusinessUnit.objects.get(slug="retention")),
        number=1, trigger_event="Signed Up")
    url = f"{reverse('admin:journeys_step_add')}?version={version.pk}&kind=send_message"
    response = ops.post(url, {"key": "mail", "channel": "email", "template": "cart-reminder",
                              "preview_customer": "greta@example.com", "preview_locale": "de", "_preview": "Preview"})
    assert response.status_code == 200
    page = response.content.decode()
    assert response.context["form"].errors == {}
    assert 'id="preview-subject">Dein Warenkorb, Greta<' in page
    assert not version.steps.exists()  # previewing saves nothing
