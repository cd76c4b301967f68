"""A large batch for a provider across a network goes over several sessions at once (the
channel's `connections`): a remote SMTP relay or HTTP API answers in tens of milliseconds, and
one session would bound a dispatcher to a few dozen messages a second. Real servers; each
message still goes out once, is marked as soon as it is accepted, and a breaker that opens
mid-batch stops every session."""

from __future__ import annotations

from collections import Counter

import pytest
from django.db.models import Count
from django.utils import timezone

from channels_app.models import Delivery, DeliveryAttempt
from channels_app.providers import provider
from channels_app.providers.http import WebhookProvider
from channels_app.services import deliveries_dispatch, deliveries_drain
from channels_app.tasks import deliveries_send
from channels_app.services.channel_settings import channel_settings_problems
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory
from tests.channels_app.servers import Plan
from tests.channels_app.test_dispatch_batch import record

pytestmark = pytest.mark.django_db


@pytest.fixture
def crowd():
    return [CustomerFactory(external_id=f"c{i}", email=f"c{i}@example.com", traits={"first_name": f"C{i}"})
            for i in range(100)]


def hook_channel(vendor, monkeypatch, **extra):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    settings = {"url": vendor.url + "/hook", "secret_env": "JOURNEYS_SECRET_TEST_HOOK", "timeout": 5, "connections": 4}
    return ChannelFactory(name="hook", kind="webhook", provider="webhook", retry_base_s=10,
                          **{"breaker_threshold": 5, **extra}, settings=settings)


