"""The admin's template preview and the console's step-form preview follow one rule: a real
customer's profile only for those who may view customers (issue #15 item 4)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from journeys.services.governance import ROLE_APPROVERS, ROLE_OPS, business_unit_grant_editor, roles_setup
from tests.channels_app.factories import CustomerFactory, TemplateFactory
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(db):
    from django.contrib.auth.models import Group

    from journeys.models import BusinessUnit

    roles_setup()
    template = TemplateFactory(name="cart", subject="For {{ profile.first_name }}",
                               body="{{ profile.email }} spent {{ profile.ltv }}")
    CustomerFactory(external_id="dave", email="dave@example.com", traits={"first_name": "Dave", "ltv": 4321})
    users = {}
    for name, group in (("ops", ROLE_OPS), ("approver", ROLE_APPROVERS), ("editor", None)):
        users[name] = UserFactory(username=name, is_staff=True)
        if group:
            users[name].groups.add(Group.objects.get(name=group))
    business_unit_grant_editor(unit=BusinessUnit.objects.create(name="R", slug="r"), user=users["editor"])
    return template, users


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("role", ["approver", "editor"])
def test_editors_and_approvers_get_no_customer_data_from_either_preview(setup, role):
    template, users = setup
    client = client_for(users[role])

    admin_named = client.post(f"/admin/channels_app/messagetemplate/{template.pk}/preview/", {"customer": "dave"})
    console_named = client.get(reverse("console:template_preview"), {"template": "cart", "customer": "dave"})
    admin_sample = client.post(f"/admin/channels_app/messagetemplate/{template.pk}/preview/", {"customer": ""})
    console_sample = client.get(reverse("console:template_preview"), {"template": "cart"})

    assert admin_named.status_code == 403 and b"you may not view customers" in admin_named.content
    assert console_named.status_code == 403 and console_named.json()["field"] == "preview_customer"
    for page in (admin_named, admin_sample, console_named, console_sample):
        assert b"Dave" not in page.content and b"dave@example.com" not in page.content and b"4321" not in page.content
    assert b"For Sam" in admin_sample.content and console_sample.json()["subject"] == "For Sam"


def test_ops_previews_a_real_customer_in_both_places(setup):
    template, users = setup
    client = client_for(users["ops"])
    admin = client.post(f"/admin/channels_app/messagetemplate/{template.pk}/preview/", {"customer": "dave"})
    console = client.get(reverse("console:template_preview"), {"template": "cart", "customer": "dave"}).json()
    assert admin.status_code == 200 and b"For Dave" in admin.content and b"spent 4321" in admin.content
    assert console["subject"] == "For Dave" and console["body"] == "dave@example.com spent 4321"
