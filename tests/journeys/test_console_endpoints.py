"""The console's JSON endpoints and graph page (journeys.console.views): the template preview shows a
customer's data only to those who may view customers, and parameters that cannot be used are refused
with a 400 naming them instead of a server error."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from journeys.models import Customer, Identity, Workflow
from journeys.services.internal_events import event_record_internal
from tests.console.conftest import demo, ops  # noqa: F401 - the demo data and its signed-in ops admin

pytestmark = pytest.mark.django_db


@pytest.fixture
def secretia(demo):  # noqa: F811
    """The most recently seen customer, with a cart worth 999: what nobody without access to customers may see."""
    customer = Customer.objects.create(external_id="u-secret", email="secret@example.com",
                                       traits={"first_name": "Secretia"})
    Identity.objects.create(kind="user_id", value="u-secret", customer=customer)
    event_record_internal(customer=customer, name="Checkout Started", properties={"total": 999})
    return customer


@pytest.fixture
def editor(demo):  # noqa: F811
    client = Client()
    client.login(username="editor", password="editor")
    assert not User.objects.get(username="editor").has_perm("journeys.view_customer")
    return client


def preview(client, **params):
    return client.get(reverse("console:template_preview"), params)


def test_someone_who_may_not_view_customers_previews_with_the_sample_profile_and_event(editor, secretia):
    # when an editor previews a template without naming a customer, for the event customers had
    response = preview(editor, template="cart-reminder", event="Checkout Started")
    # then it renders for the built-in sample, with a sample event: nobody's name, nobody's cart
    data = response.json()
    assert response.status_code == 200 and data["customer"] == "sample"
    assert data["subject"] == "You left something in your cart, Sam"
    assert "Secretia" not in data["subject"] + data["body"] and "999" not in data["body"]
    # and naming a customer is refused
    named = preview(editor, template="cart-reminder", customer="u-secret")
    assert named.status_code == 403
    assert named.json() == {"ok": False, "field": "preview_customer", "error": "you may not view customers"}


def test_a_named_customer_is_previewed_with_their_own_event_never_another_customers(ops, secretia):  # noqa: F811
    # given a customer without a Checkout Started event of their own (only Secretia has one)
    Customer.objects.create(external_id="u-plain", traits={"first_name": "Plain"})
    Identity.objects.create(kind="user_id", value="u-plain", customer=Customer.objects.get(external_id="u-plain"))
    # when ops previews the template for them
    data = preview(ops, template="cart-reminder", customer="u-plain", event="Checkout Started").json()
    # then the event is a sample one, not Secretia's cart
    assert data["ok"] and data["customer"] == "u-plain" and "999" not in data["body"]
    assert "event.properties.total" in data["missing"]
    # and Secretia's own preview reads her event
    assert preview(ops, template="cart-reminder", customer="u-secret", event="Checkout Started").json()["body"] \
        == "Your cart worth 999 is waiting."


@pytest.mark.parametrize("value", ["²", "1²", "-1", "1 ", "x"])
def test_an_id_that_is_not_plain_digits_is_refused_naming_the_parameter(ops, value):  # noqa: F811
    version = Workflow.objects.get(name="Cart abandonment").live_version
    ops.raise_request_exception = False
    # when the rule check is asked with such a version
    check = ops.get(reverse("console:rule_check"), {"rule": "profile.ltv > 1", "version": value})
    # then it answers 400 naming the parameter
    assert check.status_code == 400
    assert check.json()["field"] == "version" and "version must be an id" in check.json()["error"]
    # and so does the graph page asked to compare with it
    graph = ops.get(reverse("console:version_graph", args=[version.pk]), {"compare": value})
    assert graph.status_code == 400 and "compare must be an id" in graph.content.decode()


def test_ids_that_match_nothing_are_no_error(ops):  # noqa: F811
    version = Workflow.objects.get(name="Cart abandonment").live_version
    huge = "9" * 30  # larger than any integer column holds
    for value in ("", huge):
        check = ops.get(reverse("console:rule_check"), {"rule": "profile.ltvv > 1", "version": value})
        assert check.status_code == 200 and check.json()["warnings"] == []
        graph = ops.get(reverse("console:version_graph", args=[version.pk]), {"compare": value})
        assert graph.status_code == 200 and graph.context["other"] is None


@pytest.mark.parametrize("endpoint, params, field", [
    ("template_preview", {"template": "cart\x00reminder"}, "template"),
    ("template_preview", {"template": "cart-reminder", "customer": "u\x00x"}, "customer"),
    ("template_preview", {"template": "cart-reminder", "event": "Checkout\x00"}, "event"),
    ("template_preview", {"template": "cart-reminder", "locale": "de\x00"}, "locale"),
    ("rule_check", {"rule": "event.properties.x > 1", "event": "E\x00"}, "event"),
    ("rule_check", {"rule": "event.properties.x\x00 > 1"}, "rule"),
])
def test_a_nul_character_is_refused_naming_the_parameter(ops, endpoint, params, field):  # noqa: F811
    version = Workflow.objects.get(name="Cart abandonment").live_version
    ops.raise_request_exception = False
    # when a parameter holds a NUL character (which PostgreSQL can neither store nor compare)
    response = ops.get(reverse(f"console:{endpoint}"), {**params, "version": version.pk})
    # then the answer is a 400 naming that parameter
    assert response.status_code == 400
    assert response.json()["ok"] is False and response.json()["field"] == field
    assert "NUL character" in response.json()["error"]
