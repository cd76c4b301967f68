"""The outbound event stream: what happens (messages, journeys, cases) goes to the HTTPS
destinations ops configure, in signed batches (Standard Webhooks).

Writing: `stream_emit(items=...)` stores one `StreamEvent` row per item and interested
destination, with one INSERT, inside the caller's transaction: the table is the outbox, so
what happened and what the stream says about it commit (or roll back) together. `key` names
what happened, unique per destination, so recording a fact twice stores it once. With no
destination configured it costs nothing but a look at a cached list. Inside an engine batch,
`stream_collect` keeps the items in a batch extension and writes them when the batch flushes
(set-based, like the batch's own rows). Other apps call these; journeys imports none of them.

Sending: `stream_deliver(destination_id=)` (a q2 task per destination, started after commit
and by the minute tick through `stream_deliver_due`) sends a destination's oldest undelivered
events, at most `batch_size` per POST, in id order, one request in flight per destination (a
lease on the destination row), on one keep-alive connection, for up to STREAM["TASK_S"]
seconds before it hands over to the next task. On PostgreSQL it first waits for the writers in
flight that may still commit lower ids (`_settled_upto`). The request is signed as Standard
Webhooks asks (headers webhook-id, webhook-timestamp, webhook-signature `v1,<base64
HMAC-SHA256 of "id.timestamp.body">`); a batch keeps its webhook-id across retries. A failure
is retried quickly a few times (QUICK_RETRIES), then backs off exponentially (with jitter,
honouring Retry-After); the task itself waits out a backoff that ends within its time, so a
destination that fails now and then keeps draining. After `max_failures` failures in a row, or
a 410 Gone, the destination pauses until ops resume it. Nothing is dropped meanwhile: events
keep being recorded and go out, in order, once it answers again. Delivered batches are purged
after STREAM["KEEP_DAYS"].
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from journeys.choices import RunStatus, StreamEventType
from journeys.models import StreamAttempt, StreamBatch, StreamDestination, StreamEvent
from journeys.engine.batch import skip_locked
from journeys.services.outbound import backoff_delay, host_allowlisted, outbound_url_problem

logger = logging.getLogger(__name__)

COLLECTOR_KEY = "journeys.stream"
FINISHED = (RunStatus.COMPLETED, RunStatus.EXITED, RunStatus.FAILED)
LAG_BEHIND = timedelta(minutes=5)  # a destination whose oldest waiting event is older reads "behind", not "ok"
QUICK_RETRY_MAX_MS = 1000  # a failed request that took this long is not retried quickly (_retry_delay)
JOURNEY_TYPES = (StreamEventType.JOURNEY_ENTERED, StreamEventType.JOURNEY_STEP_REACHED,
                 StreamEventType.JOURNEY_CONVERTED, StreamEventType.JOURNEY_EXITED)


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One thing that happened. `key` names it (e.g. `message.sent:42`); `data` is JSON-able."""

    type: str
    key: str
    occurred_at: datetime
    data: dict
    customer_id: int | None = None


# --------------------------------------------------------------------------- who wants what

_cache: dict[str, Any] = {"at": 0.0, "rows": []}
_settled = {"upto": 0}  # every StreamEvent id up to this one is committed or rolled back (see _settled_upto)


def stream_destinations_reset() -> None:
    """Forget the cached destination list and settled-id mark (after a change here; tests
    between cases, whose database may start its ids again)."""
    _cache["at"], _cache["rows"] = 0.0, []
    _settled["upto"] = 0


def _destinations() -> list[tuple[int, frozenset[str] | None]]:
    """(id, wanted types or None = all) of the enabled destinations, re-read every CACHE_S seconds.
    Paused destinations are included: their events wait for them."""
    now = time.monotonic()
    if now - _cache["at"] > settings.STREAM["CACHE_S"]:
        _cache["rows"] = [(pk, frozenset(types) if types else None) for pk, types in
                          StreamDestination.objects.filter(enabled=True).values_list("pk", "event_types")]
        _cache["at"] = now
    return _cache["rows"]


def stream_active() -> bool:
    """Whether any destination is configured (callers skip building items when not)."""
    return bool(_destinations())


def stream_wanted(event_type: str) -> bool:
    """Whether any destination wants this type (callers may skip building items when not)."""
    return any(types is None or event_type in types for _, types in _destinations())


