"""What happens after sending: status callbacks, opens and clicks, recorded on the
Delivery and as events (`Message Delivered`, `Email Opened`, `Link Clicked`...) so
journeys can react. Each event's message id comes from what happened, so a repeated
callback or a reloaded pixel is stored once."""

from __future__ import annotations

import hashlib
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from channels_app.choices import (
    DEAD_NUMBER_CODES, STATUS_RANK, UNSUBSCRIBED_CODES, ConsentStatus, DeliveryStatus, Reason,
)
from channels_app.models import Delivery
from channels_app.services.consent import (
    PHONE_KINDS, address_suppress, complaint_apply, consent_set, customers_by_phone,
)
from channels_app.services.sending import _event_properties
from channels_app.services.streaming import deliveries_stream
from journeys.choices import StreamEventType
from journeys.errors import JourneyError
from journeys.services.outbound import backoff_delay

# Vendor words (Twilio MessageStatus and CallStatus, SES/SendGrid event names) -> our status. A call
# that was answered and ended (`completed`) was heard: delivered. Words of a message still on its way
# (queued, sent, initiated, ringing, in-progress...) change nothing.
CALLBACK_STATUSES = {
    "delivered": DeliveryStatus.DELIVERED, "completed": DeliveryStatus.DELIVERED,
    "bounced": DeliveryStatus.BOUNCED, "bounce": DeliveryStatus.BOUNCED,
    "failed": DeliveryStatus.FAILED, "undelivered": DeliveryStatus.FAILED, "dropped": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED, "busy": DeliveryStatus.FAILED, "no-answer": DeliveryStatus.FAILED,
}
# A call nobody took (the line was busy, nobody answered): not delivered, and dialled again later as a
# transient error is retried (the channel's backoff), with a new idempotency key, until the channel's
# `max_attempts` are spent; then failed (reason attempts_exhausted).
REDIAL_STATUSES = frozenset({"busy", "no-answer"})
# Words for "the recipient marked it as spam" (SES/SendGrid/Postmark feedback loops).
COMPLAINT_STATUSES = frozenset({"complained", "complaint", "spamreport", "spam_report", "abuse"})
MAX_LATE_RECEIPTS = 10  # contradictory receipts kept on a delivery (a vendor repeating one stays bounded)
STREAM_TYPES = {
    DeliveryStatus.DELIVERED: StreamEventType.MESSAGE_DELIVERED,
    DeliveryStatus.BOUNCED: StreamEventType.MESSAGE_BOUNCED,
    DeliveryStatus.FAILED: StreamEventType.MESSAGE_FAILED,
}
EVENT_NAMES = {
    DeliveryStatus.DELIVERED: "Message Delivered",
    DeliveryStatus.BOUNCED: "Message Bounced",
    DeliveryStatus.FAILED: "Message Failed",
}


class CallbackRefused(JourneyError):
    """A status callback that is not about this delivery's message (its MessageSid or CallSid is
    another message's): nothing is recorded."""

    code = "callback_refused"


def _advance(delivery: Delivery, status: str) -> None:
    """Statuses only move forward (a late 'delivered' does not undo 'clicked')."""
    if STATUS_RANK.get(status, 0) > STATUS_RANK.get(delivery.status, 0):
        delivery.status = status


def _went_out(delivery: Delivery, at: datetime) -> None:
    """The vendor reports on a message (delivered, bounced, opened, clicked): it went out, so it is a
    contact for the caps, which count by `sent_at`. The report can come before the batch's result
    write sets `sent_at`: the moment is the send's mark, else its claim's (as the caps count a
    message in flight), else the report's own."""
    if delivery.sent_at is None:
        delivery.sent_at = delivery.accepted_at or delivery.claimed_at or at


def _engaged(delivery: Delivery, at: datetime) -> None:
    from journeys.models import Customer

    Customer.objects.filter(pk=delivery.customer_id).update(last_engaged_at=at)


def _locked(delivery_id: int) -> Delivery | None:
    """The delivery, locked, with its channel and customer (and the template and topic its events
    name) as they are once the lock is held. The lock is taken on the row alone: locking a join that
    a merge changes meanwhile (the delivery moves to the surviving customer) makes PostgreSQL
    recheck the old customer row, which no longer matches, and the receipt would find no delivery."""
    if Delivery.objects.select_for_update().filter(pk=delivery_id).values_list("pk", flat=True).first() is None:
        return None
    return Delivery.objects.select_related("channel", "customer", "template", "topic").get(pk=delivery_id)


