"""A vendor that hangs (every request runs to the channel's timeout) delays only its own
channel's messages: the healthy channel's part of the same claimed batch goes out in the first
pass, the hanging channel costs at most one timeout a pass (the rest of its part waits its
first retry delay, unanswered messages keep their key and channel), its breaker opens on the
time lost, not only on a count, and a Retry-After longer than the cooldown delays the probe."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app.models import ChannelBreaker, Delivery
from channels_app.services import deliveries_dispatch, message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.channels_app.servers import Plan
from tests.channels_app.test_dispatch_batch import email  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db

TIMEOUT_S = 0.5


@pytest.fixture
def people():
    return [CustomerFactory(external_id=f"h{i}", email=f"h{i}@example.com", traits={"first_name": f"H{i}"})
            for i in range(5)]


@pytest.fixture
def hanging_hook(vendor, monkeypatch):
    """A webhook channel whose vendor answers each request long after the channel's timeout."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    vendor.default = Plan(200, {"id": "late"}, delay=2 * TIMEOUT_S)
    return ChannelFactory(name="hook", kind="webhook", provider="webhook", retry_base_s=30, breaker_threshold=20,
                          breaker_cooldown_s=60, max_attempts=10,
                          settings={"url": vendor.url + "/hook", "secret_env": "JOURNEYS_SECRET_TEST_HOOK",
                                    "timeout": TIMEOUT_S})


def record(channel, people, *, django_capture_on_commit_callbacks) -> list[Delivery]:
    """Deliveries recorded (queued) without sending them: their send task is dropped."""
    template = TemplateFactory(topic=topic("product_updates"), body="Hi {{ profile.first_name }}")
    with django_capture_on_commit_callbacks(execute=False):
        return [message_send(customer=c, template=template, channel=channel, context={},
                             idempotency_key=f"{channel.name}-{c.external_id}") for c in people]


def mixed_batch(email, hook, people, capture) -> tuple[list[Delivery], list[Delivery]]:
    """Each customer gets a webhook call and an email, recorded alternately (one claimed batch)."""
    hooks, emails = [], []
    for person in people:
        hooks += record(hook, [person], django_capture_on_commit_callbacks=capture)
        emails += record(email, [person], django_capture_on_commit_callbacks=capture)
    return hooks, emails


def test_a_hanging_webhook_costs_one_timeout_a_pass_and_the_emails_of_the_batch_all_go_out(
        email, hanging_hook, people, smtp, vendor, settings, django_capture_on_commit_callbacks):
    settings.DELIVERY_BREAKER_FAILING_S = 0  # the count only here: the pass's own behaviour
    hooks, emails = mixed_batch(email, hanging_hook, people, django_capture_on_commit_callbacks)
    now = timezone.now()

    started = time.monotonic()
    deliveries_dispatch(delivery_ids=[d.pk for d in hooks + emails], now=now)
    took = time.monotonic() - started

    # every email of the batch is sent in this pass
    assert sorted(m["To"] for m in smtp.messages) == sorted(p.email for p in people)
    assert set(Delivery.objects.filter(channel=email).values_list("status", flat=True)) == {"sent"}
    # one webhook request (one timeout), not one per message
    assert len(vendor.requests) == 1
    assert took < 4 * TIMEOUT_S
    rows = {d.pk: d for d in Delivery.objects.filter(channel=hanging_hook)}
    tried = rows[next(d.pk for d in hooks if d.idempotency_key == vendor.requests[0].headers["Idempotency-Key"])]
    assert (tried.status, tried.reason, tried.attempts, tried.notes.get("unanswered")) == ("deferred", "retry", 1, True)
    rest = [rows[d.pk] for d in hooks if d.pk != tried.pk]
    # the others were never handed over: no attempt counted, a short wait (the channel's first retry
    # delay), not "again at once"
    assert {(d.status, d.reason, d.attempts) for d in rest} == {("deferred", "retry", 0)}
    assert all(d.next_attempt_at >= now + timedelta(seconds=hanging_hook.retry_base_s) for d in rest)
    assert all("timed out" in d.error for d in rest)

    # a later pass: again at most one timeout; unanswered messages keep their channel and key
    later = now + timedelta(hours=1)
    deliveries_dispatch(delivery_ids=list(rows), now=later)
    assert len(vendor.requests) == 2
    assert set(Delivery.objects.filter(channel=hanging_hook).values_list("status", flat=True)) == {"deferred"}
    assert {r.headers["Idempotency-Key"] for r in vendor.requests} <= {d.idempotency_key for d in hooks}
    assert len(smtp.messages) == len(people)  # nothing sent twice


