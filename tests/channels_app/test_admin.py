"""Admin: channel settings never hold secrets, health columns, template errors at save, preview."""

from __future__ import annotations

import pytest
from django_q.models import Schedule

from channels_app.models import Channel, MessageTemplate
from channels_app.services import consent_set, message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


def channel_form(**overrides):
    data = {"name": "sms", "kind": "sms", "provider": "twilio_sms", "settings": '{"account_sid": "AC1"}',
            "enabled": "on", "max_attempts": 5, "retry_base_s": 30, "retry_max_s": 3600, "breaker_threshold": 5,
            "breaker_cooldown_s": 60, "change_reason": "new SMS provider"}
    return {**data, **overrides}


def test_channel_settings_refuse_secrets_and_accept_env_names(admin_client):
    bad = admin_client.post("/admin/channels_app/channel/add/",
                            channel_form(settings='{"account_sid": "AC1", "auth_token": "s3cr3t"}'))
    assert bad.status_code == 200 and b"looks like a secret" in bad.content
    assert not Channel.objects.exists()

    ok = admin_client.post("/admin/channels_app/channel/add/",
                           channel_form(settings='{"account_sid": "AC1", "auth_token_env": "JOURNEYS_SECRET_TWILIO_TOKEN"}'))
    assert ok.status_code == 302
    assert Channel.objects.get().settings == {"account_sid": "AC1", "auth_token_env": "JOURNEYS_SECRET_TWILIO_TOKEN"}


def test_channel_list_shows_circuit_error_rate_and_p95(admin_client, vendor, monkeypatch, on_commit):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_TOKEN", "x")
    chat = ChannelFactory(name="chat", kind="chat", provider="slack", breaker_threshold=1,
                          settings={"base_url": vendor.url, "bot_token_env": "JOURNEYS_SECRET_TEST_SLACK_TOKEN"})
    customer = CustomerFactory(traits={"chat_id": "U1"})
    vendor.fail(1, status=500)
    with on_commit():
        message_send(customer=customer, template=TemplateFactory(), channel=chat, idempotency_key="a", context={})

    page = admin_client.get("/admin/channels_app/channel/")

    html = page.content.decode()
    assert page.status_code == 200
    assert "open" in html and "1 of 1 (100%)" in html
    assert admin_client.get(f"/admin/channels_app/channel/{chat.pk}/change/").status_code == 200


def test_template_syntax_errors_are_shown_at_save(admin_client):
    response = admin_client.post("/admin/channels_app/messagetemplate/add/", {
        "name": "broken", "subject": "Hi {{ profile.first_name ", "body": "{% if %}",
        "variants-TOTAL_FORMS": 0, "variants-INITIAL_FORMS": 0})
    assert response.status_code == 200 and b"template error" in response.content
    assert not MessageTemplate.objects.filter(name="broken").exists()


def test_template_preview_with_a_chosen_customer_and_sample_event(admin_client):
    template = TemplateFactory(subject="Cart of {{ event.properties.total }}",
                               body="Hi {{ profile.first_name }} {{ profile.nickname }}",
                               html_body="<p>{{ profile.first_name }}</p>")
    CustomerFactory(external_id="ada", traits={"first_name": "Ada"})
    url = f"/admin/channels_app/messagetemplate/{template.pk}/preview/"

    assert admin_client.get(url).status_code == 200
    response = admin_client.post(url, {"customer": "ada", "event": '{"event": "Checkout", "properties": {"total": 99}}'})

    html = response.content.decode()
    assert "Cart of 99" in html and "Hi Ada" in html and "profile.nickname" in html
    assert b"not valid JSON" in admin_client.post(url, {"customer": "ada", "event": "{oops"}).content
    assert b"no customer with id or email &#x27;nobody&#x27;" in admin_client.post(url, {"customer": "nobody"}).content