def _same_message(delivery: Delivery, provider_id: str) -> None:
    """A callback names its message (Twilio's MessageSid / CallSid): one about another message (a
    forged post, an earlier call of a redialled one) is refused. Before the send's answer is written
    the delivery has no id yet (a redial clears the earlier call's id, kept in `notes.previous_ids`),
    and a callback that names none, or one that is not an earlier call's, is taken on its signed URL alone."""
    provider_id = (provider_id or "").strip()
    earlier = provider_id in ((delivery.notes or {}).get("previous_ids") or []) if provider_id else False
    if provider_id and (earlier or delivery.provider_message_id and provider_id != delivery.provider_message_id):
        raise CallbackRefused(f"this callback is about message {provider_id[:64]!r}, not this delivery's "
                              f"({delivery.provider_message_id!r})", field="MessageSid")


def redial_key(delivery: Delivery) -> str:
    """The idempotency key a send of this delivery carries: its own, and for a call dialled again
    after a busy line or no answer (`notes.redials`) one per dial, so the vendor places the new call
    rather than answering with the old one."""
    redials = (delivery.notes or {}).get("redials") or 0
    return f"{delivery.idempotency_key}:redial-{redials}" if redials else delivery.idempotency_key


def recipient_opt_out(*, delivery: Delivery, detail: str) -> None:
    """The vendor refused a message because its recipient unsubscribed there (Twilio 21610: the
    person texted STOP to the sending number, and every message to them is blocked until START).
    Whoever has that number is opted out of the channel kind, as our own inbound STOP does
    (consent.inbound_sms_handle), so nothing more is sent to a number that said STOP."""
    kind = delivery.channel.kind
    customers = {delivery.customer_id: delivery.customer}
    if kind in PHONE_KINDS:
        customers.update({c.pk: c for c in customers_by_phone(delivery.to)})
    for customer in customers.values():
        if customer.erased_at is None:
            consent_set(customer=customer, channel_kind=kind, topic=None, status=ConsentStatus.OPTED_OUT,
                        source="vendor_unsubscribed", reason=f"the vendor says the recipient unsubscribed: {detail}"[:300])


def _redial(delivery: Delivery, word: str, at: datetime) -> None:
    """A call nobody took: dialled again after the channel's backoff (REDIAL_STATUSES)."""
    channel = delivery.channel
    delivery.status, delivery.reason, delivery.error = DeliveryStatus.DEFERRED, Reason.RETRY, word
    delivery.next_attempt_at = at + backoff_delay(attempt=delivery.attempts, base_s=channel.retry_base_s,
                                                  max_s=channel.retry_max_s)
    notes = delivery.notes or {}
    previous = [*(notes.get("previous_ids") or []), delivery.provider_message_id][-MAX_LATE_RECEIPTS:]
    # the new call's own callback can come before the batch records its sid: the row then has none, and
    # only the earlier calls' sids (previous_ids) are refused
    delivery.notes = {**notes, "redials": int(notes.get("redials") or 0) + 1,
                      "previous_ids": [sid for sid in previous if sid]}
    delivery.provider_message_id = ""
    delivery.save(update_fields=["status", "reason", "error", "next_attempt_at", "notes", "provider_message_id",
                                 "updated_at"])


def _failure_reason(ours: str, word: str, code: str) -> str:
    if ours == DeliveryStatus.BOUNCED:
        return Reason.UNDELIVERABLE
    if code in UNSUBSCRIBED_CODES:
        return Reason.CHANNEL_OPT_OUT
    return Reason.ATTEMPTS_EXHAUSTED if word in REDIAL_STATUSES else Reason.PERMANENT_ERROR


def delivery_status_record(*, delivery_id: int, status: str, detail: str = "", at: datetime | None = None,
                           provider_id: str = "") -> Delivery | None:
    """A provider told us what became of a message (delivered, bounced, failed; a call completed,
    busy, unanswered, canceled). `provider_id`: the vendor's id of the message the callback is
    about, when it names one (CallbackRefused when it is not this delivery's).

    Statuses only move forward: a failure or bounce reported for a message already known to have
    arrived (delivered, opened, clicked) contradicts it; such a late receipt is kept in the
    delivery's notes (`late_receipts`) and changes nothing else (no status, event or stream
    record). A 'delivered' for a message reported failed is the stronger word and is recorded,
    so the outcome does not depend on the order the receipts come in. A callback that changes
    nothing (a repeat, a failure after a bounce) records nothing. A vendor code for a dead number
    bounces the message and suppresses the number; one for an unsubscribed recipient fails it and
    opts the customer out (recipient_opt_out); a busy or unanswered call is dialled again while
    the channel's attempts last (REDIAL_STATUSES)."""
    word = (status or "").strip().lower()
    if word not in CALLBACK_STATUSES and word not in COMPLAINT_STATUSES:
        # a message on its way (queued, sent, ringing...): read, with no lock and no transaction
        delivery = Delivery.objects.filter(pk=delivery_id).only("pk", "status", "provider_message_id", "notes").first()
        if delivery is not None:
            _same_message(delivery, provider_id)
        return delivery
    return _status_apply(delivery_id=delivery_id, status=status, word=word, detail=detail or "",
                         at=at or timezone.now(), provider_id=provider_id)


