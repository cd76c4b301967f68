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


def test_an_outage_is_logged_and_the_channel_page_says_what_the_last_error_was(
        admin_client, chat, vendor, chat_messages, caplog, django_capture_on_commit_callbacks):
    from journeys.services.oplog import ops_log_reset
    from tests.channels_app.servers import Plan

    ops_log_reset()
    caplog.set_level("INFO", logger="channels_app.services.breaker")
    # given a provider that fails, quoting the recipient's address and number in its answer
    vendor.plan(Plan(503, {"error": "upstream down for ada@example.com / +44 7700 900123"}))

    # when a batch goes out: the breaker (threshold 1) opens at the first failure
    with django_capture_on_commit_callbacks(execute=True):
        deliveries_dispatch(delivery_ids=chat_messages(2))

    # then the page says what the last error was, without the address or the number
    health = _health(admin_client, chat)
    assert "errors 1 of 1 (100%), last at " in health
    assert "(HTTP 503: {&quot;error&quot;: &quot;upstream down for &lt;email&gt; / &lt;number&gt;&quot;})" in health
    # and one WARNING says the breaker opened, with the channel and the error code, another counts the failures
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "breaker of channel 'chat' (chat, slack) open after 1 consecutive failures (threshold 1); "
                       'last error HTTP 503: {"error": "upstream down for <email> / <number>"}; its messages wait '
                       "(or go to its fallback channel) and a probe is sent in 60 s") in lines
    assert ("WARNING", "provider errors on channel 'chat' (chat, slack): 1 failed attempt(s) (HTTP 503 1); last error "
                       'HTTP 503: {"error": "upstream down for <email> / <number>"}') in lines
    assert "ada@example.com" not in caplog.text and "900123" not in caplog.text

    # when the cooldown has passed and the probe goes through
    caplog.clear()
    with django_capture_on_commit_callbacks(execute=True):
        deliveries_dispatch(delivery_ids=chat_messages(1, key="later"), now=timezone.now() + timedelta(seconds=61))

    # then the probe and the closing are logged
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "breaker of channel 'chat' (chat, slack) half-open after its 60 s cooldown: one probe message "
                    "is sent") in lines
    assert any(level == "WARNING" and text.startswith("breaker of channel 'chat' (chat, slack) closed: the provider "
                                                      "answers again (open since ") for level, text in lines), lines
