"""Templates: locale variants, adaptive content blocks, the sandbox, missing variables."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app.models import ContentBlock, TemplateVariant
from channels_app.services import message_send, template_check, template_render
from journeys.models import Customer
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


def test_locale_variant_is_chosen_by_exact_locale_then_language():
    template = TemplateFactory(subject="Hello", body="Hello {{ profile.first_name }}")
    TemplateVariant.objects.create(template=template, locale="fr", subject="Bonjour", body="Bonjour {{ profile.first_name }}")
    TemplateVariant.objects.create(template=template, locale="pt-BR", subject="Olá")
    ctx = {"profile": {"first_name": "Zoé"}}

    assert template_render(template=template, context=ctx, locale="fr-CA").body == "Bonjour Zoé"
    brazil = template_render(template=template, context=ctx, locale="pt-BR")
    assert (brazil.subject, brazil.body, brazil.locale) == ("Olá", "Hello Zoé", "pt-BR")  # empty body: the template's
    assert template_render(template=template, context=ctx, locale="de").subject == "Hello"


def test_content_block_adapts_to_propensity_and_tenure_without_copying_templates(on_commit):
    ContentBlock.objects.create(name="offer", variants=[
        {"rule": "profile.propensity_buy >= 0.7", "body": "Take 10% off, {{ profile.first_name }}!"},
        {"rule": "profile.tenure_days > 365", "body": "Thanks for {{ profile.tenure_days }} days with us."},
        {"rule": "", "body": "Welcome aboard."},
    ])
    template = TemplateFactory(body='News. {% content_block "offer" %}')
    email = ChannelFactory(name="email", kind="email", provider="console")
    now = timezone.now()
    eager = CustomerFactory(traits={"propensity_buy": 0.9, "first_name": "Eve"}, first_seen=now)
    loyal = CustomerFactory(traits={"propensity_buy": 0.1}, first_seen=now - timedelta(days=400))
    new = CustomerFactory(traits={}, first_seen=now)

    bodies = []
    for i, customer in enumerate((eager, loyal, new)):
        with on_commit():
            bodies.append(message_send(customer=customer, template=template, channel=email, idempotency_key=f"k{i}",
                                       context={}).body)

    assert bodies == ["News. Take 10% off, Eve!", "News. Thanks for 400 days with us.", "News. Welcome aboard."]


@pytest.mark.parametrize("text", [
    "{% debug %}", "{% load static %}", '{% include "admin/base.html" %}', '{% extends "admin/base.html" %}',
    "{% url 'admin:index' %}", "{% if %}",
])
def test_tags_that_reach_outside_the_context_are_syntax_errors(text):
    assert template_check(text=text) is not None


@pytest.mark.parametrize(("text", "said"), [
    ("Hi {{ profile.first_name", "{{ without a closing }}"),
    ("{% if profile.vip %}VIP{% endif %} and {% if x", "{% without a closing %}"),
    ("{% if profile.vip %}Dear {{ profile.first_name{% endif %}", "{{ without a closing }}"),
])
def test_an_opening_without_its_closing_is_an_error_not_literal_text(text, said):
    assert said in (template_check(text=text) or "")


def test_a_template_reads_only_the_plain_data_it_is_given():
    customer = CustomerFactory(external_id="victim")
    template = TemplateFactory(
        body="[{{ settings.SECRET_KEY }}][{{ event.obj.delete }}][{{ event.obj.pk }}][{{ event.obj }}]"
             "{{ profile.clear }}{{ event.tags.pop }}[{{ profile.first_name }}][{{ event.tags|join:',' }}]")

    rendered = template_render(template=template, context={"event": {"obj": customer, "tags": ["x", "y"]},
                                                           "profile": {"first_name": "A"}})

    assert rendered.body == "[][][][victim][A][x,y]"  # mutators are not called either  # a model arrives as its text, nothing callable
    assert customer.__class__.objects.filter(pk=customer.pk).exists()


def test_missing_variables_render_empty_and_are_reported(on_commit):
    template = TemplateFactory(subject="Hi {{ profile.nickname }}", body="{{ event.properties.total }} {{ profile.x|default:'-' }}")
    email = ChannelFactory(name="email", kind="email", provider="console")
    with on_commit():
        delivery = message_send(customer=CustomerFactory(), template=template, channel=email, idempotency_key="k",
                                context={"event": {"properties": {}}})
    assert (delivery.subject, delivery.body) == ("Hi", " -")
    assert delivery.notes["missing"] == ["profile.nickname", "event.properties.total"]
    assert delivery.status == "queued" or delivery.status == "sent"


def test_a_trait_set_to_null_renders_empty_and_is_reported_like_a_missing_one(on_commit, api):
    # given a customer whose color an identify cleared (Segment's null) and whose first name is null
    CustomerFactory(external_id="nul", traits={"color": "red", "first_name": None})
    with on_commit():
        assert api.post("identify", {"userId": "nul", "traits": {"color": None}}).status_code == 200
    customer = Customer.objects.get(external_id="nul")
    assert customer.traits["color"] is None
    # and a template read both ways: plain variables, and filters and tags (Django's renderer)
    template = TemplateFactory(subject="color=[{{ profile.color }}]",
                               body="Hi [{{ profile.first_name|title }}] {{ profile.color|default:'any' }}"
                                    "{% if profile.color is None %}, none{% endif %}")
    email = ChannelFactory(name="email", kind="email", provider="console")

    # when a message is sent to them
    with on_commit():
        delivery = message_send(customer=customer, template=template, channel=email, idempotency_key="k", context={})

    # then the nulls render empty (a default still applies, a tag still sees null) and are listed missing
    assert (delivery.subject, delivery.body) == ("color=[]", "Hi [] any, none")
    assert delivery.notes["missing"] == ["profile.color", "profile.first_name"]


def test_delivery_records_template_version_and_content_hash(on_commit):
    template = TemplateFactory(body="v1")
    email = ChannelFactory(name="email", kind="email", provider="console")
    customer = CustomerFactory()
    with on_commit():
        first = message_send(customer=customer, template=template, channel=email, idempotency_key="a", context={})
    template.body = "v2"
    template.save()
    with on_commit():
        second = message_send(customer=customer, template=template, channel=email, idempotency_key="b", context={})
    assert first.template_version < second.template_version
    assert first.content_hash != second.content_hash and len(first.content_hash) == 64


def test_a_template_that_cannot_render_fails_the_delivery_not_the_journey(on_commit):
    template = TemplateFactory(body="{{ profile.n|divisibleby:0 }}")  # saved around the admin's check
    email = ChannelFactory(name="email", kind="email", provider="console")
    with on_commit():
        delivery = message_send(customer=CustomerFactory(traits={"n": 3}), template=template, channel=email,
                                idempotency_key="k", context={})
    assert (delivery.status, delivery.reason) == ("failed", "template_error")
    assert "ZeroDivisionError" in delivery.error
