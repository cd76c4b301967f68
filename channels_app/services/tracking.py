"""What happens after sending: status callbacks, opens and clicks, recorded on the
Delivery and as events (`Message Delivered`, `Email Opened`, `Link Clicked`...) so
journeys can react. Each event's message id comes from what happened, so a repeated
callback or a reloaded pixel is stored once."""

from __future__ import annotations

import hashlib
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from channels_app.choices import STATUS_RANK, DeliveryStatus
from channels_app.models import Delivery
from channels_app.services.consent import address_suppress, complaint_apply
from channels_app.services.sending import _event_properties
from channels_app.services.streaming import deliveries_stream
from journeys.choices import StreamEventType

# Vendor words (Twilio MessageStatus, SES/SendGrid event names) -> our status.
CALLBACK_STATUSES = {
    "delivered": DeliveryStatus.DELIVERED,
    "bounced": DeliveryStatus.BOUNCED, "bounce": DeliveryStatus.BOUNCED,
    "failed": DeliveryStatus.FAILED, "undelivered": DeliveryStatus.FAILED, "dropped": DeliveryStatus.FAILED,
}
# Vendor error codes of an undelivered SMS that say the number itself cannot get messages (Twilio:
# 30005 unknown or inactive number, 30006 landline or unreachable carrier, 21211 invalid number,
# 21614 not a mobile number): recorded as a bounce, and the number suppressed like a hard bounce.
PERMANENT_NUMBER_CODES = frozenset({"30005", "30006", "21211", "21614"})
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
    """The delivery, locked, with its channel and customer as they are once the lock is held. The
    lock is taken on the row alone: locking a join that a merge changes meanwhile (the delivery
    moves to the surviving customer) makes PostgreSQL recheck the old customer row, which no longer
    matches, and the receipt would find no delivery."""
    if Delivery.objects.select_for_update().filter(pk=delivery_id).values_list("pk", flat=True).first() is None:
        return None
    return Delivery.objects.select_related("channel", "customer").get(pk=delivery_id)


@transaction.atomic
def delivery_status_record(*, delivery_id: int, status: str, detail: str = "", at: datetime | None = None) -> Delivery | None:
    """A provider told us what became of a message (delivered, bounced, failed).

    Statuses only move forward: a failure or bounce reported for a message already known to have
    arrived (delivered, opened, clicked) contradicts it; such a late receipt is kept in the
    delivery's notes (`late_receipts`) and changes nothing else (no status, event or stream
    record). A 'delivered' for a message reported failed is the stronger word and is recorded,
    so the outcome does not depend on the order the receipts come in."""
    from journeys.services.internal_events import event_record_internal

    word = (status or "").strip().lower()
    ours = CALLBACK_STATUSES.get(word)
    if ours == DeliveryStatus.FAILED and (detail or "").strip() in PERMANENT_NUMBER_CODES:
        ours = DeliveryStatus.BOUNCED
    delivery = _locked(delivery_id)
    if delivery is None:
        return delivery
    at = at or timezone.now()
    if word in COMPLAINT_STATUSES:
        _complained(delivery, detail or word, at)
        return delivery
    if ours is None:
        return delivery
    if ours != DeliveryStatus.DELIVERED and STATUS_RANK.get(delivery.status, 0) >= STATUS_RANK[DeliveryStatus.DELIVERED]:
        receipts = [*(delivery.notes or {}).get("late_receipts", []),
                    {"status": ours, "detail": (detail or status)[:500], "at": at.isoformat()}]
        delivery.notes = {**(delivery.notes or {}), "late_receipts": receipts[-MAX_LATE_RECEIPTS:]}
        delivery.save(update_fields=["notes", "updated_at"])
        return delivery
    if ours == DeliveryStatus.DELIVERED:
        delivery.delivered_at = delivery.delivered_at or at
        _advance(delivery, ours)
        _went_out(delivery, at)
    elif delivery.status in (DeliveryStatus.SENT, DeliveryStatus.SENDING):
        delivery.status = ours
        delivery.error = (detail or status)[:4000]
        if ours == DeliveryStatus.BOUNCED:
            _went_out(delivery, at)
        elif delivery.sent_at is None:  # failed: a contact only if the vendor had taken it (the mark)
            delivery.sent_at = delivery.accepted_at
    delivery.save()
    if ours == DeliveryStatus.BOUNCED and delivery.status == DeliveryStatus.BOUNCED and delivery.to \
            and delivery.customer.erased_at is None:
        address_suppress(customer=delivery.customer, channel_kind=delivery.channel.kind, address=delivery.to,
                         detail=f"{status} {detail}".strip())
    if delivery.customer.erased_at is not None:
        return delivery  # the row's statistics move; the erased person gets no new event
    event_record_internal(customer=delivery.customer, name=EVENT_NAMES[ours], at=at,
                          message_id=f"status:{delivery.pk}:{ours}",
                          properties={**_event_properties(delivery), "status": ours, "detail": detail[:500]})
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
