"""Writing refused events into the quarantine (called by ingestion, in its transaction), and
deleting resolved entries after their keep period (called by the events housekeeping).

Apart from journeys.services.quarantine (fix, replay, discard), which calls ingestion itself:
this way the two never import each other.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from journeys.choices import QuarantineReason, QuarantineStatus
from journeys.models import QuarantinedEvent, Source
from journeys.services.oplog import counts_text, ops_warning

logger = logging.getLogger(__name__)

CODES = {c.value for c in QuarantineReason}


def _deep_dumps(value: Any) -> str:
    """JSON text of `value` without recursion (for events nested deeper than the C encoder's
    stack allows); ASCII, so lone surrogates and NUL survive as escapes."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, _Raw):
            out.append(node.text)
        elif isinstance(node, dict):
            parts: list[Any] = [_Raw("{")]
            for i, (k, v) in enumerate(node.items()):
                parts += [_Raw(("," if i else "") + json.dumps(str(k)) + ":"), v]
            stack.extend(reversed([*parts, _Raw("}")]))
        elif isinstance(node, list):
            parts = [_Raw("[")]
            for i, v in enumerate(node):
                parts += ([_Raw(",")] if i else []) + [v]
            stack.extend(reversed([*parts, _Raw("]")]))
        else:
            out.append(json.dumps(node))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _Raw:
    text: str


def payload_text(value: Any) -> str:
    """The stored form of a quarantined payload: JSON text that any database keeps as it is."""
    try:
        return json.dumps(value, ensure_ascii=True)
    except RecursionError:
        return _deep_dumps(value)


def storable_text(value: str) -> str:
    """`value` as any database keeps it: NUL and lone surrogates (what PostgreSQL refuses, and
    what got the event refused in the first place) written as escapes."""
    if "\x00" in value:
        value = value.replace("\x00", "\\u0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def quarantine_store(
    *, source: Source, rejections: list, received_at, ip: str | None, endpoint_type: str = "",
    batch_defaults: dict | None = None,
) -> int:
    """Keep each refused event with its payload, field and reason (a resent request adds nothing:
    entries are unique per source and content). The write key, if in the payload, is not kept."""
    defaults = payload_text(batch_defaults) if batch_defaults else ""
    rows = []
    for r in rejections:
        payload = r.payload
        if isinstance(payload, dict) and "writeKey" in payload:
            payload = {k: v for k, v in payload.items() if k != "writeKey"}
        text = payload_text(payload)
        digest = hashlib.sha256(f"{endpoint_type}\n{defaults}\n{text}".encode("ascii")).hexdigest()
        mid = payload.get("messageId") if isinstance(payload, dict) else None
        message_id = str(mid) if isinstance(mid, (str, int)) and not isinstance(mid, bool) else ""
        message_id = storable_text(message_id) if len(message_id) <= 255 else ""
        rows.append(QuarantinedEvent(
            source=source, code=r.code if r.code in CODES else QuarantineReason.INVALID,
            field=storable_text(r.field or "")[:300], message=storable_text(r.message or ""), payload=text, defaults=defaults, endpoint_type=endpoint_type, message_id=message_id,
            batch_index=r.index, digest=digest, received_at=received_at, ip=ip,
        ))
    QuarantinedEvent.objects.bulk_create(rows, ignore_conflicts=True)
    codes = Counter(row.code for row in rows)
    transaction.on_commit(lambda: _quarantine_logged(source=source, codes=codes))
    return len(rows)


def _quarantine_logged(*, source: Source, codes: Counter) -> None:
    """A WARNING per source and process at most once a minute, with every refusal since the last
    one by reason code: a client release that breaks its events shows in the logs, not only in the
    admin. The source's name and the codes only (an event's content may be anyone's data)."""
    def render(counts: Counter, seconds: float | None) -> str:
        window = f" in the last {seconds:.0f} s" if seconds is not None else ""
        return (f"quarantine: {sum(counts.values())} event(s) from source {source.name!r} (id {source.pk}) refused "
                f"into the quarantine{window}: {counts_text(counts)}; review them in Journeys > Quarantined events "
                "(manage.py quarantine_replay --dry-run counts them)")

    ops_warning(logger, key=f"quarantine:{source.pk}", counts=codes, render=render)


def quarantine_purge(*, now=None, batch: int = 5000) -> int:
    """Delete replayed and discarded entries resolved over EVENT_API['QUARANTINE_KEEP_DAYS'] days ago
    (bounded per call), with their history rows: every one of those holds the payload the client
    sent (personal data), and the keep period is what ops were given to look at it. Open entries
    stay until someone decides."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.EVENT_API["QUARANTINE_KEEP_DAYS"])
    ids = list(QuarantinedEvent.objects.filter(status__in=[QuarantineStatus.REPLAYED, QuarantineStatus.DISCARDED],
                                               resolved_at__lt=cutoff).values_list("pk", flat=True)[:batch])
    if ids:
        quarantine_entries_delete(ids=ids)
    return len(ids)


@transaction.atomic
def quarantine_entries_delete(*, ids: list[int]) -> None:
    """Delete these entries and every history row of theirs (the deletion's own included)."""
    QuarantinedEvent.objects.filter(pk__in=ids).delete()
    QuarantinedEvent.history.filter(id__in=ids).delete()  # after: the deletion itself wrote a history row
