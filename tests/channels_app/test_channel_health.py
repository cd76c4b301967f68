"""A channel's health on its admin pages: read fresh on every view (breaker, when it last opened,
errors and the last one, p95), and a handful of errors among many attempts not shown as "0%"."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from channels_app.models import Delivery, DeliveryAttempt
from channels_app.services import deliveries_dispatch
from tests.channels_app.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def _health(client, channel):
    page = client.get(reverse("admin:channels_app_channel_change", args=[channel.pk])).content.decode()
    return re.search(r"circuit \w+[^<]*p95 [^<]*", page).group(0)


def test_the_channel_page_reads_its_health_fresh_on_every_view(admin_client, chat, vendor, chat_messages):
    # given a channel that sent two messages fine
    deliveries_dispatch(delivery_ids=chat_messages(2))
    first = _health(admin_client, chat)
    assert "2 attempts; errors 0 of 2 (0%)" in first and "circuit closed" in first

    # when the provider then fails and the breaker opens
    vendor.fail(1, status=500)
    deliveries_dispatch(delivery_ids=chat_messages(2, key="n"))

    # then the same page, reloaded, shows it: the open breaker, the error and when it happened
    again = _health(admin_client, chat)
    assert again.startswith("circuit open (last opened ")
    assert "3 attempts; errors 1 of 3 (33%), last at " in again
    # and the list agrees with it
    listed = admin_client.get(reverse("admin:channels_app_channel_changelist")).content.decode()
    assert "1 of 3 (33%)" in listed
    assert _health(admin_client, chat) == again


def test_a_few_errors_among_many_attempts_are_not_zero_percent(admin_client, chat):
    # given an hour with 199 good calls taking 1..199 ms and one failed call
    delivery = Delivery.objects.create(idempotency_key="d", customer=CustomerFactory(), channel=chat)
    now = timezone.now()
    DeliveryAttempt.objects.bulk_create(
        [DeliveryAttempt(delivery=delivery, channel=chat, at=now - timedelta(minutes=1), ok=True, latency_ms=ms)
         for ms in range(1, 200)]
        + [DeliveryAttempt(delivery=delivery, channel=chat, at=now, ok=False, error="HTTP 503"),
           DeliveryAttempt(delivery=delivery, channel=chat, at=now - timedelta(hours=2), ok=False)])

    health = _health(admin_client, chat)

    # then the error shows as what it is, and the p95 is the nearest-rank value of the hour
    assert "200 attempts; errors 1 of 200 (0.50%), last at " in health and health.endswith("p95 190 ms")
