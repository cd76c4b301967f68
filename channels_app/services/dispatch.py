"""Dispatching: send one recorded Delivery outside any transaction. Send-time checks
(consent again, pause, breaker and fallback, quiet hours, caps, recent contact, rate) and
the claim run in one short transaction, the provider call in none, the result in another.
Transient errors are retried with exponential backoff and jitter; the sweeper finds
what is due."""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from channels_app.choices import ChannelKind, DeliveryStatus, Reason
from channels_app.models import Channel, Delivery, DeliveryAttempt
from channels_app.providers import OutgoingMessage, ProviderError, get_provider
from channels_app.services import breaker as breakers
from channels_app.services import policy
from channels_app.services.consent import consent_refusal
from channels_app.services.links import link_url
from channels_app.services.sending import _enqueue, _event_properties, _links, channel_pick
from channels_app.services.streaming import deliveries_stream
from journeys.services.governance import outbound_hold

logger = logging.getLogger(__name__)

# A claimed ("sending") delivery whose worker died is retried after this long. The
# provider gets the same idempotency key / Message-ID, so it can drop the duplicate.
SENDING_LEASE = timedelta(minutes=10)
# A queued delivery whose enqueue was lost is picked up by the sweeper after this long.
QUEUED_GRACE = timedelta(seconds=30)
PAUSE_RECHECK = timedelta(minutes=1)


def _hold(delivery: Delivery, reason: str, until: datetime | None, detail: str = "") -> Delivery:
    if until is None:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.SUPPRESSED, None
    else:
        delivery.status, delivery.next_attempt_at = DeliveryStatus.DEFERRED, until
    delivery.reason, delivery.error = reason, detail
    delivery.save()
    if until is None:
        deliveries_stream(deliveries=[delivery])
    return delivery


def _send_checks(delivery: Delivery, now: datetime) -> Delivery | None:
    """Send-time checks on a locked row; returns the row when it was held (not to send now)."""
    from journeys.engine.runtime import profile_dict

    customer = delivery.customer
    refusal = consent_refusal(customer=customer, channel_kind=delivery.channel.kind, topic=delivery.topic) \
        if delivery.channel.kind != ChannelKind.WEBHOOK else None
    if refusal:
        return _hold(delivery, refusal, None, "consent changed before sending")
    channel = delivery.channel
    if channel.paused:
        return _hold(delivery, Reason.PAUSED, now + PAUSE_RECHECK, f"channel {channel.name} is paused")
    # Journeys' outage switches: global safe mode and workflow pauses hold the message (deferred, not lost).
    if why := outbound_hold(run_id=delivery.run_id):
        return _hold(delivery, Reason.PAUSED, now + PAUSE_RECHECK, why)
    allowed, retry_at = (channel.enabled, None)
    if allowed:
        allowed, retry_at = breakers.breaker_allow(channel=channel, now=now)
    if not allowed:
        profile = profile_dict(customer, now)
        fallback, to, _ = (channel_pick(channel=channel.fallback, profile=profile, customer=customer, topic=delivery.topic)
                           if channel.fallback_id else (None, "", ""))
        if fallback is not None and not fallback.paused and breakers.breaker_allow(channel=fallback, now=now)[0]:
            delivery.notes = {**delivery.notes, "rerouted": [*delivery.notes.get("rerouted", []),
                              {"from": channel.name, "to": fallback.name, "at": now.isoformat(),
                               "why": "breaker open" if channel.enabled else "channel disabled"}]}
            delivery.requested_channel = delivery.requested_channel or channel
            delivery.channel, delivery.to = fallback, to
            channel = fallback
        elif not channel.enabled:
            return _hold(delivery, Reason.NO_ADDRESS, None, f"channel {channel.name} is disabled, no usable fallback")
        else:
            return _hold(delivery, Reason.BREAKER_OPEN, retry_at, f"breaker of {channel.name} is open")
    # A reply the customer is waiting for (a chat answer) is not an unsolicited contact:
    # consent applies (above), quiet hours and caps do not.
    if not delivery.transactional and not (delivery.policy or {}).get("in_reply_to"):
        hold = (policy.quiet_hours_hold(channel=channel, customer=customer, now=now)
                or policy.frequency_cap_hold(delivery=delivery, now=now)
                or policy.recent_contact_hold(delivery=delivery, now=now))
        if hold:
            return _hold(delivery, hold.reason, hold.until, hold.detail)
    hold = policy.rate_limit_hold(channel=channel, now=now)
    if hold:
        return _hold(delivery, hold.reason, hold.until, hold.detail)
    return None


