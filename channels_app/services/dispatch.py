"""Dispatching: send recorded deliveries in batches.

A pass claims a batch (services/claim.py: every send-time check for the whole batch in a
few queries, then status `sending`, in one short transaction), hands each channel's part
to its provider's batch entry point outside any transaction (one SMTP session, one HTTP
keep-alive connection for the whole dispatcher run), and writes the results set-based in
one more transaction: delivery rows, attempt log, breaker, and the `Message Sent` /
`Message Failed` events.

No message is sent twice: each message the provider accepted is marked on its row
(`accepted_at`, still `sending`) before the provider gets the next one, so a worker killed
mid-batch leaves its accepted messages marked; when its claim's lease expires the sweeper
records those as sent and retries only the others (with the same idempotency key /
Message-ID). Transient errors are retried with exponential backoff and jitter (never
sooner than Retry-After); a breaker that opens mid-batch stops that channel's part, and
the rest is claimed again at once: rerouted to the fallback channel or deferred. A send that
times out stops its channel's part for the pass too: the rest waits the
channel's first retry delay, and the batch's other channels go on (channels already failing
are sent last), so a hanging vendor costs a pass one timeout, not one per message.

Deferred deliveries (quiet hours, send time, retries, pauses) are released by drain
tasks that claim due batches (SKIP LOCKED) one after another while due work remains,
bounded in time per task; the minute tick starts them.
"""

from __future__ import annotations

import json
import logging
import operator
import queue
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from typing import TypeVar

import psycopg
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from channels_app.choices import ChannelKind, DeliveryStatus, Reason
from channels_app.models import Channel, Delivery, DeliveryAttempt
from channels_app.providers import (
    OutgoingMessage, PermanentError, Provider, ProviderError, SendResult, TransientError, get_provider,
)
from channels_app.services import breaker as breakers
from channels_app.services.channel_settings import MAX_CONNECTIONS
from channels_app.services.claim import (
    QUEUED_GRACE, Claimed, batch_size, deliveries_claim, deliveries_due_q, sending_lease,
)
from channels_app.services.consent import address_suppress
from channels_app.services.links import link_url
from channels_app.services.streaming import deliveries_stream
from channels_app.services.tracking import recipient_opt_out, redial_key
from channels_app.services.sending import (
    _enqueue, _event_properties, deliveries_cluster, message_metadata, unsubscribe_url,
)
from journeys.engine.batch import rows_insert, rows_set, skip_locked
from journeys.engine.queue import task_send
from journeys.services.outbound import backoff_delay

logger = logging.getLogger(__name__)

__all__ = ["QUEUED_GRACE", "deliveries_dispatch", "deliveries_dispatch_due", "deliveries_drain", "delivery_dispatch",
           "deliveries_requeue", "delivery_requeue"]


def _outgoing(delivery: Delivery, *, status_callback: bool) -> OutgoingMessage:
    headers = {}
    if delivery.channel.kind == ChannelKind.EMAIL and not delivery.transactional:
        headers = {"List-Unsubscribe": f"<{unsubscribe_url(delivery)}>",
                   "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    return OutgoingMessage(
        delivery_id=delivery.pk, idempotency_key=redial_key(delivery), kind=delivery.channel.kind,
        to=delivery.to, subject=delivery.subject, body=delivery.body, html_body=delivery.html_body, headers=headers,
        status_callback_url=link_url(purpose="status", data={"d": delivery.pk}) if status_callback else "",
        metadata=message_metadata(delivery),
    )


class NotSent:
    """A claimed message the provider never got (its channel's breaker opened first, or the
    provider crashed on an earlier message): claimed again at once, or at `retry_at` (its
    channel timed out earlier in the pass)."""

    def __init__(self, why: str, retry_at: datetime | None = None) -> None:
        self.why = why
        self.retry_at = retry_at
        self.attempt_returned = False  # the claim's attempt given back once, however often the write is tried


@dataclass
class Sent:
    """What a provider said about one message, and how long it took."""

    delivery: Delivery
    outcome: SendResult | ProviderError | NotSent
    latency_ms: int = 0
    at: datetime | None = None  # when the answer came (retries, Retry-After and the breaker count from it)


# Only on the worker's own claim: a worker that outlived its lease must not mark a row claimed again since.
_MARK_SQL = ("UPDATE channels_app_delivery SET accepted_at = %s, provider_message_id = %s, latency_ms = %s"
             " WHERE id = %s AND claimed_at = %s")


def record_window() -> float:
    """How long a dispatcher keeps the outcomes it holds and retries writing them while the
    database is unreachable (a restart takes seconds, a failover tens): half the send lease,
    and inside the queue's time limit for the task (a worker the queue kills loses them)."""
    window = sending_lease().total_seconds() / 2
    timeout = (getattr(settings, "Q_CLUSTER", {}) or {}).get("timeout")
    return min(window, timeout * 0.9) if timeout else window