@pytest.mark.parametrize(("event", "message"), [
    ('{"event": "Checkout", "properties": {"total": NaN}}', "event.properties.total: is not a finite number"),
    ('{"event": "Checkout", "properties": {"total": 1e999}}', "event.properties.total: is not a finite number"),
    ('{"event": "Checkout", "properties": {"total": "\\ud800"}}', "event.properties.total: contains text that"),
])
def test_template_preview_refuses_an_event_that_is_not_json_naming_where(admin_client, event, message):
    # given a template showing the event's total
    template = TemplateFactory(subject="Cart of {{ event.properties.total }}")
    url = f"/admin/channels_app/messagetemplate/{template.pk}/preview/"

    # when the sample event holds NaN, an overflowing number or a lone surrogate
    response = admin_client.post(url, {"event": event})

    # then the event field says where, and nothing is rendered from it
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors["event"])
    assert "Cart of" not in response.content.decode()


def test_consent_per_customer_and_deliveries_log_pages(admin_client, on_commit):
    customer = CustomerFactory(external_id="ada")
    consent_set(customer=customer, channel_kind="email", topic=topic("marketing"), status="opted_out", source="t")
    email = ChannelFactory(name="email", kind="email", provider="console")
    with on_commit():
        delivery = message_send(customer=customer, template=TemplateFactory(), channel=email, idempotency_key="k",
                                context={})

    subject = admin_client.get(f"/admin/channels_app/datasubject/{customer.pk}/change/")
    assert subject.status_code == 200 and b"Opted out" in subject.content and b"Marketing" in subject.content
    log = admin_client.get("/admin/channels_app/delivery/?status__exact=sent")
    assert log.status_code == 200 and b"ada" in log.content
    assert admin_client.get(f"/admin/channels_app/delivery/{delivery.pk}/change/").status_code == 200


def test_the_deliveries_clock_is_scheduled():
    from importlib import import_module

    from django.apps import apps

    Schedule.objects.filter(name="channels_app.deliveries_tick").delete()
    import_module("channels_app.migrations.0003_delivery_schedule_and_topics").forwards(apps, None)
    schedule = Schedule.objects.get(name="channels_app.deliveries_tick")
    assert (schedule.func, schedule.schedule_type, schedule.minutes) == ("channels_app.tasks.deliveries_tick", "I", 1)