DELIVERED_FIELDS = ("status", "delivered_at", "reason", "next_attempt_at", "sent_at", "updated_at")


def delivery_delivered_apply(*, delivery: Delivery, at: datetime) -> bool:
    """The 'delivered' step on a locked delivery (not saved; DELIVERED_FIELDS are what it changes):
    False when nothing moves (a repeated receipt, records nothing). A status that moves clears the
    failure reason and the due time (a message reported failed or deferred, then delivered)."""
    was = (delivery.status, delivery.delivered_at)
    delivery.delivered_at = delivery.delivered_at or at
    _advance(delivery, DeliveryStatus.DELIVERED)
    if (delivery.status, delivery.delivered_at) == was:
        return False
    if delivery.status != was[0]:
        delivery.reason, delivery.next_attempt_at = "", None
    _went_out(delivery, at)
    return True


def deliveries_delivered_record(*, items: list[tuple[int, datetime, str]]) -> int:
    """delivery_status_record's 'delivered' for a batch of receipts (delivery id, time, detail), set-based
    (the caller holds the rows' locks): read with one query, the same step per row
    (delivery_delivered_apply), written with one UPDATE, their `Message Delivered` events with one
    INSERT and their stream records with one per distinct time. The same event ids
    (`status:<delivery>:delivered`), so a receipt recorded either way counts once. Returns how many moved."""
    from journeys.services.internal_events import InternalEvent, events_record_internal

    deliveries = Delivery.objects.select_related("channel", "customer", "template", "topic").in_bulk(
        sorted({pk for pk, _, _ in items}))
    now, changed, events = timezone.now(), {}, []
    for pk, at, detail in items:
        delivery = deliveries.get(pk)
        if delivery is None or pk in changed or not delivery_delivered_apply(delivery=delivery, at=at):
            continue
        delivery.updated_at = now
        changed[pk] = (delivery, at)
        if delivery.customer.erased_at is None:  # the row's statistics move; the erased person gets no event
            events.append(InternalEvent(
                customer_id=delivery.customer_id, user_id=delivery.customer.external_id,
                name=EVENT_NAMES[DeliveryStatus.DELIVERED], message_id=f"status:{pk}:{DeliveryStatus.DELIVERED}", at=at,
                properties={**_event_properties(delivery), "status": DeliveryStatus.DELIVERED, "detail": detail[:500]}))
    Delivery.objects.bulk_update([d for d, _ in changed.values()], list(DELIVERED_FIELDS))
    events_record_internal(events=events)
    by_time: dict[datetime, list[Delivery]] = {}
    for delivery, at in changed.values():
        if delivery.customer.erased_at is None:
            by_time.setdefault(at, []).append(delivery)
    for at, group in by_time.items():
        deliveries_stream(deliveries=group, event_type=StreamEventType.MESSAGE_DELIVERED, at=at)
    return len(changed)