# --------------------------------------------------------------------------- recording


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def stream_emit(*, items: Iterable[StreamItem]) -> int:
    """Record items for every destination that wants them: one INSERT ... ON CONFLICT DO NOTHING
    in the caller's transaction. Returns how many rows were written (0 without destinations)."""
    from journeys.engine.batch import rows_insert

    destinations = _destinations()
    if not destinations:
        return 0
    rows = []
    for item in items:
        for pk, types in destinations:
            if types is None or item.type in types:
                rows.append({"destination_id": pk, "key": item.key[:200], "type": item.type,
                             "occurred_at": item.occurred_at, "customer_id": item.customer_id,
                             "data": _jsonable({**item.data, "type": item.type}), "batch_id": None})
    if not rows:
        return 0
    rows_insert(StreamEvent, rows, ignore_conflicts=True)
    transaction.on_commit(_kick)
    return len(rows)


class _Collector:
    """The stream's extension of an engine batch: items wait for the batch's flush."""

    def __init__(self, batch) -> None:
        self.items: list[StreamItem] = []

    def flush(self) -> None:
        items, self.items = self.items, []
        if items:
            stream_emit(items=items)


def stream_collect(*, items: Sequence[StreamItem]) -> None:
    """`stream_emit` now, or with the engine batch's flush when one is active."""
    from journeys.engine.batch import current_batch

    if not items or not _destinations():
        return
    batch = current_batch()
    if batch is None:
        stream_emit(items=items)
    else:
        batch.extension(COLLECTOR_KEY, _Collector).items.extend(items)


_last_kick = {"at": 0.0}


def _kick() -> None:
    """After a commit that recorded events: one delivery task, at most once a second per process
    (the minute tick catches whatever a skipped kick would have sent)."""
    from journeys.engine.queue import task_send

    now = time.monotonic()
    if now - _last_kick["at"] < 1.0 and not settings.Q_CLUSTER.get("sync"):
        return
    _last_kick["at"] = now
    task_send("journeys.services.stream.stream_deliver_due", group="stream")


# --------------------------------------------------------------------------- journeys' own events


def _run_data(run, version, **extra) -> dict:
    return {"run_id": run.pk, "workflow_id": run.workflow_id, "version_id": run.version_id,
            "version": getattr(version, "number", None), "customer_id": run.customer_id, **extra}


def stream_run_progress(*, run, version, reached: list[tuple[str, int, str, str]], now: datetime) -> None:
    """What a run did in one advance: `reached` is (step key, visit, step kind, outcome) per step
    executed. Emits journey.entered (its first step, first visit), journey.step_reached per step
    and journey.exited when it ended."""
    if not any(stream_wanted(t) for t in JOURNEY_TYPES):
        return
    items = []
    for key, visit, kind, outcome in reached:
        if visit == 1 and key == getattr(version, "entry_step", None):
            items.append(StreamItem(StreamEventType.JOURNEY_ENTERED, f"journey.entered:{run.pk}", now,
                                    _run_data(run, version, trigger_key=run.trigger_key), run.customer_id))
        items.append(StreamItem(StreamEventType.JOURNEY_STEP_REACHED, f"journey.step:{run.pk}:{key}:{visit}", now,
                                _run_data(run, version, step=key, step_kind=kind, visit=visit, outcome=outcome),
                                run.customer_id))
    items.extend(_run_end(run, version, now))
    stream_collect(items=items)


def _run_end(run, version, now: datetime) -> list[StreamItem]:
    if run.status not in FINISHED or run.finished_at is None:
        return []
    at = run.finished_at
    return [StreamItem(StreamEventType.JOURNEY_EXITED, f"journey.exited:{run.pk}:{at.isoformat()}", at,
                       _run_data(run, version, status=run.status, step=run.current_step, error=run.error[:500],
                                 converted=run.converted_at is not None), run.customer_id)]


def stream_runs_ended(*, runs: Iterable, now: datetime) -> None:
    """journey.exited for runs ended by one UPDATE, not by their own steps (another run's
    start_workflow move; a wake-up that broke): the runs carry their end and their version.
    Written at once, in the caller's transaction (an engine batch may be flushing already)."""
    stream_emit(items=[item for run in runs for item in _run_end(run, run.version, now)])


