"""The event quarantine: bad events of a request kept aside, fixed and replayed, or discarded.

`events_receive` stores each refused event here in the transaction that stores the rest of
its request. Ops list them in the admin (by source and reason), correct the payload
(`quarantine_fix`, checked exactly as the API checks it), and replay them through the same
ingestion service (`quarantine_replay`), or discard them with a reason. Every change is
on the entry's history with who and why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from journeys.choices import QuarantineReason, QuarantineStatus
from journeys.errors import EventValidationError, JourneyError, PayloadTooLarge
from journeys.models import QuarantinedEvent
from journeys.services.event_parsing import json_strict
from journeys.services.governance import history_stamp, require_model_perm, require_reason
from journeys.services.quarantine_store import CODES, payload_text, quarantine_entries_delete, storable_text

PERM = "change_quarantinedevent"


def _loads(text: str, *, field_name: str) -> Any:
    try:
        return json_strict(text)
    except RecursionError:
        raise ValidationError({field_name: "is nested too deeply to read"}) from None
    except ValueError as exc:
        raise ValidationError({field_name: f"is not valid JSON: {exc}"}) from None


def _check(entry: QuarantinedEvent, payload: Any) -> list:
    """Parse and check a payload as the API would (catalog included); raises the API's errors,
    a catalog refusal with the code ingest gives it (`schema`), so a replay that is refused again
    is still found by `quarantine_replay --code schema` once the catalog is fixed."""
    from journeys.services.catalog import catalog_split
    from journeys.services.ingest import events_parse

    defaults = _loads(entry.defaults, field_name="defaults") if entry.defaults else None
    events = events_parse(payloads=[payload], received_at=entry.received_at, event_type=entry.endpoint_type or None,
                          batch_defaults=defaults)
    _kept, refused = catalog_split(policy=entry.source.schema_policy, events=events, strict=False)
    if refused:
        error = refused[0][1]
        raise EventValidationError(error.message, field=error.field, code=QuarantineReason.SCHEMA)
    return events


def _ingest_path(entry: QuarantinedEvent, field_name: str) -> str:
    """A field as ingest named it: an event of a batch is `batch[i].<field>` (the payload alone
    is checked on replay, so its errors name the field inside the event)."""
    if entry.batch_index is None:
        return field_name
    prefix = f"batch[{entry.batch_index}]"
    return prefix if field_name in ("", "body") else f"{prefix}.{field_name}"


def quarantine_check(*, entry: QuarantinedEvent, payload: str) -> Any:
    """Would this corrected payload pass the API now? Returns it parsed, else a ValidationError on
    `payload` naming the field as the API would (the admin's fix form shows it)."""
    value = _loads(payload, field_name="payload")
    try:
        _check(entry, value)
    except (EventValidationError, PayloadTooLarge) as exc:
        raise ValidationError({"payload": str(exc)}) from None
    return value


@transaction.atomic
def quarantine_fix(*, entry: QuarantinedEvent, payload: str, actor: Any = None, reason: str = "") -> QuarantinedEvent:
    """Replace a quarantined event's payload with a corrected one. It must pass every check of
    the API (else a ValidationError on `payload` names the field); replaying is a separate step."""
    require_model_perm(actor, PERM, "fix quarantined events")
    reason = require_reason(actor, reason) or "payload corrected"
    entry = QuarantinedEvent.objects.select_for_update().select_related("source").get(pk=entry.pk)
    if entry.status != QuarantineStatus.QUARANTINED:
        raise ValidationError(f"this event was already {entry.get_status_display().lower()}")
    value = quarantine_check(entry=entry, payload=payload)
    entry.payload = payload_text(value)
    entry.message_id = storable_text(str(value.get("messageId") or ""))[:255] if isinstance(value, dict) else ""
    history_stamp(entry, actor=actor, reason=reason)
    entry.save()
    return entry


@dataclass
class ReplayResult:
    replayed: list[QuarantinedEvent] = field(default_factory=list)
    still_bad: list[tuple[QuarantinedEvent, str]] = field(default_factory=list)
    skipped: int = 0  # already replayed or discarded by then
    history: int = 0  # of those replayed, stored as history: too old by now to start a workflow

    def summary(self, *, reasons: int = 5) -> str:
        """One message for whoever replayed: how many were replayed, how many are still refused,
        grouped by the field at fault (each with an example), the most common first."""
        parts = [f"{len(self.replayed):,} event(s) replayed: stored and sent to the engine."]
        if self.history:
            parts.append(_history_text(self.history))
        groups: dict[str, list[tuple[QuarantinedEvent, str]]] = {}
        for entry, error in self.still_bad:  # by the field inside the event, whatever its place in its batch
            groups.setdefault(re.sub(r"^batch\[\d+\]\.?", "", entry.field) or "payload", []).append((entry, error))
        ranked = sorted(groups.items(), key=lambda group: -len(group[1]))
        if ranked:
            named = "; ".join(f"{len(bad):,} at {name} (e.g. #{bad[0][0].pk}: {bad[0][1]})" for name, bad in ranked[:reasons])
            others = sum(len(bad) for _name, bad in ranked[reasons:])
            parts.append(f"{len(self.still_bad):,} still refused, left in the quarantine: {named}"
                         + (f"; {others:,} for other reasons." if others else "."))
        if self.skipped:
            parts.append(f"{self.skipped:,} event(s) left as they were: already replayed or discarded.")
        return " ".join(parts)


def _history_text(count: int) -> str:
    from journeys.services.ingest import trigger_max_age

    age = trigger_max_age()
    limit = f"{age.days} days" if age and not age.seconds else f"{int(age.total_seconds()) if age else 0} s"
    return (f"{count:,} of them stored as history: by the time they were replayed they were older than "
            f"EVENT_TRIGGER_MAX_AGE_S ({limit}), so they started no workflow (they still convert goals and close "
            f"windows; each event's row says why).")


def quarantine_replay(*, entries, actor: Any = None, reason: str = "") -> ReplayResult:
    """Send quarantined events through the ingestion service again (each on its own: one that is
    still bad stays quarantined with its new field and reason; the others are stored and processed).
    A replayed event keeps its original receipt time, so clock-skew correction is unchanged, but
    its age is measured now: one older than EVENT_TRIGGER_MAX_AGE_S by the time it is replayed is
    stored as history (it starts no workflow), and the result counts those."""
    from journeys.services.ingest import event_ingest

    require_model_perm(actor, PERM, "replay quarantined events")
    reason = require_reason(actor, reason) or "replayed"
    result = ReplayResult()
    for pk in [e.pk for e in entries]:
        with transaction.atomic():
            entry = QuarantinedEvent.objects.select_for_update().select_related("source").filter(
                pk=pk, status=QuarantineStatus.QUARANTINED).first()
            if entry is None:
                result.skipped += 1
                continue
            try:
                payload = _loads(entry.payload, field_name="payload")
                events = _check(entry, payload)
                outcome = event_ingest(source=entry.source, events=events, ip=entry.ip, catalog=False, replayed=True)
            except ValidationError as exc:
                entry.code, entry.field, entry.message = QuarantineReason.INVALID, "payload", "; ".join(exc.messages)
                result.still_bad.append((entry, entry.message))
            except JourneyError as exc:
                entry.code = exc.code if exc.code in CODES else QuarantineReason.INVALID
                entry.field, entry.message = _ingest_path(entry, exc.field or "")[:300], exc.message
                result.still_bad.append((entry, str(exc)))
            else:
                entry.status, entry.resolved_at, entry.resolution = QuarantineStatus.REPLAYED, timezone.now(), reason
                entry.resolved_by = actor if getattr(actor, "pk", None) else None
                entry.event_id = outcome.event_ids[0] if outcome.event_ids else None
                if not outcome.event_ids:
                    entry.resolution = f"{reason} (its messageId was already stored: nothing new)"
                elif outcome.history:
                    result.history += outcome.history
                    entry.resolution = f"{reason} (stored as history: too old by now to start a workflow)"
                result.replayed.append(entry)
            history_stamp(entry, actor=actor, reason=reason if entry.status == QuarantineStatus.REPLAYED
                          else f"replay failed: {entry.message}"[:500])
            entry.save()
    return result


@transaction.atomic
def quarantine_discard(*, entries, actor: Any = None, reason: str) -> int:
    """Give up on quarantined events, saying why (kept for the record, never stored as events)."""
    require_model_perm(actor, PERM, "discard quarantined events")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "say why these events are discarded (it is recorded)"})
    now = timezone.now()
    count = 0
    for entry in QuarantinedEvent.objects.select_for_update().filter(
            pk__in=[e.pk for e in entries], status=QuarantineStatus.QUARANTINED):
        entry.status, entry.resolved_at, entry.resolution = QuarantineStatus.DISCARDED, now, reason
        entry.resolved_by = actor if getattr(actor, "pk", None) else None
        history_stamp(entry, actor=actor, reason=reason)
        entry.save()
        count += 1
    return count