def test_the_breaker_of_a_hanging_vendor_opens_on_the_time_lost(
        email, hanging_hook, people, smtp, vendor, settings, django_capture_on_commit_callbacks):
    settings.DELIVERY_BREAKER_FAILING_S = 2 * TIMEOUT_S  # two timeouts; the count (20) is far off
    hooks, emails = mixed_batch(email, hanging_hook, people, django_capture_on_commit_callbacks)
    ids = [d.pk for d in hooks]
    now = timezone.now()

    deliveries_dispatch(delivery_ids=ids + [d.pk for d in emails], now=now)
    breaker = ChannelBreaker.objects.get(channel=hanging_hook)
    assert (breaker.state, breaker.consecutive_failures) == ("closed", 1)
    assert breaker.failing_ms >= TIMEOUT_S * 1000

    deliveries_dispatch(delivery_ids=ids, now=now + timedelta(minutes=5))
    breaker.refresh_from_db()
    assert (breaker.state, breaker.consecutive_failures) == ("open", 2)
    assert len(vendor.requests) == 2

    # open: the next pass holds the channel's messages without a request
    deliveries_dispatch(delivery_ids=ids, now=now + timedelta(minutes=5, seconds=10))
    assert len(vendor.requests) == 2
    assert "breaker_open" in set(Delivery.objects.filter(channel=hanging_hook).values_list("reason", flat=True))


def test_a_retry_after_longer_than_the_cooldown_delays_the_half_open_probe(
        vendor, monkeypatch, people, django_capture_on_commit_callbacks):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    hook = ChannelFactory(name="hook", kind="webhook", provider="webhook", breaker_threshold=2, breaker_cooldown_s=5,
                          settings={"url": vendor.url + "/hook", "secret_env": "JOURNEYS_SECRET_TEST_HOOK",
                                    "timeout": 5})
    vendor.fail(2, status=429, headers={"Retry-After": "120"})
    first = record(hook, people[:2], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    now = timezone.now()

    deliveries_dispatch(delivery_ids=[d.pk for d in first], now=now)
    assert ChannelBreaker.objects.get(channel=hook).state == "open"

    # past the cooldown, but not past the vendor's Retry-After: no probe
    (late,) = record(hook, people[2:3], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    deliveries_dispatch(delivery_ids=[late.pk], now=now + timedelta(seconds=30))
    late.refresh_from_db()
    assert len(vendor.requests) == 2
    assert (late.status, late.reason) == ("deferred", "breaker_open")
    assert late.next_attempt_at >= now + timedelta(seconds=120)

    # after it: the probe goes out, succeeds and closes the breaker
    deliveries_dispatch(delivery_ids=[late.pk], now=now + timedelta(seconds=121))
    late.refresh_from_db()
    assert len(vendor.requests) == 3 and late.status == "sent"
    assert ChannelBreaker.objects.get(channel=hook).state == "closed"


def test_deliveries_can_be_sent_by_a_cluster_of_their_own(
        email, people, settings, orm_broker, django_capture_on_commit_callbacks):
    """Q_DELIVERY_CLUSTER: every sending task (the send of new messages, the tick's drains) is
    queued for that cluster, so a hanging vendor never takes the workers that process events."""
    from django_q.models import OrmQ

    from channels_app.services import deliveries_dispatch_due

    settings.Q_DELIVERY_CLUSTER = "deliveries"
    template = TemplateFactory(topic=topic("product_updates"), body="Hi")
    with django_capture_on_commit_callbacks(execute=True):
        message_send(customer=people[0], template=template, channel=email, context={}, idempotency_key="c-1")
    deliveries_dispatch_due(now=timezone.now() + timedelta(minutes=5))  # the enqueue "lost": the tick drains it

    queued = {(q.key, q.task["func"]) for q in OrmQ.objects.all()}
    assert queued == {("deliveries", "channels_app.tasks.delivery_send"),
                      ("deliveries", "channels_app.tasks.deliveries_drain")}