def test_secret_values_are_never_shown_in_the_admin(admin_client, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw-very-secret-value")
    sms = ChannelFactory(name="sms", kind="sms", provider="twilio_sms",
                         settings={"account_sid": "AC1", "auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})
    for url in ("/admin/channels_app/channel/", f"/admin/channels_app/channel/{sms.pk}/change/",
                f"/admin/channels_app/channel/{sms.pk}/history/"):
        page = admin_client.get(url)
        assert page.status_code == 200 and b"tw-very-secret-value" not in page.content


def test_the_consent_form_records_who_changed_it_and_when_not_what_ops_type(admin_client):
    from datetime import datetime, timedelta

    from django.utils import timezone

    from channels_app.models import Consent
    from journeys.choices import ApiScope
    from tests.apiclient import Api, make_token

    ada = CustomerFactory(external_id="ada")
    # the form asks for the choice and the reason; source and time are not fields to type
    form = admin_client.get("/admin/channels_app/consent/add/").content.decode()
    assert 'name="source"' not in form and 'name="updated_at' not in form and 'name="change_reason"' in form

    # when ops record an opt-out (a typed source and time are ignored)
    before = timezone.now()
    response = admin_client.post("/admin/channels_app/consent/add/", {
        "customer": ada.pk, "channel_kind": "email", "topic": topic("product_updates").pk, "status": "opted_out",
        "source": "typed", "updated_at_0": "2020-01-01", "updated_at_1": "11:36:00",
        "change_reason": "asked by phone, ticket 9"})

    # then the consent says who recorded it and when, and so do its history and the API
    assert response.status_code == 302, response.content.decode()[:2000]
    consent = Consent.objects.get(customer=ada)
    assert consent.source == "admin:admin" and before <= consent.updated_at <= timezone.now()
    change = consent.history.get()
    assert (change.history_user.username, change.history_change_reason) == ("admin", "asked by phone, ticket 9")
    _, key = make_token(ApiScope.CUSTOMERS_READ, name="crm")
    [shown] = Api(key).get(f"customers/{ada.pk}").body["consents"]
    shown_at = datetime.fromisoformat(shown["updated_at"].replace("Z", "+00:00"))
    assert shown["source"] == "admin:admin" and abs(shown_at - consent.updated_at) < timedelta(seconds=1)

    # a change later changes the status only: the customer, channel and topic stay as they are
    page = admin_client.get(f"/admin/channels_app/consent/{consent.pk}/change/").content.decode()
    assert 'name="customer"' not in page and 'name="status"' in page
    admin_client.post(f"/admin/channels_app/consent/{consent.pk}/change/", {
        "status": "opted_in", "change_reason": "subscribed again by letter"})
    consent.refresh_from_db()
    assert (consent.status, consent.source) == ("opted_in", "admin:admin") and consent.history.count() == 2


def test_ops_find_an_api_message_by_the_clients_key_though_only_its_digest_is_stored(admin_client):
    from channels_app.models import Delivery
    from journeys.services.api_jobs import idempotency_key_stored

    email = ChannelFactory(name="email", kind="email", provider="console")
    wanted = Delivery.objects.create(idempotency_key=idempotency_key_stored("api:receipt-4711"),
                                     customer=CustomerFactory(), channel=email, to="a@example.com", status="sent")
    Delivery.objects.create(idempotency_key=idempotency_key_stored("api:receipt-4712"), customer=CustomerFactory(),
                            channel=email, to="b@example.com", status="sent")

    page = admin_client.get("/admin/channels_app/delivery/", {"q": "receipt-4711"}).content.decode()

    assert f"/admin/channels_app/delivery/{wanted.pk}/change/" in page and "b@example.com" not in page


def test_a_delivery_shows_its_send_time_on_the_customers_clock_and_the_admin_says_times_are_utc(admin_client):
    from datetime import datetime, timezone

    from channels_app.models import Delivery

    email = ChannelFactory(name="email", kind="email", provider="console")
    sent = Delivery.objects.create(idempotency_key="tokyo-1", customer=CustomerFactory(timezone="Asia/Tokyo"),
                                   channel=email, to="a@example.com", status="sent",
                                   sent_at=datetime(2026, 12, 7, 23, 0, tzinfo=timezone.utc))

    page = admin_client.get(f"/admin/channels_app/delivery/{sent.pk}/change/").content.decode()

    assert "2026-12-08 08:00 Asia/Tokyo" in page  # the quiet-hours release at 08:00 there, not 11 p.m.
    assert "Times are shown in UTC." in page


def template_form(variants=(), **fields):
    """The template add/change form as the admin posts it, with inline variants (locale, subject)."""
    data = {"name": "promo", "subject": "Hello", "body": "Hello", "change_reason": "test",
            "variants-TOTAL_FORMS": len(variants), "variants-INITIAL_FORMS": 0, **fields}
    for i, (locale, subject) in enumerate(variants):
        data.update({f"variants-{i}-locale": locale, f"variants-{i}-subject": subject})
    return data


def test_a_variants_locale_is_saved_as_a_canonical_language_tag(admin_client):
    # when variants are typed as pt_BR, FR and zh_hant_tw
    response = admin_client.post("/admin/channels_app/messagetemplate/add/", template_form(
        [("pt_BR", "Olá"), ("FR", "Bonjour"), ("zh_hant_tw", "您好")]))

    # then they are saved as the tags customers' locales are matched with
    assert response.status_code == 302
    saved = MessageTemplate.objects.get(name="promo").variants.order_by("pk")
    assert [v.locale for v in saved] == ["pt-BR", "fr", "zh-Hant-TW"]


@pytest.mark.parametrize("locale", ["zz zz!!", "fr-", "pt__BR", "français", "12"])
def test_a_variant_whose_locale_is_no_language_tag_is_refused_saying_what_to_write(admin_client, locale):
    response = admin_client.post("/admin/channels_app/messagetemplate/add/", template_form([(locale, "Hi")]))

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert "is not a language tag" in errors["locale"][0] and "e.g. fr, pt-BR" in errors["locale"][0]
    assert not MessageTemplate.objects.filter(name="promo").exists()


def test_a_second_variant_with_the_same_tag_in_another_case_is_refused(admin_client):
    # when fr-CA and fr-ca are posted together
    response = admin_client.post("/admin/channels_app/messagetemplate/add/", template_form(
        [("fr-CA", "Allo"), ("fr-ca", "Bonjour")]))

    # then the second one's locale field says there is one already, and nothing is saved
    forms = response.context["inline_admin_formsets"][0].formset.forms
    assert not forms[0].errors
    assert "there is a variant for 'fr-CA' already" in forms[1].errors["locale"][0]
    assert not MessageTemplate.objects.filter(name="promo").exists()

    # and the database refuses it too, whatever writes it
    from django.db import IntegrityError, transaction
    template = TemplateFactory()
    template.variants.create(locale="fr-CA")
    with pytest.raises(IntegrityError), transaction.atomic():
        template.variants.create(locale="fr-ca")


def test_a_template_naming_a_content_block_that_does_not_exist_is_refused_at_save(admin_client):
    from channels_app.models import ContentBlock

    ContentBlock.objects.create(name="spring-offer", variants=[{"rule": "", "body": "10% off"}])

    # when the body names a block with a typo, and a variant's HTML another missing one
    response = admin_client.post("/admin/channels_app/messagetemplate/add/", template_form(
        [("fr", "Salut")], body='Your offer: {% content_block "spring-offre" %}',
        **{"variants-0-html_body": "<p>{% content_block 'nope' %}</p>"}))

    # then the body field names the block and the one meant; the variant's HTML field names its block
    assert response.status_code == 200
    body_error = response.context["adminform"].form.errors["body"][0]
    assert "content block 'spring-offre' does not exist (did you mean 'spring-offer'?)" in body_error
    variant_errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert "content block 'nope' does not exist" in variant_errors["html_body"][0]
    assert not MessageTemplate.objects.filter(name="promo").exists()

    # and with the right name it saves
    fixed = admin_client.post("/admin/channels_app/messagetemplate/add/", template_form(
        body='Your offer: {% content_block "spring-offer" %}'))
    assert fixed.status_code == 302


def test_a_variable_no_data_can_have_is_a_warning_at_save_and_in_the_preview(admin_client):
    # when a template reads trait.first_name (the root is traits), next to a loop variable and an optional trait
    response = admin_client.post("/admin/channels_app/messagetemplate/add/", template_form(
        body="Hi {{ trait.first_name }} {{ profile.nickname }} "
             "{% for item in event.properties.items %}{{ item.name }}{% endfor %}"), follow=True)

    # then it is saved, with a warning naming it and the root meant (not the optional or the loop variable)
    assert MessageTemplate.objects.filter(name="promo").exists()
    warnings = [str(m) for m in response.context["messages"] if m.level_tag == "warning"]
    assert len(warnings) == 1 and "trait.first_name (did you mean traits.first_name?)" in warnings[0]
    assert "profile.nickname" not in warnings[0] and "item.name" not in warnings[0]

    # and the preview lists it as unknown, and as missing
    template = MessageTemplate.objects.get(name="promo")
    preview = admin_client.post(f"/admin/channels_app/messagetemplate/{template.pk}/preview/", {"customer": ""})
    assert preview.context["rendered"]["unknown"] == ["trait.first_name"]
    assert "trait.first_name" in preview.context["rendered"]["missing"]
    assert "Unknown names" in preview.content.decode()


def test_the_preview_shows_the_variant_of_a_locale_typed_as_sdks_send_it(admin_client):
    template = TemplateFactory(subject="Hello")
    template.variants.create(locale="pt-BR", subject="Olá")
    url = f"/admin/channels_app/messagetemplate/{template.pk}/preview/"

    shown = admin_client.post(url, {"locale": "pt_br"})
    refused = admin_client.post(url, {"locale": "zz zz!!"})

    assert (shown.context["rendered"]["subject"], shown.context["rendered"]["locale"]) == ("Olá", "pt-BR")
    assert "is not a language tag" in refused.context["form"].errors["locale"][0]
