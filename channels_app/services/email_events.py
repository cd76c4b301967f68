"""Bounces and complaints that email vendors report after the SMTP session: Amazon SES (through
SNS), SendGrid's Event Webhook, Postmark and Mailgun post them, later and account-wide, to one
webhook (`/channels/email-events/<channel id>/`, channels_app.views.email_events).

Each report is matched to its delivery by our Message-ID (`<delivery-<id>.<digest>@domain>`,
checked against the delivery's idempotency key) where the payload carries it, else by the
recipient's latest email delivery, and has the effect a status callback has
(channels_app.services.tracking.delivery_status_record): a permanent bounce marks the delivery
bounced and suppresses the address, a complaint opts the customer out of all but transactional
email, a delivery receipt marks it delivered. A transient bounce is only noted on the delivery.

Vendors retry: a report whose effect is already there is counted as `already` and costs no write.
A batch (SendGrid posts arrays) is matched with a fixed number of queries whatever its size and
applied in one transaction; a malformed item is reported and skipped, never costing the others."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

from django.db import DatabaseError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from channels_app.choices import STATUS_RANK, ChannelKind, DeliveryStatus
from channels_app.models import Delivery
from channels_app.providers.email import POSTMARK_METADATA_KEY, message_id_digest
from channels_app.services.tracking import deliveries_delivered_record, delivery_status_record
from journeys.errors import JourneyError
from journeys.selectors import customers_holding

log = logging.getLogger(__name__)

MAX_ITEMS = 5000  # events in one post (SendGrid batches stay far below)
MAX_SOFT_BOUNCES = 10  # transient bounces kept on a delivery (a vendor retrying for days stays bounded)

BOUNCE, SOFT_BOUNCE, COMPLAINT, DELIVERED, FAILED = "bounce", "soft_bounce", "complaint", "delivered", "failed"
# What each kind is called when handed to delivery_status_record (a status callback's words).
STATUS_WORDS = {BOUNCE: "bounced", COMPLAINT: "complaint", FAILED: "dropped"}  # delivered: tracking.deliveries_delivered_record

_OUR_MESSAGE_ID = re.compile(r"^\s*<?delivery-(\d{1,18})\.([0-9a-f]{20})(?:@[^<>\s]*)?>?\s*$", re.IGNORECASE)
# Postmark bounce types that say the address itself is dead; every other type (SoftBounce,
# Transient, DnsError, AutoResponder, Blocked...) is noted only. SpamComplaint is a complaint.
POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
# SendGrid `dropped` reasons: its own suppression lists say why it did not try.
SENDGRID_DROPPED = {"bounced address": BOUNCE, "spam reporting address": COMPLAINT}


class EmailEventsRefused(JourneyError):
    """The body is not a report of a vendor we read (HTTP 400, naming the problem)."""


@dataclass(frozen=True)
class EmailEvent:
    """One vendor report about one recipient of one message."""

    index: str  # where it was in the body ("0", "3", "bouncedRecipients[1]"), for the report
    kind: str  # BOUNCE, SOFT_BOUNCE, COMPLAINT, DELIVERED, FAILED
    message_id: str  # the Message-ID the vendor names ("" when none)
    address: str  # the recipient
    detail: str  # the vendor's words, for the delivery's error and the consent's history
    key: str  # the vendor's id of the report (dedupes a noted transient bounce)
    at: datetime | None


@dataclass
class Parsed:
    events: list[EmailEvent]
    problems: list[dict]
    ignored: int = 0
    vendor: str = ""
    subscribe_url: str = ""  # an SNS subscription waiting to be confirmed


# --------------------------------------------------------------------------- parsing


def _text(value: Any, limit: int = 500) -> str:
    return value.strip()[:limit] if isinstance(value, str) else ""


def _when(value: Any) -> datetime | None:
    """An ISO 8601 time (SES, Postmark, SendGrid's newer fields) or Unix seconds (SendGrid, Mailgun)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=dt_timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            at = parse_datetime(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if at is not None and timezone.is_naive(at):
            at = timezone.make_aware(at, dt_timezone.utc)
        return at
    return None


def _problem(problems: list[dict], index: str, error: str) -> None:
    problems.append({"index": index, "error": error})


def _sendgrid(items: list, parsed: Parsed) -> None:
    """SendGrid's Event Webhook: an array of {"event", "email", "smtp-id", "sg_event_id", "reason",
    "type", "timestamp", ...}. `bounce` of type `blocked` is SendGrid's temporary block."""
    parsed.vendor = "sendgrid"
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            _problem(parsed.problems, str(i), "an event must be a JSON object")
            continue
        event = item.get("event")
        if not isinstance(event, str) or not event:
            _problem(parsed.problems, str(i), "event: missing")
            continue
        reason = _text(item.get("reason")) or _text(item.get("response")) or _text(item.get("status"))
        if event == "bounce":
            kind = SOFT_BOUNCE if item.get("type") == "blocked" else BOUNCE
        elif event == "dropped":
            kind = SENDGRID_DROPPED.get(reason.lower(), FAILED)
        elif event == "spamreport":
            kind = COMPLAINT
        elif event == "delivered":
            kind = DELIVERED
        else:  # processed, deferred, open, click, unsubscribe, group_*: not reports about delivery we act on
            parsed.ignored += 1
            continue
        _add(parsed, index=str(i), kind=kind, message_id=item.get("smtp-id"), address=item.get("email"),
             detail=f"sendgrid {event}: {reason}".rstrip(": "), key=item.get("sg_event_id"),
             at=_when(item.get("timestamp")))


def _add(parsed: Parsed, *, index: str, kind: str, message_id: Any, address: Any, detail: str, key: Any,
         at: datetime | None) -> None:
    """One event, or a problem when it names neither a message nor an address."""
    message_id, address = _text(message_id, 998), _text(address, 320)
    if not message_id and "@" not in address:
        _problem(parsed.problems, index, "names neither a Message-ID nor a recipient address")
        return
    parsed.events.append(EmailEvent(index=index, kind=kind, message_id=message_id, address=address,
                                    detail=detail[:500], key=str(key)[:200] if key is not None else "", at=at))


def _ses_message_id(mail: dict) -> str:
    """Our Message-ID as SES keeps it: SES writes its own header when it sends, and reports the
    original in `commonHeaders.messageId` and `headers` (when the notification includes headers)."""
    common = mail.get("commonHeaders")
    if isinstance(common, dict) and _text(common.get("messageId"), 998):
        return _text(common.get("messageId"), 998)
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            return _text(header.get("value"), 998)
    return ""


def _ses(notification: dict, parsed: Parsed, index: str) -> None:
    """An SES notification (`notificationType`, or `eventType` from a configuration set's event
    destination): Bounce (bounceType Permanent / Transient / Undetermined, bouncedRecipients),
    Complaint (complainedRecipients), Delivery (delivery.recipients)."""
    parsed.vendor = "ses"
    kind_word = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    message_id = _ses_message_id(mail)
    if kind_word == "Bounce":
        bounce = notification.get("bounce") if isinstance(notification.get("bounce"), dict) else {}
        kind = BOUNCE if bounce.get("bounceType") == "Permanent" else SOFT_BOUNCE
        what = f"ses {bounce.get('bounceType', '')} {bounce.get('bounceSubType', '')}".strip()
        recipients = bounce.get("bouncedRecipients")
        if not isinstance(recipients, list) or not recipients:
            _problem(parsed.problems, index, "bounce.bouncedRecipients: missing")
            return
        for j, rcpt in enumerate(recipients):
            rcpt = rcpt if isinstance(rcpt, dict) else {}
            detail = _text(rcpt.get("diagnosticCode")) or _text(rcpt.get("status"))
            _add(parsed, index=f"{index}bouncedRecipients[{j}]", kind=kind, message_id=message_id,
                 address=rcpt.get("emailAddress"), detail=f"{what}: {detail}".rstrip(": "),
                 key=f"{bounce.get('feedbackId', '')}:{j}", at=_when(bounce.get("timestamp")))
    elif kind_word == "Complaint":
        complaint = notification.get("complaint") if isinstance(notification.get("complaint"), dict) else {}
        recipients = complaint.get("complainedRecipients")
        if not isinstance(recipients, list) or not recipients:
            _problem(parsed.problems, index, "complaint.complainedRecipients: missing")
            return
        feedback = _text(complaint.get("complaintFeedbackType")) or "complaint"
        for j, rcpt in enumerate(recipients):
            rcpt = rcpt if isinstance(rcpt, dict) else {}
            _add(parsed, index=f"{index}complainedRecipients[{j}]", kind=COMPLAINT, message_id=message_id,
                 address=rcpt.get("emailAddress"), detail=f"ses complaint: {feedback}",
                 key=f"{complaint.get('feedbackId', '')}:{j}", at=_when(complaint.get("timestamp")))
    elif kind_word == "Delivery":
        delivery = notification.get("delivery") if isinstance(notification.get("delivery"), dict) else {}
        for j, address in enumerate(delivery.get("recipients") or mail.get("destination") or [""]):
            _add(parsed, index=f"{index}recipients[{j}]", kind=DELIVERED, message_id=message_id, address=address,
                 detail=f"ses delivery: {_text(delivery.get('smtpResponse'))}".rstrip(": "), key="",
                 at=_when(delivery.get("timestamp")))
    elif isinstance(kind_word, str) and kind_word:
        parsed.ignored += 1  # Send, Open, Click, Reject, DeliveryDelay... (a configuration set may send them)
    else:
        _problem(parsed.problems, index, "notificationType: missing")


def _sns(envelope: dict, parsed: Parsed) -> None:
    """An SNS post: a Notification whose `Message` (a string) holds the SES notification, or a
    SubscriptionConfirmation whose SubscribeURL ops must visit (nothing is fetched from here)."""
    parsed.vendor = "ses"
    kind = envelope.get("Type")
    if kind == "SubscriptionConfirmation":
        parsed.subscribe_url = _text(envelope.get("SubscribeURL"), 2000)
        if not parsed.subscribe_url.startswith("https://"):
            _problem(parsed.problems, "SubscribeURL", "missing or not https")
        return
    if kind != "Notification":
        parsed.ignored += 1  # UnsubscribeConfirmation
        return
    message = envelope.get("Message")
    if not isinstance(message, str):
        _problem(parsed.problems, "Message", "must be a string holding the SES notification")
        return
    try:
        notification = json.loads(message)
    except ValueError as exc:
        _problem(parsed.problems, "Message", f"is not valid JSON: {exc}")
        return
    if not isinstance(notification, dict):
        _problem(parsed.problems, "Message", "must hold a JSON object")
        return
    _ses(notification, parsed, "Message.")


def _postmark(record: dict, parsed: Parsed) -> None:
    """A Postmark webhook: RecordType Bounce (Type HardBounce, SoftBounce, Transient...; Email,
    MessageID, Metadata, Details, BouncedAt), SpamComplaint, Delivery."""
    parsed.vendor = "postmark"
    record_type, bounce_type = record.get("RecordType"), record.get("Type")
    metadata = record.get("Metadata") if isinstance(record.get("Metadata"), dict) else {}
    if record_type == "SpamComplaint" or (record_type == "Bounce" and bounce_type in ("SpamComplaint", "SpamNotification")):
        kind = COMPLAINT
    elif record_type == "Bounce":
        kind = BOUNCE if bounce_type in POSTMARK_HARD else SOFT_BOUNCE
    elif record_type == "Delivery":
        kind = DELIVERED
    else:  # Open, Click, SubscriptionChange
        parsed.ignored += 1
        return
    at = _when(record.get("BouncedAt") or record.get("DeliveredAt"))
    detail = _text(record.get("Details")) or _text(record.get("Description"))
    _add(parsed, index="0", kind=kind, message_id=metadata.get(POSTMARK_METADATA_KEY),
         address=record.get("Email") or record.get("Recipient"),
         detail=f"postmark {bounce_type or record_type}: {detail}".rstrip(": "),
         key=record.get("ID") or record.get("MessageID"), at=at)


def _mailgun(body: dict, parsed: Parsed) -> None:
    """A Mailgun webhook: {"signature": ..., "event-data": {"event": failed (severity permanent /
    temporary) | complained | delivered, "recipient", "message": {"headers": {"message-id"}}, "id"}}."""
    parsed.vendor = "mailgun"
    data = body.get("event-data")
    if not isinstance(data, dict):
        _problem(parsed.problems, "event-data", "must be a JSON object")
        return
    event = data.get("event")
    if event == "failed":
        kind = BOUNCE if data.get("severity") == "permanent" else SOFT_BOUNCE
    elif event == "complained":
        kind = COMPLAINT
    elif event == "delivered":
        kind = DELIVERED
    else:
        parsed.ignored += 1
        return
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    detail = _text(status.get("description")) or _text(status.get("message")) or _text(data.get("reason"))
    code = status.get("code")
    _add(parsed, index="event-data", kind=kind, message_id=headers.get("message-id"), address=data.get("recipient"),
         detail=f"mailgun {event} {data.get('severity') or ''}: {code or ''} {detail}".replace("  ", " ").strip(": "),
         key=data.get("id"), at=_when(data.get("timestamp")))


def email_events_parse(*, payload: Any) -> Parsed:
    """The events of a vendor's post, told apart by their shape; raises EmailEventsRefused when
    the body is none of them (or too long a batch)."""
    parsed = Parsed(events=[], problems=[])
    if isinstance(payload, list):
        if len(payload) > MAX_ITEMS:
            raise EmailEventsRefused(f"holds {len(payload):,} events, more than {MAX_ITEMS:,} in one post",
                                     field="body", code="too_many")
        _sendgrid(payload, parsed)
    elif not isinstance(payload, dict):
        raise EmailEventsRefused("must be a JSON object (SES/SNS, Postmark, Mailgun) or array (SendGrid)",
                                 field="body")
    elif payload.get("Type") in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
        _sns(payload, parsed)
    elif "notificationType" in payload or "eventType" in payload:  # SNS raw message delivery
        _ses(payload, parsed, "")
    elif "RecordType" in payload:
        _postmark(payload, parsed)
    elif "event-data" in payload:
        _mailgun(payload, parsed)
    else:
        raise EmailEventsRefused("is not a report of Amazon SES (through SNS), SendGrid, Postmark or Mailgun",
                                 field="body", code="unknown_vendor")
    return parsed


# --------------------------------------------------------------------------- matching


def our_message_id(message_id: str) -> tuple[int, str] | None:
    """(delivery id, digest) of a Message-ID this product wrote, None for another one."""
    found = _OUR_MESSAGE_ID.match(message_id or "")
    if found is None:
        return None
    return int(found.group(1)), found.group(2).lower()


# How far back a report without our Message-ID looks for the address's latest message: vendors report
# within days, and a long-time subscriber's older mail is never read for it.
EMAIL_EVENTS_WINDOW = timedelta(days=14)
_ROW = ("pk", "status", "notes", "to", "customer_id", "sent_at", "idempotency_key")


def _rows_by_message_id(events: list[EmailEvent], channel_id: int) -> dict[str, dict]:
    """Our Message-ID (as the event gives it) -> the delivery's row, with one query: the id's
    digest must be the delivery's (a made-up id names no message), sent through the channel whose
    endpoint (and password) the report came in by: a vendor account reaches only its own messages
    (a rerouted delivery carries the channel that sent it)."""
    wanted = {e.message_id: parsed for e in events if (parsed := our_message_id(e.message_id))}
    if not wanted:
        return {}
    rows = {row["pk"]: row for row in Delivery.objects.filter(
        pk__in={pk for pk, _ in wanted.values()}, channel_id=channel_id, channel__kind=ChannelKind.EMAIL).values(*_ROW)}
    found = {message_id: rows[pk] for message_id, (pk, digest) in wanted.items()
             if pk in rows and message_id_digest(rows[pk]["idempotency_key"]) == digest}
    if len(found) < len(wanted):
        log.warning("email events (channel %s): %s Message-ID(s) of ours name no message of this channel",
                    channel_id, len(wanted) - len(found))
    return found


def _rows_by_address(addresses: set[str], channel_id: int) -> dict[str, dict]:
    """Recipient addresses (as the vendor spells them) -> each one's latest delivery of this channel, keyed
    by the address in lower case, with three queries whatever their number: the customers holding the
    address (`customers_holding`: on the profile in any capitalisation, or as an identity), then their
    deliveries of the last EMAIL_EVENTS_WINDOW to it, newest first."""
    if not addresses:
        return {}
    addresses = {a.lower() for a in addresses}
    customer_ids = set(customers_holding(emails=addresses, live=False))
    if not customer_ids:
        return {}
    latest: dict[str, dict] = {}
    since = timezone.now() - EMAIL_EVENTS_WINDOW  # a range of delivery_customer_sent_idx, not their whole history
    for row in (Delivery.objects.filter(customer_id__in=customer_ids, channel_id=channel_id,
                                        channel__kind=ChannelKind.EMAIL, sent_at__gte=since)
                .order_by("-sent_at", "-pk").values(*_ROW)):
        address = (row["to"] or "").strip().lower()
        if address in addresses and address not in latest:
            latest[address] = row
    return latest


# --------------------------------------------------------------------------- effects


def _soft_keys(notes: dict) -> set[str]:
    return {entry.get("key", "") for entry in (notes or {}).get("soft_bounces", []) if isinstance(entry, dict)}


def _already(event: EmailEvent, row: dict) -> bool:
    """Whether the event's effect is on the delivery already (a vendor's retry, or the same
    report reached us another way): then it costs no write."""
    status, notes = row["status"], row["notes"] or {}
    arrived = STATUS_RANK.get(status, 0) >= STATUS_RANK[DeliveryStatus.DELIVERED]
    if event.kind == BOUNCE:
        return status == DeliveryStatus.BOUNCED or (arrived and any(
            r.get("status") == DeliveryStatus.BOUNCED and r.get("detail") == event.detail
            for r in notes.get("late_receipts", []) if isinstance(r, dict)))
    if event.kind == FAILED:
        return status in (DeliveryStatus.FAILED, DeliveryStatus.BOUNCED) or (arrived and any(
            r.get("detail") == event.detail for r in notes.get("late_receipts", []) if isinstance(r, dict)))
    if event.kind == COMPLAINT:
        return bool(notes.get("complaint"))
    if event.kind == DELIVERED:
        return arrived
    return _event_key(event) in _soft_keys(notes)


def _event_key(event: EmailEvent) -> str:
    return event.key or f"{event.detail}|{event.at.isoformat() if event.at else ''}"


def _soft_bounce_note(*, delivery_id: int, event: EmailEvent) -> None:
    """A transient bounce (a full mailbox, a greylisting, a temporary block): noted on the delivery
    (`soft_bounces`, the latest MAX_SOFT_BOUNCES), nothing else changes; the vendor retries itself."""
    delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).only("notes").first()
    if delivery is None or _event_key(event) in _soft_keys(delivery.notes):
        return
    at = event.at or timezone.now()
    entries = [*(delivery.notes or {}).get("soft_bounces", []),
               {"key": _event_key(event), "detail": event.detail, "at": at.isoformat()}]
    Delivery.objects.filter(pk=delivery_id).update(
        notes={**(delivery.notes or {}), "soft_bounces": entries[-MAX_SOFT_BOUNCES:]}, updated_at=timezone.now())


