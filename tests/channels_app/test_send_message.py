"""send_message inside the demo's cart-abandonment journey, end to end."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app.models import Channel, Delivery
from config.demo import demo_load
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.engine.scheduler import runs_wake_due, watches_fire_due
from journeys.models import Event, JourneyRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(api):
    reset_caches()
    demo_load()
    yield
    reset_caches()


def post(api, capture, kind, **body):
    with capture(execute=True):
        assert api.post(kind, body).status_code == 200


def test_cart_abandonment_sends_email_then_sms_to_valuable_customers(demo, api, django_capture_on_commit_callbacks):
    post(api, django_capture_on_commit_callbacks, "identify", userId="big", traits={"email": "big@example.com", "phone": "+15550001", "ltv": 900, "first_name": "Bea"})
    post(api, django_capture_on_commit_callbacks, "track", userId="big", event="Checkout Started", properties={"total": 250})

    with django_capture_on_commit_callbacks(execute=True):
        watches_fire_due(now=timezone.now() + timedelta(hours=2))
    email = Delivery.objects.get()
    assert (email.channel.kind, email.to, email.status) == ("email", "big@example.com", "sent")
    assert "Bea" in email.subject and "250" in email.body

    with django_capture_on_commit_callbacks(execute=True):
        runs_wake_due(now=timezone.now() + timedelta(hours=27))
    sms = Delivery.objects.exclude(pk=email.pk).get()
    assert (sms.channel.kind, sms.to) == ("sms", "+15550001")
    assert JourneyRun.objects.get().status == "completed"


def test_order_within_the_window_sends_nothing(demo, api, django_capture_on_commit_callbacks):
    post(api, django_capture_on_commit_callbacks, "identify", userId="u", traits={"email": "u@example.com"})
    post(api, django_capture_on_commit_callbacks, "track", userId="u", event="Checkout Started")
    post(api, django_capture_on_commit_callbacks, "track", userId="u", event="Order Completed")
    watches_fire_due(now=timezone.now() + timedelta(hours=2))
    assert Delivery.objects.count() == 0


def test_disabled_channel_falls_back_and_retry_does_not_send_twice(demo, api, django_capture_on_commit_callbacks):
    Channel.objects.filter(name="sms").update(enabled=False)
    post(api, django_capture_on_commit_callbacks, "identify", userId="s", traits={"email": "s@example.com", "ltv": 2000})
    post(api, django_capture_on_commit_callbacks, "track", userId="s", event="Support Message", properties={"sentiment": -0.9})
    event = Event.objects.get(name="Support Message")
    assert Delivery.objects.filter(status="sent").count() == 1

    Event.objects.filter(pk=event.pk).update(status="pending")
    events_process(event_ids=[event.pk])

    assert Delivery.objects.count() == 1


def test_customer_without_address_is_suppressed_not_failed(demo, api, django_capture_on_commit_callbacks):
    post(api, django_capture_on_commit_callbacks, "track", userId="nomail", event="Support Message", properties={"sentiment": -1})
    delivery = Delivery.objects.get()
    assert delivery.status == "suppressed" and "no enabled channel" in delivery.error