@transaction.atomic
def _status_apply(*, delivery_id: int, status: str, word: str, detail: str, at: datetime,
                  provider_id: str) -> Delivery | None:
    from journeys.services.internal_events import InternalEvent, events_record_internal

    code = detail.strip()
    ours = CALLBACK_STATUSES.get(word)
    if ours == DeliveryStatus.FAILED and code in DEAD_NUMBER_CODES:
        ours = DeliveryStatus.BOUNCED
    delivery = _locked(delivery_id)
    if delivery is None:
        return delivery
    _same_message(delivery, provider_id)
    if word in COMPLAINT_STATUSES:
        _complained(delivery, detail or word, at)
        return delivery
    if ours != DeliveryStatus.DELIVERED and STATUS_RANK.get(delivery.status, 0) >= STATUS_RANK[DeliveryStatus.DELIVERED]:
        receipts = [*(delivery.notes or {}).get("late_receipts", []),
                    {"status": ours, "detail": (detail or status)[:500], "at": at.isoformat()}]
        delivery.notes = {**(delivery.notes or {}), "late_receipts": receipts[-MAX_LATE_RECEIPTS:]}
        delivery.save(update_fields=["notes", "updated_at"])
        return delivery
    if ours == DeliveryStatus.DELIVERED:
        if not delivery_delivered_apply(delivery=delivery, at=at):
            return delivery  # a repeated receipt: nothing moves, nothing is recorded
    elif delivery.status not in (DeliveryStatus.SENT, DeliveryStatus.SENDING):
        return delivery  # already failed, bounced or waiting to be sent again: nothing moves, nothing is recorded
    elif word in REDIAL_STATUSES and delivery.attempts < delivery.channel.max_attempts:
        _redial(delivery, word, at)
        return delivery
    else:
        delivery.status = ours
        delivery.error = (detail or status)[:4000]
        delivery.reason = _failure_reason(ours, word, code)
        if ours == DeliveryStatus.BOUNCED:
            _went_out(delivery, at)
        elif delivery.sent_at is None:  # failed: a contact only if the vendor had taken it (the mark)
            delivery.sent_at = delivery.accepted_at
    delivery.save()
    live = delivery.customer.erased_at is None
    if ours == DeliveryStatus.BOUNCED and delivery.to and live:
        address_suppress(customer=delivery.customer, channel_kind=delivery.channel.kind, address=delivery.to,
                         detail=f"{status} {detail}".strip())
    if ours == DeliveryStatus.FAILED and delivery.reason == Reason.CHANNEL_OPT_OUT and live:
        recipient_opt_out(delivery=delivery, detail=f"{status} {detail}".strip())
    if not live:
        return delivery  # the row's statistics move; the erased person gets no new event
    events_record_internal(events=[InternalEvent(
        customer_id=delivery.customer_id, user_id=delivery.customer.external_id, name=EVENT_NAMES[ours],
        message_id=f"status:{delivery.pk}:{ours}", at=at,
        properties={**_event_properties(delivery), "status": ours, "detail": detail[:500]})])
    deliveries_stream(deliveries=[delivery], event_type=STREAM_TYPES[ours], at=at)
    return delivery


def _complained(delivery: Delivery, detail: str, at: datetime) -> None:
    """A spam complaint about this message: noted on it (once), and the customer is out of all but
    transactional messages on its channel kind (complaint_apply)."""
    if (delivery.notes or {}).get("complaint"):
        return
    delivery.notes = {**(delivery.notes or {}), "complaint": {"detail": detail[:500], "at": at.isoformat()}}
    delivery.save(update_fields=["notes", "updated_at"])
    if delivery.customer.erased_at is None:
        complaint_apply(customer=delivery.customer, channel_kind=delivery.channel.kind, detail=detail)


@transaction.atomic
def delivery_open_record(*, delivery_id: int, at: datetime | None = None) -> Delivery | None:
    """The open pixel was loaded: one `Email Opened` event per delivery."""
    from journeys.services.internal_events import event_record_internal

    delivery = _locked(delivery_id)
    if delivery is None:
        return None
    at = at or timezone.now()
    delivery.opened_at = delivery.opened_at or at
    _advance(delivery, DeliveryStatus.OPENED)
    _went_out(delivery, at)
    delivery.save()
    if delivery.customer.erased_at is not None:
        return delivery
    _engaged(delivery, at)
    event_record_internal(customer=delivery.customer, name="Email Opened", message_id=f"open:{delivery.pk}",
                          properties=_event_properties(delivery), at=at)
    deliveries_stream(deliveries=[delivery], event_type=StreamEventType.MESSAGE_OPENED, at=at)
    return delivery


@transaction.atomic
def delivery_click_record(*, delivery_id: int, url: str, at: datetime | None = None) -> Delivery | None:
    """A tracked link was followed: one `Link Clicked` per delivery and URL (a click implies an open)."""
    from journeys.services.internal_events import event_record_internal

    delivery = _locked(delivery_id)
    if delivery is None:
        return None
    at = at or timezone.now()
    delivery.opened_at = delivery.opened_at or at
    delivery.clicked_at = delivery.clicked_at or at
    _advance(delivery, DeliveryStatus.CLICKED)
    _went_out(delivery, at)
    delivery.save()
    if delivery.customer.erased_at is not None:
        return delivery
    _engaged(delivery, at)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    event_record_internal(customer=delivery.customer, name="Link Clicked", message_id=f"click:{delivery.pk}:{digest}",
                          properties={**_event_properties(delivery), "url": url}, at=at)
    deliveries_stream(deliveries=[delivery], event_type=StreamEventType.MESSAGE_CLICKED, at=at, key_suffix=f":{digest}",
                      extra={"url": url})
    return delivery
