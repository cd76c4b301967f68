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


@pytest.mark.parametrize(("locale", "chosen"), [
    ("pt_BR", "pt-BR"), ("pt_br", "pt-BR"), ("PT-br", "pt-BR"), ("pt", "pt"),
    ("FR-ca", "fr-CA"), ("fr_CA", "fr-CA"), ("fr_FR", "fr"), (" fr ", "fr"), ("fr_CA.UTF-8", "fr-CA"),
    ("zh-Hant-TW", "zh-Hant"), ("zh_hant_hk", "zh-Hant"), ("zh-Hans-CN", "zh"),
    ("en-US", ""), ("", ""), ("garbage!!", ""), ("zz zz!!", ""), ("pt__BR", ""),
])
def test_a_customers_locale_is_matched_as_a_language_tag_then_less_specific_tags(locale, chosen):
    # given variants pt-BR, pt, fr-CA, fr, zh-Hant and zh
    template = TemplateFactory(subject="Hello", body="Hello")
    for tag in ("pt-BR", "pt", "fr-CA", "fr", "zh-Hant", "zh"):
        TemplateVariant.objects.create(template=template, locale=tag, subject=f"[{tag}]")

    # when a customer's locale is spelled as SDKs send it
    rendered = template_render(template=template, context={}, locale=locale)

    # then underscore is a hyphen, case does not matter, and the tag loses subtags from the end
    # until a variant has it (none: the template itself)
    assert (rendered.locale, rendered.subject) == (chosen, f"[{chosen}]" if chosen else "Hello")


def test_a_pt_br_customer_gets_the_pt_br_message_on_a_real_send(on_commit):
    # given a template with a pt-BR variant and customers whose SDKs wrote pt_BR and pt_br
    template = TemplateFactory(subject="Hello", body="Hello {{ profile.first_name }}")
    TemplateVariant.objects.create(template=template, locale="pt-BR", subject="Olá", body="Olá {{ profile.first_name }}")
    email = ChannelFactory(name="email", kind="email", provider="console")
    sent = []
    for i, locale in enumerate(("pt_BR", "pt_br")):
        customer = CustomerFactory(traits={"first_name": "Ana"}, locale=locale)
        with on_commit():
            sent.append(message_send(customer=customer, template=template, channel=email, idempotency_key=f"k{i}",
                                     context={}))

    # then both messages are the Brazilian ones
    assert [(d.subject, d.body, d.locale) for d in sent] == [("Olá", "Olá Ana", "pt-BR")] * 2


def test_the_migration_makes_saved_locales_canonical_and_parks_duplicates_without_losing_text(capsys):
    from importlib import import_module

    from django.apps import apps

    # given variants saved before tags were checked: pt_BR beside a later pt-BR with another text,
    # de_de beside a later de-DE with the same text, FR, and a locale that is no tag
    template = TemplateFactory()
    make = lambda locale, subject: TemplateVariant.objects.create(template=template, locale=locale, subject=subject)  # noqa: E731
    old_pt, new_pt = make("pt_BR", "Oi"), make("pt-BR", "Olá")
    old_de, new_de = make("de_de", "Hallo"), make("de-DE", "Hallo")
    french, junk = make("FR", "Bonjour"), make("zz zz!!", "?")

    # when the migration's data step runs
    import_module("channels_app.migrations.0014_template_variant_locale_tags").forwards(apps, None)

    # then the latest of each tag keeps it, canonical; a different older text is parked under a tag
    # no customer has, the same older text is deleted; a locale that is no tag is left as it was
    locales = dict(TemplateVariant.objects.values_list("pk", "locale"))
    assert locales == {old_pt.pk: f"x-dup-{old_pt.pk}", new_pt.pk: "pt-BR", new_de.pk: "de-DE", french.pk: "fr",
                       junk.pk: "zz zz!!"}
    assert old_de.pk not in locales
    assert template_render(template=template, context={}, locale="pt_BR").subject == "Olá"
    said = capsys.readouterr().out
    assert f"renamed x-dup-{old_pt.pk}" in said and "'zz zz!!', which is no language tag" in said