def test_a_large_batch_of_emails_goes_over_several_smtp_sessions_each_message_once(
        smtp, crowd, django_capture_on_commit_callbacks):
    email = ChannelFactory(name="email", kind="email", provider="smtp",
                           settings={"from_email": "news@shop.test", "connections": 4})
    deliveries = record(email, crowd, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert sorted(m["To"] for m in smtp.messages) == sorted(c.email for c in crowd)  # each one, once
    assert len(set(smtp.peers)) == 4  # four sessions
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    assert set(rows.values_list("status", flat=True)) == {"sent"}
    assert not rows.filter(accepted_at__isnull=True).exists()
    assert len({m["Message-ID"] for m in smtp.messages}) == 100
    assert DeliveryAttempt.objects.filter(delivery__in=rows).count() == 100
    assert Event.objects.filter(name="Message Sent").count() == 100


def test_a_slow_vendor_is_called_over_several_connections_at_once(vendor, monkeypatch, crowd,
                                                                    django_capture_on_commit_callbacks):
    vendor.default = Plan(200, {"id": "ok"}, delay=0.03)
    hook = hook_channel(vendor, monkeypatch)
    deliveries = record(hook, crowd[:80], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert vendor.max_in_flight == 4 and len(set(vendor.ports)) == 4
    keys = Counter(r.headers["Idempotency-Key"] for r in vendor.requests)
    assert sorted(keys) == sorted(d.idempotency_key for d in deliveries) and set(keys.values()) == {1}
    assert set(Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).values_list("status", flat=True)) == {"sent"}


def test_a_breaker_that_opens_mid_batch_stops_every_connection_and_nothing_goes_twice(
        vendor, monkeypatch, crowd, django_capture_on_commit_callbacks):
    vendor.plan(*[Plan(200, {"id": f"ok-{i}"}, delay=0.01) for i in range(10)])
    vendor.default = Plan(503, {"error": "down"}, delay=0.01)
    hook = hook_channel(vendor, monkeypatch, breaker_threshold=3)
    deliveries = record(hook, crowd[:80], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    statuses = Counter(rows.values_list("status", "reason"))
    assert statuses[("sent", "")] == 10
    # every call is on record, one per message at most: the ones a lane had made when the breaker
    # opened are taken too; no lane starts another after that (one more in flight on each of the three
    # other lanes at most). The breaker counts consecutive failures as their answers are taken: the
    # tenth success, answered after up to two failures on faster lanes, starts the count again, so it
    # opens after 3 to 5 failures (a CI run under load took 5)
    calls = len(vendor.requests)
    assert DeliveryAttempt.objects.filter(delivery__in=rows).count() == calls <= 10 + 5 + 3
    assert not rows.annotate(n=Count("attempt_log")).filter(n__gt=1).exists()
    assert len({r.headers["Idempotency-Key"] for r in vendor.requests}) == calls
    assert statuses[("deferred", "retry")] == calls - 10  # the failed calls: retried later
    assert statuses[("deferred", "breaker_open")] == 80 - calls  # never called: wait for the breaker


def test_a_small_batch_keeps_one_connection(vendor, monkeypatch, crowd, django_capture_on_commit_callbacks):
    hook = hook_channel(vendor, monkeypatch)
    deliveries = record(hook, crowd[:30], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    assert len(set(vendor.ports)) == 1 and len(vendor.requests) == 30  # 30 // 20 messages a session: one


@pytest.mark.parametrize("value", [0, -1, 33, "4", 2.5, True])
def test_connections_must_be_a_small_whole_number(value):
    problems = channel_settings_problems(provider="smtp", settings={"connections": value})
    assert problems and problems[0].startswith("connections:"), problems


def test_connections_setting_accepts_1_to_32():
    assert channel_settings_problems(provider="webhook", settings={"connections": 1, "url": "https://example.com/h"}) == []
    assert channel_settings_problems(provider="smtp", settings={"connections": 32}) == []


@provider
class CrashingVendor(WebhookProvider):
    """A provider with a bug: it crashes on one recipient."""

    name = "crashing_webhook_for_tests"

    def send(self, message):
        if message.to == "c7@example.com":
            raise RuntimeError("provider bug")
        return super().send(message)


def test_a_provider_that_crashes_in_one_session_fails_that_message_alone(vendor, monkeypatch, crowd,
                                                                        django_capture_on_commit_callbacks):
    """The crash stops every session (what they had in flight is taken and marked); the crashed
    message fails, the others are claimed again on fresh providers and go out once each."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_HOOK", "s3cret")
    channel = ChannelFactory(name="buggy", kind="in_app", provider="crashing_webhook_for_tests",
                             settings={"url": vendor.url + "/hook", "secret_env": "JOURNEYS_SECRET_TEST_HOOK",
                                       "connections": 4})
    deliveries = record(channel, crowd[:80], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    for d in deliveries:  # the webhook document's "to" is the delivery's address
        d.to = d.customer.email
    Delivery.objects.bulk_update(deliveries, ["to"])

    deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    crashed = rows.get(to="c7@example.com")
    assert (crashed.status, crashed.reason) == ("failed", "permanent_error") and "provider bug" in crashed.error
    assert set(rows.exclude(pk=crashed.pk).values_list("status", flat=True)) == {"sent"}
    keys = Counter(r.headers["Idempotency-Key"] for r in vendor.requests)
    assert len(keys) == 79 and set(keys.values()) == {1}


def slow_hook(vendor, monkeypatch, settings):
    """A vendor taking 0.1 s a message over one connection, for a dispatcher given 0.5 s."""
    settings.DELIVERY_DRAIN_SECONDS = 0.5
    vendor.default = Plan(200, {"id": "ok"}, delay=0.1)
    hook = hook_channel(vendor, monkeypatch)
    hook.settings = {**hook.settings, "connections": 1}
    hook.save()
    return hook


def test_a_vendor_too_slow_for_the_task_timeout_gets_the_rest_in_a_task_of_its_own(
        vendor, monkeypatch, crowd, settings, orm_broker, django_capture_on_commit_callbacks):
    """A pass against a slow vendor would outlast the task (q2 kills it: the batch would wait for
    the send lease, ten minutes). The dispatcher stops handing messages over when its time is up,
    even inside a pass; the rest goes on in a task of its own, each message once."""
    from django_q.models import OrmQ

    hook = slow_hook(vendor, monkeypatch, settings)
    deliveries = record(hook, crowd[:30], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])

    outcome = deliveries_dispatch(delivery_ids=[d.pk for d in deliveries])

    first = len(vendor.requests)
    assert 1 <= first < 15 and outcome["sent"] == first
    assert rows.filter(status="sent").count() == first
    rest = rows.exclude(status="sent")
    assert set(rest.values_list("status", flat=True)) <= {"queued", "deferred"}
    assert set(rest.values_list("attempts", flat=True)) == {0}  # an attempt the vendor never saw is not counted

    def handed_on():
        queued = [q for q in OrmQ.objects.all() if q.task["func"] == "channels_app.tasks.deliveries_send"]
        OrmQ.objects.filter(pk__in=[q.pk for q in queued]).delete()
        return [q.task["args"][0] for q in queued]

    (ids,) = handed_on()
    assert sorted(ids) == sorted(rest.values_list("pk", flat=True))
    for _ in range(10):  # the worker runs the tasks handed on, one after another
        deliveries_send(ids)
        if not (tasks := handed_on()):
            break
        (ids,) = tasks
    assert set(rows.values_list("status", flat=True)) == {"sent"}
    keys = Counter(r.headers["Idempotency-Key"] for r in vendor.requests)
    assert sorted(keys) == sorted(d.idempotency_key for d in deliveries) and set(keys.values()) == {1}


def test_a_drain_stops_inside_a_pass_when_its_time_is_up(vendor, monkeypatch, crowd, settings,
                                                         django_capture_on_commit_callbacks):
    """The drain (due deliveries, batch after batch) keeps to its time inside a pass too: what it did
    not hand over is due again at once, for the next drain, with its attempt not counted."""
    hook = slow_hook(vendor, monkeypatch, settings)
    deliveries = record(hook, crowd[:30], django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    rows.update(status="deferred", reason="retry", next_attempt_at=timezone.now())

    deliveries_drain()

    first = rows.filter(status="sent").count()
    assert 1 <= first < 15 and len(vendor.requests) == first
    rest = rows.exclude(status="sent")
    assert set(rest.values_list("status", "reason", "attempts")) == {("deferred", "retry", 0)}
    assert not rest.filter(next_attempt_at__gt=timezone.now()).exists()  # due again at once

    deliveries_drain(seconds=30)

    assert set(rows.values_list("status", flat=True)) == {"sent"}
    keys = Counter(r.headers["Idempotency-Key"] for r in vendor.requests)
    assert set(keys.values()) == {1} and len(keys) == 30