def stream_run_converted(*, run, now: datetime) -> None:
    """The run's goal was reached: journey.converted (and journey.exited, the run is over)."""
    if not _destinations():
        return
    at = run.converted_at or now
    items = [StreamItem(StreamEventType.JOURNEY_CONVERTED, f"journey.converted:{run.pk}", at,
                        _run_data(run, None, step=run.current_step), run.customer_id), *_run_end(run, None, now)]
    stream_collect(items=items)


# --------------------------------------------------------------------------- destinations


def _secret(salt: str) -> str:
    key = hmac.new(settings.SECRET_KEY.encode(), f"stream-destination:{salt}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode()


def destination_secret(destination: StreamDestination) -> str:
    """The destination's signing secret (`whsec_` + base64 of 32 bytes), derived from the
    server's SECRET_KEY and the destination's salt: never stored."""
    return _secret(destination.secret_salt)


def destination_signing_secrets(destination: StreamDestination, *, now: datetime | None = None) -> list[str]:
    """The secrets a request is signed with: the current one and, for STREAM["ROTATION_OVERLAP_S"]
    after a rotation, the previous one too (Standard Webhooks: several space-separated
    signatures), so a receiver can switch to the new secret any time in that window."""
    secrets = [destination_secret(destination)]
    rotated = destination.secret_rotated_at
    if destination.previous_secret_salt and rotated and \
            (now or timezone.now()) - rotated < timedelta(seconds=settings.STREAM["ROTATION_OVERLAP_S"]):
        secrets.append(_secret(destination.previous_secret_salt))
    return secrets


def destination_url_problem(url: str) -> str:
    """Why this URL cannot be a destination ('' = fine): checked when saved and before each send.
    The shared outbound guard (journeys.services.outbound) refuses non-http(s), credentials and
    private/loopback addresses unless allow-listed; on top, the stream wants HTTPS, plain http
    only for allow-listed hosts (OUTBOUND_ALLOWED_HOSTS / _NETWORKS: local test servers)."""
    if problem := outbound_url_problem(url=url):
        return problem
    parts = urlsplit(url.strip())
    if parts.scheme.lower() == "http" and not host_allowlisted(parts.hostname or ""):
        return "must be an https:// URL (plain http only for allow-listed hosts)"
    return ""


def destination_clean(destination: StreamDestination) -> None:
    from journeys.choices import StreamEventType as Types

    if problem := destination_url_problem(destination.url):
        raise ValidationError({"url": problem})
    unknown = [t for t in destination.event_types or [] if t not in Types.values]
    if unknown:
        raise ValidationError({"event_types": f"unknown event type(s) {', '.join(map(str, unknown))}"})
    if not 1 <= destination.batch_size <= 1000:
        raise ValidationError({"batch_size": "must be between 1 and 1000"})
    if destination.max_failures < 1:
        raise ValidationError({"max_failures": "must be at least 1"})


def deliver_later(destination_id: int, now: datetime | None = None) -> None:
    """A delivery task for one destination, on the main cluster's workers also when the tick (on
    the schedules cluster) starts it: a task may wait out a backoff, which must not hold up the
    schedules. `now`: tests, which run tasks inline."""
    from journeys.engine.queue import task_send

    when = {"now": now} if now is not None and settings.Q_CLUSTER.get("sync") else {}
    task_send("journeys.services.stream.stream_deliver", destination_id=destination_id, group="stream",
              cluster=settings.Q_CLUSTER.get("name"), **when)


# --------------------------------------------------------------------------- sending


def stream_sign(*, secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`, the key being the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def batch_body(batch: StreamBatch) -> bytes:
    """The request body of a batch (the same bytes on every attempt)."""
    events = [{"id": f"evt_{e.pk}", "type": e.type, "timestamp": e.occurred_at.isoformat(), "data": e.data}
              for e in StreamEvent.objects.filter(batch=batch).order_by("id")]
    payload = {"type": "journeys.batch", "timestamp": batch.created_at.isoformat(), "data": {"events": events}}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _post(session, url: str, body: bytes, headers: dict) -> tuple[int | None, dict, str]:
    """POST once on the task's keep-alive session (address checked and pinned, TLS verified):
    (status or None when it never answered, response headers, error text)."""
    from journeys.errors import OutboundRefused, OutboundUnreachable

    try:
        response = session.post(url, body=body, headers=headers)
    except (OutboundRefused, OutboundUnreachable) as exc:
        return None, {}, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    error = "" if 200 <= response.status < 300 else response.body[:500].decode("utf-8", "replace")
    return response.status, dict(response.headers.items()), error


# --------------------------------------------------------------------------- order: settled ids

def _settled_upto(*, wanted: int) -> int | None:
    """The highest id below which no transaction can still commit a StreamEvent, at least `wanted`
    when possible (None: no limit). Ids come from one sequence, so a transaction that took lower
    ids can commit after one that took higher ids: sending by id whatever is committed would
    send the higher ones first. On PostgreSQL: read the sequence (M), then the writing
    transactions in flight, and wait until they end; then every id up to M is final. Writers
    open longer than STREAM["SETTLE_S"] are not waited for (the documented exception), so a long
    import or upkeep job never stalls the stream. SQLite has one writer at a time: commit order
    is id order."""
    if connection.vendor != "postgresql":
        return None
    if wanted <= _settled["upto"]:
        return _settled["upto"]
    settle = float(settings.STREAM["SETTLE_S"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'id'))",
                       [StreamEvent._meta.db_table])
        upto = cursor.fetchone()[0] or 0
        cursor.execute("SELECT pid, backend_xid::text FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
                       "AND pid <> pg_backend_pid() AND datname = current_database() "
                       "AND xact_start > clock_timestamp() - make_interval(secs => %s)",
                       [settle])
        writers = [f"{pid}:{xid}" for pid, xid in cursor.fetchall()]
        deadline = time.monotonic() + settle
        while writers and time.monotonic() < deadline:
            time.sleep(0.02)
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT pid::text || ':' || backend_xid::text FROM pg_stat_activity "
                           "WHERE backend_xid IS NOT NULL AND pid::text || ':' || backend_xid::text = ANY(%s)",
                           [writers])
            writers = [row[0] for row in cursor.fetchall()]
    _settled["upto"] = max(_settled["upto"], upto)
    return _settled["upto"]


def _claim(destination_id: int, now: datetime, *, holding: bool = False) -> tuple[StreamDestination, StreamBatch] | None:
    """Lock the destination, pick its open batch (or make one of its oldest settled events) and
    take the send lease; None when there is nothing to send now. `holding`: the caller holds the
    lease already (it waited out its own backoff)."""
    row = StreamDestination.objects.filter(pk=destination_id).values_list(
        "batch_size", "lease_until", "next_attempt_at", "paused_at").first()
    if row is None or row[3] is not None or (row[2] and row[2] > now) or (row[1] and row[1] > now and not holding):
        return None  # paused, backing off or another task sending: no need to wait for writers
    size, upto = row[0], None
    if not StreamBatch.objects.filter(destination_id=destination_id, delivered_at__isnull=True).exists():
        # a new batch is to be made: of settled events only (a retry of the open one waits for no one)
        oldest = list(StreamEvent.objects.filter(destination_id=destination_id, batch__isnull=True).order_by("id")
                      .values_list("id", flat=True)[:size])
        upto = _settled_upto(wanted=oldest[-1]) if oldest else None  # outside the transaction: it may wait
    with transaction.atomic():
        destination = (StreamDestination.objects.select_for_update(**skip_locked())
                       .filter(pk=destination_id).first())
        if destination is None or not destination.enabled or destination.paused_at is not None:
            return None
        if destination.lease_until and destination.lease_until > now and not holding:
            return None  # another worker is sending to it
        if destination.next_attempt_at and destination.next_attempt_at > now:
            return None  # backing off
        batch = StreamBatch.objects.filter(destination=destination, delivered_at__isnull=True).order_by("id").first()
        if batch is None:
            pending = StreamEvent.objects.filter(destination=destination, batch__isnull=True)
            if upto is not None:
                pending = pending.filter(id__lte=upto)
            ids = list(pending.order_by("id").values_list("id", flat=True)[:destination.batch_size])
            if not ids:
                return None
            batch = StreamBatch.objects.create(destination=destination, webhook_id=f"msg_{uuid.uuid4().hex}",
                                               events_count=len(ids), first_event_id=ids[0], last_event_id=ids[-1])
            StreamEvent.objects.filter(pk__in=ids).update(batch=batch)
        destination.lease_until = now + timedelta(seconds=settings.STREAM["TIMEOUT_S"] + 60)
        destination.save(update_fields=["lease_until"])
    return destination, batch


def _send(session, destination: StreamDestination, batch: StreamBatch) -> tuple[int | None, dict, str, int]:
    if problem := destination_url_problem(destination.url):
        return None, {}, f"refused: the URL {problem}", 0
    body = batch_body(batch)
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json", "User-Agent": "journeys-stream/1",
        "webhook-id": batch.webhook_id, "webhook-timestamp": str(stamp),
        "webhook-signature": " ".join(stream_sign(secret=secret, webhook_id=batch.webhook_id, timestamp=stamp, body=body)
                                      for secret in destination_signing_secrets(destination)),
    }
    started = time.monotonic()
    code, response_headers, error = _post(session, destination.url, body, headers)
    return code, response_headers, error, int((time.monotonic() - started) * 1000)


def _retry_delay(*, failures: int, code: int | None, retry_after: str | None, latency_ms: int,
                 now: datetime) -> timedelta:
    """The first QUICK_RETRIES failures in a row are retried after about QUICK_RETRY_S (an error now
    and then, e.g. one bad node behind a load balancer, costs a fraction of a second, not a
    backoff) when the failure came fast; from then on, when the destination asked for a pause
    (429, Retry-After), or when the request took QUICK_RETRY_MAX_MS or more (a destination that
    hangs: retried at once, it would keep a worker for a timeout each time), the exponential
    backoff from RETRY_BASE_S."""
    conf = settings.STREAM
    quick = conf["QUICK_RETRIES"]
    if failures <= quick and code != 429 and not retry_after and latency_ms < QUICK_RETRY_MAX_MS:
        return timedelta(seconds=conf["QUICK_RETRY_S"] * random.uniform(0.5, 1.0))
    return backoff_delay(attempt=max(1, failures - quick), base_s=conf["RETRY_BASE_S"], max_s=conf["RETRY_MAX_S"],
                         retry_after=retry_after, now=now)


@transaction.atomic
def _record(*, destination: StreamDestination, batch: StreamBatch, code: int | None, headers: dict, error: str,
            latency: int, now: datetime, wait_up_to: float = 0.0) -> tuple[bool, float | None]:
    """Log the attempt and move the destination on: (ok, seconds until the retry when the caller
    waits for it, holding the lease so no other task sends meanwhile; None: it does not)."""
    ok = code is not None and 200 <= code < 300
    StreamAttempt.objects.create(batch=batch, at=now, ok=ok, status_code=code, latency_ms=latency,
                                 error="" if ok else (error or f"HTTP {code}")[:4000])
    destination = StreamDestination.objects.select_for_update().get(pk=destination.pk)
    batch.attempts += 1
    batch.last_status_code, batch.last_error = code, "" if ok else (error or f"HTTP {code}")[:4000]
    destination.lease_until = None
    wait = None
    if ok:
        batch.delivered_at = now
        destination.consecutive_failures, destination.next_attempt_at = 0, None
        destination.last_success_at, destination.last_error = now, ""
    else:
        destination.consecutive_failures += 1
        destination.last_error = batch.last_error
        retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        delay = _retry_delay(failures=destination.consecutive_failures, code=code, retry_after=retry_after,
                             latency_ms=latency, now=now)
        destination.next_attempt_at = now + delay
        if code == 410:
            destination.paused_at, destination.pause_reason = now, "the destination answered 410 Gone"
        elif destination.consecutive_failures >= destination.max_failures:
            destination.paused_at = now
            destination.pause_reason = f"{destination.consecutive_failures} failed attempts in a row"
        elif delay.total_seconds() <= wait_up_to:
            wait = delay.total_seconds()
            destination.lease_until = destination.next_attempt_at + timedelta(seconds=settings.STREAM["TIMEOUT_S"] + 60)
    batch.save(update_fields=["attempts", "last_status_code", "last_error", "delivered_at"])
    destination.save(update_fields=["lease_until", "consecutive_failures", "next_attempt_at", "last_success_at",
                                    "last_error", "paused_at", "pause_reason"])
    return ok, wait


def stream_deliver(*, destination_id: int, now: datetime | None = None) -> int:
    """Send a destination's due batches, oldest first, one request at a time on one keep-alive
    connection, for up to STREAM["TASK_S"] seconds: a failed request is retried when its backoff
    ends if that is within the task's time (the task keeps the lease meanwhile), else the tick or
    the next kick retries it. At the end of its time, with more to send, it hands over to a new
    task, so one destination never holds a worker for long. Returns the batches delivered.
    `now` (tests) is the task's start; its clock runs on from there."""
    from journeys.services.outbound import OutboundSession

    started, start = time.monotonic(), now or timezone.now()
    budget = float(settings.STREAM["TASK_S"])

    def elapsed() -> float:
        return time.monotonic() - started

    delivered, holding = 0, False
    with OutboundSession(timeout=float(settings.STREAM["TIMEOUT_S"])) as session:
        while True:
            moment = start + timedelta(seconds=elapsed())
            claimed = _claim(destination_id, moment, holding=holding)
            if claimed is None:
                if holding:  # paused meanwhile: let the lease go
                    StreamDestination.objects.filter(pk=destination_id).update(lease_until=None)
                return delivered
            destination, batch = claimed
            code, headers, error, latency = _send(session, destination, batch)
            ok, wait = _record(destination=destination, batch=batch, code=code, headers=headers, error=error,
                               latency=latency, now=start + timedelta(seconds=elapsed()),
                               wait_up_to=max(budget - elapsed(), settings.STREAM["QUICK_RETRY_S"]))
            delivered += ok
            holding = wait is not None
            if not ok:
                if wait is None:
                    return delivered  # paused, or a backoff longer than this task: the tick retries
                time.sleep(wait + 0.001)
            elif elapsed() >= budget:
                deliver_later(destination_id)  # its time is up: another task goes on
                return delivered


def stream_deliver_due(*, now: datetime | None = None) -> int:
    """Start delivery for every destination that has something due and no task sending to it
    (the kick after commit, the tick): one task each, so a slow or failing destination never
    holds up the others. Returns how many were started."""
    now = now or timezone.now()
    from django.db.models import Exists, OuterRef, Q

    pending = StreamEvent.objects.filter(destination=OuterRef("pk"), batch__isnull=True)
    open_batch = StreamBatch.objects.filter(destination=OuterRef("pk"), delivered_at__isnull=True)
    due = list(StreamDestination.objects.filter(enabled=True, paused_at__isnull=True)
               .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
               .filter(Q(lease_until__isnull=True) | Q(lease_until__lte=now))
               .filter(Q(Exists(pending)) | Q(Exists(open_batch))).values_list("pk", flat=True))
    for pk in due:
        deliver_later(pk, now=now)
    return len(due)


def destination_backlog(*, destination: StreamDestination, now: datetime | None = None) -> tuple[int, timedelta | None]:
    """(events waiting, age of the oldest: the destination's lag, None when nothing waits): the
    open batch's events and the pending ones, each read through an index."""
    now = now or timezone.now()
    open_batches = StreamBatch.objects.filter(destination=destination, delivered_at__isnull=True)
    pending = StreamEvent.objects.filter(destination=destination, batch__isnull=True)
    waiting = pending.count() + sum(open_batches.values_list("events_count", flat=True))
    first = open_batches.order_by("id").values_list("first_event_id", flat=True).first()
    oldest = (StreamEvent.objects.filter(pk=first) if first else pending.order_by("id")).values_list(
        "created_at", flat=True).first()
    return waiting, (now - oldest if oldest else None)


def stream_purge(*, now: datetime | None = None) -> int:
    """Drop delivered batches (and their events) older than STREAM["KEEP_DAYS"]; never anything
    undelivered."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.STREAM["KEEP_DAYS"])
    ids = list(StreamBatch.objects.filter(delivered_at__lt=cutoff).order_by("delivered_at")
               .values_list("pk", flat=True)[:5000])
    if not ids:
        return 0
    StreamEvent.objects.filter(batch_id__in=ids).delete()
    StreamBatch.objects.filter(pk__in=ids).delete()
    return len(ids)


def stream_customer_erase(customer) -> dict:
    """ERASERS hook (registered by the channels app): events not yet sent lose the person's
    user id (the ids of runs, messages and cases stay, as in the rest of the erasure)."""
    rows = StreamEvent.objects.filter(customer_id=customer.pk, batch__delivered_at__isnull=True)
    erased = 0
    for event in rows.only("pk", "data"):
        if "user_id" in event.data:
            StreamEvent.objects.filter(pk=event.pk).update(data={**event.data, "user_id": None})
            erased += 1
    return {"stream_events": erased}
