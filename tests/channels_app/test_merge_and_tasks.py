"""Identity merges carry channel rows to the survivor; the q2 tasks are thin and work."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app import tasks
from channels_app.models import Consent, Delivery
from channels_app.services import consent_set, message_send
from journeys.models import Customer
from tests.channels_app.factories import ChannelFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


def test_merge_moves_deliveries_and_keeps_the_stricter_consent(api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "known", "traits": {"email": "k@example.com"}})
        api.post("track", {"anonymousId": "device-1", "event": "Viewed"})
    known = Customer.objects.get(external_id="known")
    anon = Customer.objects.exclude(pk=known.pk).get()
    email = ChannelFactory(name="email", kind="email", provider="console")
    with django_capture_on_commit_callbacks(execute=True):
        message_send(customer=anon, template=TemplateFactory(), channel=email, idempotency_key="a", context={})
    consent_set(customer=known, channel_kind="email", topic=topic("product_updates"), status="opted_in", source="x")
    consent_set(customer=anon, channel_kind="email", topic=topic("product_updates"), status="opted_out", source="y")
    consent_set(customer=anon, channel_kind="sms", topic=None, status="opted_out", source="sms_keyword:STOP")

    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "known", "anonymousId": "device-1"})

    assert Delivery.objects.get().customer_id == known.pk
    status = {(c.channel_kind, c.topic_id): c.status for c in Consent.objects.filter(customer=known)}
    assert status == {("email", topic("product_updates").pk): "opted_out", ("sms", None): "opted_out"}
    assert not Consent.objects.filter(customer=anon).exists()


def test_merge_keeps_an_opt_out_of_the_absorbed_profile_beside_the_survivors_bounce(api,
                                                                                  django_capture_on_commit_callbacks):
    from channels_app.services.consent import address_suppress, consent_refusal, unsubscribe_apply

    # given a known profile whose email bounced, and an anonymous one that unsubscribed from all email
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "known", "traits": {"email": "dead@example.com"}})
        api.post("track", {"anonymousId": "device-2", "event": "Viewed"})
    known = Customer.objects.get(external_id="known")
    anon = Customer.objects.exclude(pk=known.pk).get()
    address_suppress(customer=known, channel_kind="email", address="dead@example.com", detail="550 5.1.1")
    unsubscribe_apply(customer=anon, channel_kind="email", topic_slug=None, source="one_click_unsubscribe")

    # when they merge
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "known", "anonymousId": "device-2"})

    # then both hold: the dead address gets nothing, another address gets no marketing
    consent = Consent.objects.get(customer=known, channel_kind="email", topic__isnull=True)
    assert consent.source.startswith("one_click_unsubscribe hard_bounce:")
    assert consent_refusal(customer=known, channel_kind="email", topic=topic("transactional"),
                           address="dead@example.com") == "undeliverable"
    assert consent_refusal(customer=known, channel_kind="email", topic=topic("product_updates"),
                           address="new@example.com") == "channel_opt_out"


def test_tasks_dispatch_by_id_and_tick(django_capture_on_commit_callbacks):
    from tests.channels_app.factories import CustomerFactory

    email = ChannelFactory(name="email", kind="email", provider="console", paused=True)
    with django_capture_on_commit_callbacks(execute=False):
        delivery = message_send(customer=CustomerFactory(), template=TemplateFactory(), channel=email,
                                idempotency_key="t", context={})
    assert tasks.delivery_send(delivery.pk) == "deferred"
    email.paused = False
    email.save()
    # resumed behind the product's back: sent at the pause's recheck (an hour)
    assert tasks.delivery_send(delivery.pk, (timezone.now() + timedelta(minutes=61)).isoformat()) == "sent"
    assert tasks.deliveries_tick() == 0
