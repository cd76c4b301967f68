"""GET /metrics: the on-call's figures in Prometheus' text format, for a token with the metrics:read
scope or an allowed address; every figure read through an index (PostgreSQL plans checked)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys.models import ApiRequest, Event, QuarantinedEvent
from tests.apiclient import make_token
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def backlog(source):
    """An event waiting 10 minutes, a quarantined one, an SMS channel with an open breaker and a
    message held by it, a queued email and one that failed to render."""
    from channels_app.models import ChannelBreaker, Delivery
    from tests.channels_app.factories import ChannelFactory

    now = timezone.now()
    customer = CustomerFactory()
    Event.objects.create(source=source, message_id="late", type="track", name="Stuck", customer=customer,
                         timestamp=now - timedelta(minutes=10), received_at=now - timedelta(minutes=10))
    QuarantinedEvent.objects.create(source=source, code="invalid_event", message="bad", payload="{}", digest="d",
                                    received_at=now)
    sms = ChannelFactory(name="sms", kind="sms", provider="console")
    email = ChannelFactory(name="email", kind="email", provider="console")
    ChannelBreaker.objects.create(channel=sms, state="open", consecutive_failures=5, opened_at=now)
    Delivery.objects.create(idempotency_key="h", customer=customer, channel=sms, status="deferred",
                            reason="breaker_open", body="x")
    Delivery.objects.create(idempotency_key="q", customer=customer, channel=email, status="queued", body="x")
    Delivery.objects.create(idempotency_key="f", customer=customer, channel=email, status="failed",
                            reason="template_error")


def test_a_token_with_the_metrics_scope_reads_the_figures_in_prometheus_text(client, backlog):
    token, key = make_token("metrics:read")

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert response.status_code == 200 and response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.content.decode()
    assert "# TYPE journeys_events_pending gauge\njourneys_events_pending 1\n" in text
    assert 595 <= float(re.search(r"^journeys_events_oldest_pending_age_seconds (\S+)$", text, re.M).group(1)) <= 660
    assert "\njourneys_quarantine_unreviewed 1\n" in text and "\njourneys_quarantine_refused_last_hour 1\n" in text
    assert 'journeys_quarantine_refused_last_hour_by_source{source="web"} 1' in text
    assert 'journeys_deliveries_waiting{channel="sms",state="held"} 1' in text
    assert 'journeys_deliveries_waiting{channel="email",state="queued"} 1' in text
    assert 'journeys_deliveries_failed_last_hour{channel="email"} 1' in text
    assert 'journeys_channel_breaker_state{channel="sms",state="open"} 1' in text
    assert 'journeys_channel_breaker_state{channel="email",state="closed"} 1' in text
    assert 'journeys_tasks_queued{cluster="journeys"} 0' in text and "\njourneys_safe_mode 0\n" in text
    # and the call is in the token's access log
    assert ApiRequest.objects.filter(token=token, path="/metrics", status=200).count() == 1


def test_without_a_token_or_with_another_scope_it_is_refused(client, backlog):
    _, other = make_token("channels:read")

    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == 'Bearer realm="metrics"'
    wrong = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {other}")
    assert (wrong.status_code, wrong.content.decode()) == (403, "this token lacks the 'metrics:read' scope\n")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer jct_nope").status_code == 401


def test_an_allowed_address_reads_them_without_a_token(client, backlog, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "127.0.0.1"]

    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200 and "journeys_events_pending 1" in response.content.decode()
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 401


BIG_TABLES = ("journeys_event", "journeys_quarantinedevent", "journeys_journeyrun", "channels_app_delivery",
              "channels_app_deliveryattempt", "journeys_stepexecution")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans: PostgreSQL only")
def test_every_figure_is_read_through_an_index_not_the_history(backlog):
    from journeys.console.metrics import metrics_collect

    # given the queries of a scrape
    with CaptureQueriesContext(connection) as queries:
        metrics_collect()
    statements = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert statements

    # when each is planned with sequential scans priced out
    scanned = {}
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in statements:
            cursor.execute(f"EXPLAIN {sql}")
            plan = " ".join(row[0] for row in cursor.fetchall())
            for table in BIG_TABLES:
                if re.search(rf"Seq Scan on {table}\b", plan):
                    scanned[table] = plan

    # then no table that grows with the history is read whole (small ones may be: channels, the queue)
    assert scanned == {}


def test_waiting_messages_and_pending_events_are_counted_up_to_the_cap(client, backlog, monkeypatch):
    """A scrape reads at most the cap's rows per figure, however long the backlog."""
    from channels_app.models import Channel, Delivery
    from journeys.console import metrics

    monkeypatch.setattr(metrics, "COUNT_CAP", 2)
    email, customer = Channel.objects.get(name="email"), CustomerFactory()
    for n in range(3):
        Delivery.objects.create(idempotency_key=f"q{n}", customer=customer, channel=email, status="queued", body="x")
        Event.objects.create(source=Event.objects.get(message_id="late").source, message_id=f"p{n}", type="track",
                             name="Stuck", customer=customer, timestamp=timezone.now(), received_at=timezone.now())
    token, key = make_token("metrics:read")

    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {key}").content.decode()

    assert "\njourneys_events_pending 2\n" in text
    assert 'journeys_deliveries_waiting{channel="email",state="queued"} 2' in text
    assert 'journeys_deliveries_waiting{channel="sms",state="held"} 1' in text