def _outgoing(delivery: Delivery) -> OutgoingMessage:
    headers = {}
    if delivery.channel.kind == ChannelKind.EMAIL and not delivery.transactional:
        links = _links(delivery)
        headers = {"List-Unsubscribe": f"<{links['unsubscribe_url']}>",
                   "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    return OutgoingMessage(
        delivery_id=delivery.pk, idempotency_key=delivery.idempotency_key, kind=delivery.channel.kind,
        to=delivery.to, subject=delivery.subject, body=delivery.body, html_body=delivery.html_body, headers=headers,
        status_callback_url=link_url(purpose="status", data={"d": delivery.pk}),
        metadata={"customer": delivery.customer.external_id, "run_id": delivery.run_id, "step": delivery.step_key},
    )


def retry_delay(*, channel: Channel, attempt: int, retry_after: float | None) -> timedelta:
    """Exponential backoff with jitter (half fixed, half random); never sooner than Retry-After."""
    ceiling = min(channel.retry_max_s, channel.retry_base_s * 2 ** max(0, attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after + random.uniform(0, min(5.0, retry_after * 0.1)))
    return timedelta(seconds=delay)


def delivery_dispatch(*, delivery_id: int, now: datetime | None = None) -> Delivery:
    """Send one queued or due delivery: checks and claim in one short transaction, the
    provider call outside any transaction, the result in another. A delivery that is
    not queued or due (already sending, sent, suppressed) is left alone."""
    now = now or timezone.now()
    with transaction.atomic():
        delivery = (Delivery.objects.select_for_update(of=("self",)).select_related("channel", "customer", "topic")
                    .filter(pk=delivery_id).first())
        if delivery is None or delivery.status not in (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED):
            return delivery
        if delivery.status == DeliveryStatus.DEFERRED and delivery.next_attempt_at and delivery.next_attempt_at > now:
            return delivery
        held = _send_checks(delivery, now)
        if held is not None:
            return held
        # Compare-and-set claim: only one worker moves it to "sending" (also on SQLite).
        claimed = Delivery.objects.filter(pk=delivery.pk, status=delivery.status).update(
            status=DeliveryStatus.SENDING, attempts=delivery.attempts + 1, claimed_at=now,
            channel=delivery.channel, to=delivery.to, requested_channel=delivery.requested_channel,
            notes=delivery.notes, reason="", error="",
        )
        if not claimed:
            return delivery
        delivery.status, delivery.attempts, delivery.claimed_at = DeliveryStatus.SENDING, delivery.attempts + 1, now
        delivery.reason = delivery.error = ""
        message = _outgoing(delivery)
    channel = delivery.channel
    started = time.monotonic()
    try:
        result = get_provider(channel.provider, channel.settings).send(message)
        failure = None
    except ProviderError as exc:
        result, failure = None, exc
    except Exception as exc:  # a provider bug must not leave the row "sending" forever
        logger.exception("provider %s crashed on delivery %s", channel.provider, delivery.pk)
        result, failure = None, ProviderError(f"{type(exc).__name__}: {exc}")
    latency = int((time.monotonic() - started) * 1000)
    return _record(delivery=delivery, result=result, failure=failure, latency=latency, now=now)


@transaction.atomic
def _record(*, delivery: Delivery, result, failure: ProviderError | None, latency: int, now: datetime) -> Delivery:
    from journeys.services.internal_events import event_record_internal

    channel = delivery.channel
    DeliveryAttempt.objects.create(
        delivery=delivery, channel=channel, at=now, ok=failure is None, latency_ms=latency,
        transient=bool(failure and failure.transient), error=str(failure or "")[:4000],
        status_code=(failure.status_code if failure else result.status_code),
    )
    delivery = (Delivery.objects.select_for_update(of=("self",))
                .select_related("channel", "customer", "template", "topic").get(pk=delivery.pk))
    if failure is None:
        delivery.status, delivery.sent_at, delivery.latency_ms = DeliveryStatus.SENT, now, latency
        delivery.provider_message_id = result.provider_message_id[:255]
        delivery.next_attempt_at, delivery.reason, delivery.error = None, "", ""
        delivery.save()
        breakers.breaker_record(channel=channel, ok=True, now=now)
        event_record_internal(customer=delivery.customer, name="Message Sent", message_id=f"sent:{delivery.pk}",
                              properties=_event_properties(delivery), at=now)
        deliveries_stream(deliveries=[delivery], at=now)
        return delivery
    delivery.error = str(failure)[:4000]
    if failure.transient:
        breakers.breaker_record(channel=channel, ok=False, now=now, error=str(failure))
        if delivery.attempts < channel.max_attempts:
            delivery.status, delivery.reason = DeliveryStatus.DEFERRED, Reason.RETRY
            delivery.next_attempt_at = now + retry_delay(channel=channel, attempt=delivery.attempts,
                                                          retry_after=failure.retry_after)
            delivery.save()
            return delivery
        delivery.reason = Reason.ATTEMPTS_EXHAUSTED
    else:
        delivery.reason = Reason.PERMANENT_ERROR
    delivery.status, delivery.next_attempt_at = DeliveryStatus.FAILED, None
    delivery.save()
    event_record_internal(customer=delivery.customer, name="Message Failed", message_id=f"status:{delivery.pk}:failed",
                          properties={**_event_properties(delivery), "error": delivery.error[:500]}, at=now)
    deliveries_stream(deliveries=[delivery], at=now)
    return delivery




def deliveries_dispatch(*, delivery_ids: list[int]) -> dict:
    """Dispatch several deliveries one after another (the engine queues one task per batch).
    Each has its own claim and result transactions, so one that fails (a bug, a provider
    raising something unexpected) is logged and left to the sweeper; the others go on.
    The internal events they record are enqueued together at the end."""
    from journeys.engine.queue import enqueue_collected

    outcome: dict[str, int] = {}
    with enqueue_collected():  # their Message Sent events: one events_process task, not one each
        for pk in delivery_ids:
            try:
                delivery = delivery_dispatch(delivery_id=pk)
                status = delivery.status if delivery else "missing"
            except Exception:
                logger.exception("dispatching delivery %s failed", pk)
                status = "error"
            outcome[status] = outcome.get(status, 0) + 1
    return outcome


def deliveries_dispatch_due(*, now: datetime | None = None, limit: int = 500) -> int:
    """The sweeper (every minute): deferred deliveries whose time has come, queued ones
    whose enqueue was lost, and sends whose worker died (lease expired)."""
    from django.db.models import Q
    from django_q.tasks import async_task

    now = now or timezone.now()
    Delivery.objects.filter(status=DeliveryStatus.SENDING, claimed_at__lt=now - SENDING_LEASE).update(
        status=DeliveryStatus.DEFERRED, reason=Reason.RETRY, next_attempt_at=now, error="send lease expired")
    due = (Delivery.objects.filter(
        Q(status=DeliveryStatus.DEFERRED, next_attempt_at__lte=now)
        | Q(status=DeliveryStatus.QUEUED, created_at__lte=now - QUEUED_GRACE))
        .order_by("next_attempt_at", "id").values_list("pk", flat=True)[:limit])
    ids = list(due)
    for pk in ids:
        async_task("channels_app.tasks.delivery_send", pk, now.isoformat(), group="deliveries")
    return len(ids)


@transaction.atomic
def delivery_requeue(*, delivery: Delivery, actor: str) -> Delivery:
    """Send a failed or bounced delivery again (an operator's decision after an outage).
    Only rows that never reached the customer for sure; the same idempotency key is kept."""
    delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
    if delivery.status not in (DeliveryStatus.FAILED, DeliveryStatus.DEFERRED):
        return delivery
    delivery.status, delivery.reason, delivery.next_attempt_at = DeliveryStatus.QUEUED, "", None
    delivery.attempts = 0
    delivery.notes = {**delivery.notes, "requeued": [*delivery.notes.get("requeued", []), actor]}
    delivery.save()
    _enqueue(delivery)
    return delivery


def deliveries_release_on_resume(*, scope: str, key: str) -> None:
    """Journeys' HOLD_RELEASE_HOOKS entry: safe mode ended or a workflow resumed (runs on commit).
    One task releases them, so they go out oldest first."""
    from django_q.tasks import async_task

    async_task("channels_app.services.dispatch.deliveries_release_held", scope, key, group="deliveries")


def deliveries_release_held(scope: str = "", key: str = "", now: datetime | None = None) -> int:
    """Send the deliveries held by a pause, oldest first, through the normal send path (consent,
    quiet hours, caps and breakers apply again; one still held stays deferred)."""
    from journeys.models import JourneyRun

    now = now or timezone.now()
    held = Delivery.objects.filter(status=DeliveryStatus.DEFERRED, reason=Reason.PAUSED)
    if scope == "workflow":
        held = held.filter(run_id__in=JourneyRun.objects.filter(workflow_id=int(key)).values("pk"))
    ids = list(held.order_by("created_at", "id").values_list("pk", flat=True))
    Delivery.objects.filter(pk__in=ids).update(next_attempt_at=now)
    for pk in ids:
        delivery_dispatch(delivery_id=pk, now=now)
    return len(ids)