_T = TypeVar("_T")


def _db_retry(write: Callable[[], _T], *, what: str, until: float) -> _T:
    """Run `write` (outcomes held in memory) until it succeeds: a lost database connection is
    closed, and the write tried again on a new one with backoff up to `until` (monotonic). Only
    outside a caller's transaction (one open there is lost with the connection): then it raises.
    Meanwhile the send loop waits, so no message goes out that could not be recorded."""
    delay = 0.05
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() + delay > until:
                raise
            logger.warning("dispatch: %s failed (%s); reconnecting, trying again in %.2f s", what,
                           str(exc).strip() or type(exc).__name__, delay)
            try:
                connection.close()
            except DatabaseError:  # already gone
                pass
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


class _Marks:
    """Each message the provider has is marked on its row at once (its own statement, committed
    unless a caller's transaction is open), so a worker killed before the batch's results are
    written never sends it again. One channel's part of a batch: one cursor for all its marks.
    A mark the database does not take (connection lost) is retried on a new connection until
    `until` (the send loop waits meanwhile): a live worker never forgets what it sent."""

    def __init__(self, until: float | None = None) -> None:
        self.until = time.monotonic() + record_window() if until is None else until
        # The one statement per message of the send loop, prepared once per connection: Django's
        # cursors bind client-side, so PostgreSQL would parse and plan it for every message (~40%
        # of its cost). Off behind PgBouncer (DB_DISABLE_SERVER_SIDE_CURSORS, docs/SCALING.md).
        self.prepared = (connection.vendor == "postgresql"
                         and not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"))
        self.cursor: psycopg.Cursor | None = None

    def mark(self, delivery: Delivery, result: SendResult, latency_ms: int, now: datetime) -> None:
        delivery.accepted_at = delivery.sent_at = now
        delivery.latency_ms = latency_ms
        delivery.provider_message_id = (result.provider_message_id or "").replace("\x00", "")[:255]
        params = [now, delivery.provider_message_id, latency_ms, delivery.pk, delivery.claimed_at]

        def write() -> None:
            try:
                self._execute(params)
            except (OperationalError, InterfaceError):
                self.close()  # its connection is gone: the next try prepares on the new one
                raise

        _db_retry(write, what=f"marking delivery {delivery.pk} accepted", until=self.until)

    def _execute(self, params: list) -> None:
        if not self.prepared:
            adapt = connection.ops.adapt_datetimefield_value  # SQLite compares datetimes as stored text
            params = [adapt(params[0]), params[1], params[2], params[3], adapt(params[4])]
            with connection.cursor() as cursor:
                cursor.execute(_MARK_SQL, params)
            return
        with connection.wrap_database_errors:
            if self.cursor is None:
                connection.ensure_connection()
                self.cursor = psycopg.Cursor(connection.connection)
            raw = self.cursor.connection
            # Django connects with prepare_threshold None, with which psycopg ignores prepare=True;
            # a threshold no query reaches lets only this explicit one be prepared, for this call.
            threshold = raw.prepare_threshold
            if threshold is None:
                raw.prepare_threshold = _EXPLICIT_ONLY
            try:
                self.cursor.execute(_MARK_SQL, params, prepare=True)
            finally:
                raw.prepare_threshold = threshold

    def close(self) -> None:
        if self.cursor is not None:
            try:
                self.cursor.close()
            except psycopg.Error:  # its connection is gone
                pass
            self.cursor = None


_EXPLICIT_ONLY = 2**31 - 1


class DispatchRun:
    """One dispatcher run (a task): provider instances, and so their connections, are kept
    from one pass to the next and closed at the end. A run with `seconds` stops handing messages
    to providers when they have passed, even inside a pass (a slow vendor must not keep the task
    past its timeout: killed mid-batch, the batch would wait for the send lease); what it did not
    send is due again at once."""

    def __init__(self, now: datetime | None = None, seconds: float | None = None) -> None:
        self.fixed_now = now
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.record_until = time.monotonic() + record_window()  # outcomes held are retried until then
        self.providers: dict[tuple, Provider] = {}
        self.outcome: Counter = Counter()

    def time_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def now(self) -> datetime:
        return self.fixed_now or timezone.now()

    def __enter__(self) -> DispatchRun:
        return self

    def __exit__(self, *exc) -> None:
        for provider in self.providers.values():
            try:
                provider.close()
            except Exception:  # noqa: BLE001 - closing a connection must not fail the run
                logger.exception("closing provider %s failed", provider.name)
        self.providers.clear()

    def _provider(self, channel: Channel, lane: int = 0) -> Provider:
        key = (channel.pk, channel.provider, json.dumps(channel.settings or {}, sort_keys=True, default=str), lane)
        if key not in self.providers:
            self.providers[key] = get_provider(channel.provider, channel.settings)
        return self.providers[key]

    def _forget(self, channel: Channel) -> None:
        for key in [k for k in self.providers if k[0] == channel.pk]:
            try:
                self.providers.pop(key).close()
            except Exception:  # noqa: BLE001
                logger.exception("closing provider of %s failed", channel.name)

    def pass_(self, *, ids: list[int] | None = None, limit: int | None = None) -> tuple[Claimed, list[int]]:
        """Claim one batch, send it, record the results. Returns the claim and the ids to
        claim again at once (probe waiters; messages a breaker stopped)."""
        now = self.now()
        claimed = deliveries_claim(ids=ids, now=now, limit=limit)
        self.outcome["held"] += claimed.held
        if not claimed.deliveries:
            return claimed, list(claimed.later)
        by_channel: dict[int, list[Delivery]] = defaultdict(list)
        for d in claimed.deliveries:
            by_channel[d.channel.pk].append(d)
        sent: list[Sent] = []
        # Channels already failing go last: a healthy channel's part is not kept waiting behind them.
        for group in sorted(by_channel.values(), key=lambda g: _failing(claimed.admissions.get(g[0].channel.pk))):
            sent += self._send(group, claimed.admissions.get(group[0].channel.pk), now)
        _db_retry(lambda: deliveries_record(sent=sent, now=now), what="recording a batch's results",
                  until=self.record_until)
        again = list(claimed.later)
        for s in sent:
            if isinstance(s.outcome, NotSent):
                if s.outcome.retry_at is None:
                    again.append(s.delivery.pk)
            else:
                self.outcome[s.delivery.status] += 1
        return claimed, again

    def _send(self, group: list[Delivery], admission: breakers.Admission | None, now: datetime) -> list[Sent]:
        """One channel's part of a batch, through the provider's batch entry point (a large part of
        a concurrent provider's: over several sessions at once, `_Lanes`). Stops at the failure
        that opens the breaker (the rest is not sent: claimed again at once), and at the first
        send that timed out: a hanging vendor costs one timeout a pass (a timeout per lane in
        flight, at once), and the rest waits the channel's first retry delay (`retry_base_s`) for a
        later pass, so the other channels of the batch and the worker are not held up."""
        channel = group[0].channel
        probe = bool(admission and admission.probe)
        try:
            provider = self._provider(channel)
            messages = [_outgoing(d, status_callback=provider.status_callbacks) for d in group]
            lanes = 1 if probe or provider.batch_unit() > 1 else lane_count(channel, provider, len(group))
            providers = [provider, *(self._provider(channel, lane) for lane in range(1, lanes))]
        except ProviderError as exc:  # unknown provider, bad settings
            return [Sent(d, exc) for d in group]
        failures = admission.failures if admission else 0
        failing_ms = admission.failing_ms if admission else 0
        why_stopped, retry_at = "", None
        out: list[Sent] = []
        unit = provider.batch_unit()
        source = _Lanes(providers, group, messages) if lanes > 1 else _Session(provider, group, messages)
        marks = _Marks(until=self.record_until)
        try:
            for d, outcome, latency in source:
                if outcome is _NO_OUTCOME:  # handed over, but no word on it: retried later (same idempotency key)
                    outcome = TransientError(f"provider {channel.provider} gave no outcome for this message",
                                             unanswered=True)
                elif isinstance(outcome, Exception) and not isinstance(outcome, ProviderError):
                    # a provider bug must not leave rows "sending" until the lease ends
                    logger.error("provider %s crashed on delivery %s", channel.provider, d.pk, exc_info=outcome)
                    outcome, why_stopped = PermanentError(f"{type(outcome).__name__}: {outcome}"), _CRASHED
                elif not isinstance(outcome, (SendResult, ProviderError, NotSent)):
                    outcome = PermanentError(f"provider {channel.provider} answered {outcome!r}")
                at = self.now()  # a long pass (a slow vendor) is not as old as its claim
                out.append(Sent(d, outcome, latency, at))
                if isinstance(outcome, SendResult):
                    marks.mark(d, outcome, latency, at)
                    failures = 0
                elif isinstance(outcome, NotSent):
                    source.stop()
                elif outcome.channel_failure:
                    failures, failing_ms = failures + 1, failing_ms + latency
                    if (probe or breakers.breaker_opens(channel=channel, failures=failures, failing_ms=failing_ms)
                            ) and not why_stopped:
                        why_stopped = f"the breaker of {channel.name} opened during the batch"
                    elif _timed_out(outcome) and not why_stopped:
                        why_stopped = f"{channel.name} timed out earlier in the batch"
                        retry_at = at + timedelta(seconds=channel.retry_base_s)
                if not why_stopped and self.time_up():
                    why_stopped = _TIME_UP
                if why_stopped and len(out) % unit == 0:  # never inside a bulk request already made
                    source.stop()  # the rest goes to the fallback, waits, or gets a fresh provider
        finally:
            try:
                source.close()
            finally:
                marks.close()
        if why_stopped == _CRASHED:
            self._forget(channel)
        reported = {s.delivery.pk for s in out}
        out += [Sent(d, NotSent(why_stopped or "not sent", retry_at)) for d in group if d.pk not in reported]
        return out


def _failing(admission: breakers.Admission | None) -> bool:
    return bool(admission and (admission.failures or admission.probe))


def _timed_out(error: ProviderError) -> bool:
    """A send that cost a whole timeout (connecting, or waiting for the answer); a connection
    dropped at once is not one (the next message reconnects)."""
    cause: BaseException | None = error
    for _ in range(5):  # the provider's error, the transport's, the socket's
        cause = cause.__cause__ or cause.__context__
        if cause is None:
            return False
        if isinstance(cause, TimeoutError):
            return True
    return False


_CRASHED = "the provider crashed"
_TIME_UP = "the dispatcher's time was up (the next one sends it)"
LANE_MIN_MESSAGES = 20  # a message part smaller than this per session is sent over fewer sessions


def lane_count(channel: Channel, provider: Provider, messages: int) -> int:
    """Sessions for a channel's part of a batch: the channel's `connections` setting (default
    DELIVERY_CONNECTIONS) for a concurrent provider, fewer for a small part, 1 otherwise."""
    if not provider.concurrent:
        return 1
    default = getattr(settings, "DELIVERY_CONNECTIONS", 4)
    try:  # a value saved before the admin checked it (channel_settings) is not worth a failed batch
        wanted = int((channel.settings or {}).get("connections") or default)
    except (TypeError, ValueError):
        wanted = default
    return max(1, min(wanted, MAX_CONNECTIONS, messages // LANE_MIN_MESSAGES))


_NO_OUTCOME = object()


class _Session:
    """A channel's part of a batch over one provider instance: (delivery, outcome, latency) in
    order, message n+1 handed over only when the report of n has been taken; an outcome is the
    provider's answer, the exception a crashed provider raised, or _NO_OUTCOME."""

    def __init__(self, provider: Provider, group: list[Delivery], messages: list[OutgoingMessage]) -> None:
        self.group, self.results, self.stopped = group, provider.send_batch(messages), False

    def __iter__(self):
        for d in self.group:
            if self.stopped:
                return
            started = time.monotonic()
            try:
                outcome = next(self.results)
            except StopIteration:
                outcome = _NO_OUTCOME
            except Exception as exc:  # noqa: BLE001 - reported (the dispatcher fails the message and stops)
                outcome = exc
            yield d, outcome, int((time.monotonic() - started) * 1000)

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.results.close()


class _Lanes:
    """A channel's part of a batch over several provider instances at once, each in a thread of
    its own (a lane). A lane takes the next message not yet handed to any lane and calls its
    provider's `send` (concurrent providers send one message a call: `Provider.concurrent`), and
    takes the one after only when the dispatcher has taken (and marked) the report of the last:
    so at most one message per lane is ever accepted and not yet marked, and after `stop()` no
    lane starts another one. Lanes never touch the database; the dispatcher's thread takes the
    reports as they come (completion order) and writes the marks."""

    _DONE = object()  # a lane's last report

    def __init__(self, providers: list[Provider], group: list[Delivery], messages: list[OutgoingMessage]) -> None:
        self.group, self.messages = group, messages
        self.pending = deque(range(len(group)))
        self.lock = threading.Lock()
        self.reports: queue.SimpleQueue = queue.SimpleQueue()
        self.stopped = False
        self.taken = [threading.Semaphore(0) for _ in providers]
        self.threads = [threading.Thread(target=self._lane, args=(i, p), name=f"dispatch-lane-{i}", daemon=True)
                        for i, p in enumerate(providers)]
        self.started = False

    def _next(self) -> int | None:
        with self.lock:
            return None if self.stopped or not self.pending else self.pending.popleft()

    def _lane(self, lane: int, provider: Provider) -> None:
        try:
            while (index := self._next()) is not None:
                started = time.monotonic()
                try:
                    outcome = provider.send(self.messages[index])
                except Exception as exc:  # noqa: BLE001 - reported: a ProviderError, or a crash (no more sends)
                    outcome = exc
                self.reports.put((lane, index, outcome, int((time.monotonic() - started) * 1000)))
                self.taken[lane].acquire()
                if isinstance(outcome, Exception) and not isinstance(outcome, ProviderError):
                    return
        finally:
            self.reports.put((lane, self._DONE, None, 0))
            try:
                connections.close_all()  # a provider that read the database did it on this thread's connection
            except Exception:  # noqa: BLE001
                logger.exception("closing a dispatch lane's database connection failed")

    def __iter__(self):
        self.started = True
        for thread in self.threads:
            thread.start()
        live = len(self.threads)
        while live:
            lane, index, outcome, latency = self.reports.get()
            if index is self._DONE:
                live -= 1
                continue
            yield self.group[index], outcome, latency
            self.taken[lane].release()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True

    def close(self) -> None:
        """Stop handing out messages and wait for the lanes (a report not taken is not marked:
        as when a worker dies mid-send, its row waits for the lease)."""
        self.stop()
        if not self.started:
            return
        for taken in self.taken:
            taken.release()
        for thread in self.threads:
            thread.join()


def _event(delivery: Delivery, name: str, message_id: str, at: datetime, **extra):
    from journeys.services.internal_events import InternalEvent

    return InternalEvent(customer_id=delivery.customer_id, user_id=delivery.customer.external_id, name=name,
                         message_id=message_id, properties={**_event_properties(delivery), **extra}, at=at)


def _error_text(error: ProviderError) -> str:
    """A provider's error as stored: its message (an answer's body may hold anything), without
    NUL characters, which PostgreSQL text and JSON refuse (one would fail the whole batch's record)."""
    return str(error).replace("\x00", "\N{REPLACEMENT CHARACTER}")[:4000]


def _own_claims(deliveries: list[Delivery]) -> Q:
    """These rows, still under the claim this worker made (a row whose lease expired may have been
    claimed again by another worker, whose results are its own to write)."""
    by_claim: dict = defaultdict(list)
    for d in deliveries:
        by_claim[d.claimed_at].append(d.pk)
    return reduce(operator.or_, (Q(pk__in=ids, claimed_at=at) for at, ids in by_claim.items()), Q(pk__in=[]))


_NOT_OUT = (DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED, DeliveryStatus.QUEUED,
            DeliveryStatus.SUPPRESSED)  # the rows a callback moved on are in none of these


def deliveries_record(*, sent: list[Sent], now: datetime, breaker: bool = True) -> None:
    """Write a batch's results in one transaction: delivery rows (sent; deferred for a retry
    with backoff; failed; not sent: due again now), one attempt row per provider call, each
    channel's breaker (its successes and transient failures in order), and the
    `Message Sent` / `Message Failed` events (one INSERT, one engine task per 200)."""
    from journeys.services.internal_events import events_record_internal

    attempts, events, accepted, changed = [], [], [], []
    per_channel: dict[int, tuple[Channel, list[breakers.Outcome]]] = {}
    last_at: dict[int, datetime] = {}
    for s in sent:
        d, outcome, at = s.delivery, s.outcome, s.at or now
        channel = d.channel
        if isinstance(outcome, NotSent):
            if not outcome.attempt_returned:  # the claim counted an attempt the provider never saw
                d.attempts -= 1
                outcome.attempt_returned = True
            d.status, d.reason, d.error = DeliveryStatus.DEFERRED, Reason.RETRY, outcome.why
            d.next_attempt_at = outcome.retry_at or now
            changed.append(d)
            continue
        ok = isinstance(outcome, SendResult)
        error = "" if ok else _error_text(outcome)
        attempts.append({"delivery_id": d.pk, "channel_id": channel.pk, "at": at, "ok": ok,
                         "latency_ms": s.latency_ms, "transient": bool(not ok and outcome.transient),
                         "error": error, "status_code": outcome.status_code})
        if ok or outcome.channel_failure:
            retry_at = at + timedelta(seconds=outcome.retry_after) if not ok and outcome.retry_after else None
            per_channel.setdefault(channel.pk, (channel, []))[1].append(
                breakers.Outcome(ok, error, s.latency_ms, retry_at))
            last_at[channel.pk] = max(at, last_at.get(channel.pk, at))
        if ok:
            accepted.append(d)
            d.status, d.next_attempt_at, d.reason, d.error = DeliveryStatus.SENT, None, "", ""
            events.append(_event(d, "Message Sent", f"sent:{d.pk}", d.sent_at or at))
            continue
        d.error = error
        if outcome.unanswered and not d.notes.get("unanswered"):
            # an attempt that may have arrived: never rerouted from now on (claim.py), whatever later
            # attempts on this channel answer
            d.notes = {**d.notes, "unanswered": True}
        if outcome.transient and d.attempts < channel.max_attempts:
            d.status, d.reason = DeliveryStatus.DEFERRED, Reason.RETRY
            d.next_attempt_at = at + backoff_delay(attempt=d.attempts, base_s=channel.retry_base_s,
                                                      max_s=channel.retry_max_s, retry_after=outcome.retry_after)
        else:
            d.status, d.next_attempt_at = DeliveryStatus.FAILED, None
            d.reason = Reason.ATTEMPTS_EXHAUSTED if outcome.transient else Reason.PERMANENT_ERROR
            if outcome.bounce and not outcome.transient:  # the address does not exist: never tried again
                d.status, d.reason = DeliveryStatus.BOUNCED, Reason.UNDELIVERABLE
            elif outcome.opt_out and not outcome.transient:  # the recipient unsubscribed at the vendor
                d.reason = Reason.CHANNEL_OPT_OUT
        changed.append(d)
    with transaction.atomic():
        if changed:
            # A status callback may have moved a row on while its send was answered with an error (the
            # vendor delivered it, then our read timed out): statuses only move forward, so such a row
            # keeps its status and is neither retried nor failed.
            ours = set(Delivery.objects.select_for_update().filter(
                _own_claims(changed), status=DeliveryStatus.SENDING).values_list("pk", flat=True))
            changed = [d for d in changed if d.pk in ours]
            failed_at = {s.delivery.pk: s.at or now for s in sent}
            events += [_event(d, "Message Failed", f"status:{d.pk}:failed", failed_at[d.pk], error=d.error[:500])
                       for d in changed if d.status == DeliveryStatus.FAILED]
            bounced = [d for d in changed if d.status == DeliveryStatus.BOUNCED]
            events += [_event(d, "Message Bounced", f"status:{d.pk}:bounced", failed_at[d.pk], status="bounced",
                              detail=d.error[:500]) for d in bounced]
            for d in bounced:
                address_suppress(customer=d.customer, channel_kind=d.channel.kind, address=d.to, detail=d.error)
            for d in changed:
                if d.reason == Reason.CHANNEL_OPT_OUT and d.status == DeliveryStatus.FAILED:
                    recipient_opt_out(delivery=d, detail=d.error)
        rows_insert(DeliveryAttempt, attempts)
        if accepted:
            # a status callback may already have moved a row on (delivered): statuses only move forward
            ids = [d.pk for d in accepted]
            # accepted_at: this send's mark (a row whose lease expired and was claimed again has none)
            marked = Delivery.objects.filter(_own_claims(accepted), accepted_at__isnull=False)
            moved = marked.filter(status=DeliveryStatus.SENDING).update(
                status=DeliveryStatus.SENT, sent_at=F("accepted_at"), next_attempt_at=None, reason="", error="",
                updated_at=now)
            if moved < len(ids):  # those a callback moved on keep their status, and get their send's moment
                # (a callback sets sent_at itself, to its own moment when it came before the send's mark)
                marked.exclude(status__in=_NOT_OUT).update(sent_at=F("accepted_at"))
        rows_set(Delivery, [{"id": d.pk, "status": d.status, "reason": d.reason, "error": d.error,
                             "next_attempt_at": d.next_attempt_at, "attempts": d.attempts, "notes": d.notes}
                            for d in changed],
                 ("status", "reason", "error", "next_attempt_at", "attempts", "notes"), stamp=now)
        if breaker:
            for channel, outcomes in per_channel.values():
                breakers.breaker_record_many(channel=channel, outcomes=outcomes, now=last_at[channel.pk])
        events_record_internal(events=events)
        deliveries_stream(deliveries=[*accepted, *(d for d in changed
                                                   if d.status in (DeliveryStatus.FAILED, DeliveryStatus.BOUNCED))],
                          at=now)


def deliveries_dispatch(*, delivery_ids: list[int], now: datetime | None = None) -> dict:
    """Send these deliveries (the engine queues one task per batch): claimed in batches,
    each channel's part over one provider connection. Ids that are not queued or due
    (already sending, sent, suppressed, deferred to later) are left alone. After
    `drain_seconds()` the rest is handed on to a task of its own (a slow vendor)."""
    from django_q.tasks import async_task

    pending = list(dict.fromkeys(delivery_ids))
    size = batch_size()
    with DispatchRun(now, seconds=drain_seconds()) as run:
        for _ in range(4 * len(pending) + 4):  # every pass settles at least one message
            if not pending:
                break
            if run.time_up():  # a slow provider: the rest goes on in a task of its own
                async_task("channels_app.tasks.deliveries_send", pending, group="deliveries",
                           cluster=deliveries_cluster())
                run.outcome["handed_on"] += len(pending)
                break
            chunk, pending = pending[:size], pending[size:]
            _, again = run.pass_(ids=chunk)
            pending = again + pending
        return dict(run.outcome)


def delivery_dispatch(*, delivery_id: int, now: datetime | None = None) -> Delivery | None:
    """Send one queued or due delivery (a batch of one); returns the row as it ends up.
    A delivery that is not queued or due (already sending, sent, suppressed) is left alone."""
    deliveries_dispatch(delivery_ids=[delivery_id], now=now)
    return (Delivery.objects.select_related("channel", "customer", "topic", "requested_channel")
            .filter(pk=delivery_id).first())


def drain_seconds() -> float:
    """How long one drain task keeps claiming batches: well inside the q2 task timeout."""
    budget = float(getattr(settings, "DELIVERY_DRAIN_SECONDS", 40))
    timeout = (getattr(settings, "Q_CLUSTER", {}) or {}).get("timeout")
    return min(budget, timeout * 0.5) if timeout else budget


def deliveries_drain(*, now: datetime | None = None, seconds: float | None = None) -> dict:
    """Send due deliveries batch after batch (SKIP LOCKED: drains running side by side take
    different batches) until none is due or `seconds` have passed (the next tick goes on)."""
    batches = 0
    with DispatchRun(now, seconds=drain_seconds() if seconds is None else seconds) as run:
        while not run.time_up():
            claimed, again = run.pass_(limit=batch_size())
            if not claimed and not again:
                break  # nothing due (or all of it taken by other drains)
            batches += 1
        return {**run.outcome, "batches": batches}


def deliveries_lease_expire(*, now: datetime) -> int:
    """Claims whose worker died (`sending` past the lease): messages the provider had
    accepted (marked) are recorded as sent, never sent again; the others are due again."""
    expired = Delivery.objects.filter(status=DeliveryStatus.SENDING, claimed_at__lt=now - sending_lease())
    with transaction.atomic():
        # Not marked: due again. The one its worker had in flight may have arrived: none of them is
        # rerouted to a fallback channel from now on ("unanswered", claim.py).
        unmarked = list(expired.filter(accepted_at__isnull=True).select_for_update(**skip_locked()).only("id", "notes"))
        rows_set(Delivery, [{"id": d.pk, "status": DeliveryStatus.DEFERRED, "reason": Reason.RETRY, "next_attempt_at": now,
                             "error": "send lease expired", "notes": {**d.notes, "unanswered": True}} for d in unmarked],
                 ("status", "reason", "next_attempt_at", "error", "notes"), stamp=now)
    count = len(unmarked)
    while True:
        with transaction.atomic():
            rows = list(expired.filter(accepted_at__isnull=False).select_related("channel", "customer", "topic", "template")
                        .select_for_update(of=("self",), **skip_locked()).order_by("id")[: batch_size()])
            if not rows:
                return count
            for d in rows:
                d.sent_at = d.accepted_at
            deliveries_record(sent=[Sent(d, SendResult(d.provider_message_id), d.latency_ms or 0) for d in rows],
                              now=now, breaker=False)
            count += len(rows)


def drain_tasks() -> int:
    return max(1, int(getattr(settings, "DELIVERY_DRAIN_TASKS", 2)))


def deliveries_dispatch_due(*, now: datetime | None = None) -> int:
    """The sweeper (every minute): expired send leases, then drain tasks for what is due
    (deferred deliveries whose time has come, queued ones whose enqueue was lost): one task
    per batch due, at most DELIVERY_DRAIN_TASKS; each keeps claiming batches while due
    work remains. Returns how many deliveries were due (counted up to what those tasks take
    in their first batches)."""
    from django_q.tasks import async_task

    at = now or timezone.now()
    deliveries_lease_expire(now=at)
    size, tasks = batch_size(), drain_tasks()
    due = Delivery.objects.filter(deliveries_due_q(at)).values_list("pk", flat=True)[: size * tasks]
    found = len(due)
    for _ in range(min(tasks, -(-found // size))):
        # named for the sending cluster: the tick may run on a schedules cluster of its own
        async_task("channels_app.tasks.deliveries_drain", now.isoformat() if now else None, group="deliveries",
                   cluster=deliveries_cluster())
    return found


@dataclass
class Requeued:
    """What sending deliveries again did: the ids queued (of them, those rendered again first),
    those refused and why (why -> how many), and those left alone (not failed or deferred; or
    held until their send time, which they keep)."""

    queued: list[int]
    refused: Counter
    rendered: int = 0
    skipped: int = 0
    held: int = 0

    def report(self) -> list[tuple[str, str]]:
        """What the operator is told, as (level: success, error or warning; text)."""
        def deliveries(n: int) -> str:
            return f"{n} deliver{'y' if n == 1 else 'ies'}"

        out = []
        if self.queued:
            rendered = f" ({self.rendered} rendered again from their template first)" if self.rendered else ""
            out.append(("success", f"{deliveries(len(self.queued))} queued to be sent again now{rendered}."))
        if self.refused:
            shown = self.refused.most_common(3)
            others = sum(self.refused.values()) - sum(n for _, n in shown)
            why = "; ".join(f"{n}: {text}" for text, n in shown) + (f"; {others}: other reasons" if others else "")
            out.append(("error", f"{deliveries(sum(self.refused.values()))} not sent (a message is never sent "
                                 f"without content) - {why}. Fix the template or the customer's data, then send "
                                 "them again."))
        if self.skipped:
            out.append(("warning", f"{deliveries(self.skipped)} left alone: only failed or deferred deliveries are "
                                   "sent again."))
        if self.held:
            out.append(("warning", f"{deliveries(self.held)} left alone: held until the customer's usual "
                                   "engagement hour, they go out then."))
        return out


def deliveries_requeue(*, ids: list[int], actor: str, now: datetime | None = None) -> Requeued:
    """Send failed or deferred deliveries again now (an operator's decision after an outage or a
    fixed template), each in its own transaction, with the same idempotency key. A message that
    never rendered (its template failed) is rendered again first, as the engine would now
    (`delivery_render_again`); one that still cannot be is refused and left as it is: a message
    is never sent without content. A delivery deferred to its send time (reason `send_time`, the
    customer's usual engagement hour) is not failing: it is left alone and keeps its time. One
    dispatch task sends those queued, after commit."""
    from channels_app.services.sending import _enqueue_collected, delivery_never_rendered, delivery_render_again

    now = now or timezone.now()
    result = Requeued([], Counter())
    for pk in ids:
        with transaction.atomic():
            delivery = (Delivery.objects.select_for_update(of=("self",))
                        .select_related("channel", "customer", "topic").filter(pk=pk).first())
            if delivery is None or delivery.status not in (DeliveryStatus.FAILED, DeliveryStatus.DEFERRED):
                result.skipped += 1
                continue
            if (delivery.status == DeliveryStatus.DEFERRED and delivery.reason == Reason.SEND_TIME
                    and delivery.next_attempt_at is not None and delivery.next_attempt_at > now):
                result.held += 1
                continue
            rendered = delivery_never_rendered(delivery)
            if rendered and (why := delivery_render_again(delivery, now=now)):
                result.refused[why[:300]] += 1
                continue
            delivery.status, delivery.reason, delivery.next_attempt_at, delivery.error = (
                DeliveryStatus.QUEUED, "", None, "")
            delivery.attempts = 0
            delivery.notes = {**delivery.notes, "requeued": [*delivery.notes.get("requeued", []), actor]}
            delivery.save()
        result.queued.append(pk)
        result.rendered += rendered
    if result.queued:
        _enqueue_collected(result.queued)
    return result


def delivery_requeue(*, delivery: Delivery, actor: str) -> Delivery:
    """`deliveries_requeue` for one delivery; returns the row as it is then."""
    deliveries_requeue(ids=[delivery.pk], actor=actor)
    return Delivery.objects.get(pk=delivery.pk)


def deliveries_release_on_resume(*, scope: str, key: str) -> None:
    """Journeys' HOLD_RELEASE_HOOKS entry: safe mode ended or a workflow resumed (runs on commit);
    also a channel resumed or its quiet hours changed (`channels.channel_save`), a frequency cap
    changed or deleted (`caps.frequency_cap_save`). One task releases them, so they go out oldest first."""
    task_send("channels_app.services.dispatch.deliveries_release_held", scope, key, group="deliveries",
              cluster=deliveries_cluster())


def _falling_back_to(channel_id: int) -> set[int]:
    """This channel and every channel whose fallback chain reaches it (a handful of rows)."""
    fallback_of = dict(Channel.objects.values_list("pk", "fallback_id"))
    found = set()
    for start in fallback_of:
        seen, current = set(), start
        while current is not None and current not in seen:
            if current == channel_id:
                found.add(start)
                break
            seen.add(current)
            current = fallback_of.get(current)
    return found | {channel_id}


def deliveries_release_held(scope: str = "", key: str = "", now: datetime | None = None) -> int:
    """Send the deliveries held by a rule that was lifted or changed, oldest first, through the
    normal send path (consent, quiet hours, caps and breakers apply again; one still held stays
    deferred, until the moment today's rules give): they are made due now with one UPDATE and
    drained in batches. Scopes: a pause (safe mode: no scope; "workflow", "channel": its id),
    "cap" (the cap's name as it held them) and "quiet_hours" (the channel's id)."""
    from journeys.models import JourneyRun

    at = now or timezone.now()
    deferred = Delivery.objects.filter(status=DeliveryStatus.DEFERRED)
    if scope == "cap":  # those still waiting (the due index's range of what is to come), by its name
        held = deferred.filter(next_attempt_at__gt=at, reason=Reason.FREQUENCY_CAP, error__startswith=f"cap {key}:")
    elif scope == "quiet_hours":
        held = deferred.filter(next_attempt_at__gt=at, reason=Reason.QUIET_HOURS, channel_id=int(key))
    else:
        held = deferred.filter(reason=Reason.PAUSED)
    if scope == "workflow":
        held = held.filter(run_id__in=JourneyRun.objects.filter(workflow_id=int(key)).values("pk"))
    elif scope == "channel":  # and the messages of channels that fall back to it (held on its pause)
        held = held.filter(channel_id__in=_falling_back_to(int(key)))
    count = held.update(next_attempt_at=at)
    if count:
        deliveries_dispatch_due(now=now)
    return count