def _apply(event: EmailEvent, delivery_id: int) -> None:
    """One event's effect, in a savepoint of its own (delivery_status_record's), so that a failed
    write costs that event only."""
    if event.kind == SOFT_BOUNCE:
        with transaction.atomic():
            _soft_bounce_note(delivery_id=delivery_id, event=event)
    else:
        delivery_status_record(delivery_id=delivery_id, status=STATUS_WORDS[event.kind], detail=event.detail,
                               at=event.at)


def email_events_ingest(*, channel_id: int, payload: Any) -> dict:
    """Apply a vendor's post (already read as JSON) to the deliveries it reports on; returns what
    happened: counts (`applied`, `already`, `unmatched`, `ignored`), `problems` (items skipped,
    each with its index and why) and `failed` (items whose write failed: the vendor should retry,
    which is safe). Raises EmailEventsRefused when the body is no vendor's report."""
    parsed = email_events_parse(payload=payload)
    result = {"ok": True, "vendor": parsed.vendor, "applied": 0, "already": 0, "unmatched": 0,
              "ignored": parsed.ignored, "problems": parsed.problems, "failed": []}
    if parsed.subscribe_url:
        _subscription_record(channel_id=channel_id, url=parsed.subscribe_url, payload=payload)
        result["subscription"] = "recorded: visit the SubscribeURL (in the audit log and the server log) to confirm it"
    by_id = _rows_by_message_id(parsed.events, channel_id)
    # a Message-ID of ours that names no message of this channel is unmatched, not guessed by address
    by_address = _rows_by_address({e.address for e in parsed.events if e.address and not our_message_id(e.message_id)},
                                  channel_id)
    todo: list[tuple[int, EmailEvent]] = []
    seen: set[tuple[int, str, str]] = set()
    for event in parsed.events:
        ours = our_message_id(event.message_id) is not None
        row = by_id.get(event.message_id) if ours else by_address.get(event.address.lower())
        if row is None:
            result["unmatched"] += 1
            continue
        once = (row["pk"], event.kind, _event_key(event) if event.kind == SOFT_BOUNCE else "")
        if _already(event, row) or once in seen:
            result["already"] += 1
            continue
        seen.add(once)
        todo.append((row["pk"], event))
    if todo:
        with transaction.atomic():
            # every row the batch writes, locked at once in one order: two posts of one batch (a vendor's
            # retry while the first is still running) wait for each other instead of deadlocking
            list(Delivery.objects.select_for_update().filter(pk__in={pk for pk, _ in todo}).order_by("pk")
                 .values_list("pk", flat=True))
            delivered = [(pk, event) for pk, event in todo if event.kind == DELIVERED]
            if delivered:
                try:
                    with transaction.atomic():
                        now = timezone.now()
                        deliveries_delivered_record(items=[(pk, event.at or now, event.detail)
                                                           for pk, event in delivered])
                except DatabaseError as exc:
                    log.warning("email delivery receipts not applied: %s", exc)
                    result["failed"] += [{"index": event.index, "error": "not recorded, retry"} for _, event in delivered]
                else:
                    result["applied"] += len(delivered)
            for delivery_id, event in sorted(todo, key=lambda item: item[0]):  # rows locked in one order
                if event.kind == DELIVERED:
                    continue
                try:
                    _apply(event, delivery_id)
                except DatabaseError as exc:
                    log.warning("email event %s for delivery %s not applied: %s", event.index, delivery_id, exc)
                    result["failed"].append({"index": event.index, "error": "not recorded, retry"})
                else:
                    result["applied"] += 1
    if result["unmatched"]:
        log.info("email events (channel %s, %s): %s matched no delivery", channel_id, parsed.vendor,
                 result["unmatched"])
    result["ok"] = not result["failed"]
    return result


def _subscription_record(*, channel_id: int, url: str, payload: dict) -> None:
    """An SNS topic asks to confirm the subscription. The server does not fetch the URL (outbound
    connections go only to the providers' checked addresses): it is logged and written to the audit
    log, where ops find it and open it. A repeated request (same MessageId) is recorded once."""
    from journeys.models import AuditEntry
    from journeys.services.governance import audit_record

    message_id = _text(payload.get("MessageId"), 200)
    log.warning("SNS subscription of email channel %s waits for confirmation: open %s (topic %s)",
                channel_id, url, _text(payload.get("TopicArn"), 300))
    if message_id and AuditEntry.objects.filter(action="sns_subscription", data__message_id=message_id).exists():
        return
    audit_record(action="sns_subscription",
                 reason=f"Amazon SNS asks to confirm the subscription of email channel {channel_id}: open SubscribeURL",
                 data={"channel": channel_id, "topic_arn": _text(payload.get("TopicArn"), 300),
                       "subscribe_url": url, "message_id": message_id})