# Payload keys that name a person: an entry that names the erased customer under one of them goes.
PERSON_KEYS = ("userId", "anonymousId", "previousId", "email")


def quarantine_customer_erase(customer) -> dict:
    """ERASERS hook (registered by the channels app): quarantined events that name the customer
    (as userId, anonymousId, previousId or an email, under any of their identities) are deleted
    with their history rows, like the customer's stored events. Payloads are JSON text, so this
    is a text match on `"key": "value"` (both spacings, as stored); the quarantine is small."""
    from django.db.models import Q

    from journeys.models import Identity

    values = {v for v in [customer.external_id, customer.email,
                          *Identity.objects.filter(customer=customer).values_list("value", flat=True)] if v}
    if not values:
        return {"quarantined_events": 0}
    match = Q()
    for value in values:
        # ASCII escapes, as payload_text stores it; an id of digits may have been sent as a number
        # (userId 777 is the customer "777"): then followed by whatever ends a JSON number
        forms = [json.dumps(value)]
        if value.isascii() and value.lstrip("-").isdigit():
            forms += [f"{value}{end}" for end in (",", "}", "]", " ", "\n")]
        for key, form in ((key, form) for key in PERSON_KEYS for form in forms):
            match |= Q(payload__contains=f'"{key}": {form}') | Q(payload__contains=f'"{key}":{form}')
    entries = QuarantinedEvent.objects.filter(match)
    ids = list(entries.values_list("pk", flat=True))
    quarantine_entries_delete(ids=ids)
    return {"quarantined_events": len(ids)}
