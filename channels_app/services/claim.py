"""Claiming a batch of deliveries to send: the send-time checks for the whole batch in a
few queries, and the claim (status `sending`) in the same short transaction.

Rows are locked with `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so dispatchers
running side by side take disjoint batches and never wait on each other; SQLite runs
write transactions one at a time (`transaction_mode = IMMEDIATE`), and the claim is a
compare-and-set on the status either way. Customers whose messages are capped (frequency
caps, the gap after the last contact) and rate-limited channels are locked too
(transaction-scoped advisory locks, in key order), so two workers cannot both count
the same free slot: the second counts the first one's claim.

Checks, in the order the single-message path always had: consent again (webhook calls
excepted), the channel's pause, journeys' safe mode and workflow pauses, the breaker
(falling back to the fallback channel when it is open or the channel is disabled),
quiet hours, frequency caps and the gap after the last contact (not for transactional
messages nor replies the customer waits for), and the channel's rate limit. Transactional
messages are claimed first (due ones before the marketing messages due, and first within a
batch), so they take the rate limit's budget first and never wait behind a marketing backlog."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from channels_app.choices import ChannelKind, DeliveryStatus, Reason
from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.services import breaker as breakers
from channels_app.services import policy
from channels_app.services.consent import ConsentBook
from channels_app.services.sending import channel_pick
from channels_app.services.streaming import deliveries_stream
from journeys.engine.batch import rows_set, skip_locked
from journeys.models import Customer

# A queued delivery whose enqueue was lost is picked up by the sweeper after this long.
QUEUED_GRACE = timedelta(seconds=30)
# A message held by a pause (the channel's, a workflow's, safe mode) is released at once when the pause
# is lifted (deliveries_release_held); this recheck is a safety net only (a channel resumed by hand in
# the database): a paused campaign of a million messages is not claimed and written again every minute.
# The recheck backs off with the pause: after an hour, then as long again as the message has been held
# (notes.held_since), at most a day, so a week's pause rewrites its messages ~10 times, not 168.
PAUSE_RECHECK = timedelta(hours=1)
PAUSE_RECHECK_MAX = timedelta(days=1)


def pause_recheck(d: Delivery, now: datetime) -> datetime:
    """When a message held by a pause is looked at again; notes when it was first held."""
    held_since = (d.notes or {}).get("held_since") if d.reason == Reason.PAUSED else None
    since = datetime.fromisoformat(held_since) if held_since else now
    d.notes = {**(d.notes or {}), "held_since": since.isoformat()}
    return now + min(PAUSE_RECHECK_MAX, max(PAUSE_RECHECK, now - since))


# Advisory lock namespaces (pg_advisory_xact_lock(namespace, key)).
LOCK_CUSTOMER, LOCK_CHANNEL_RATE = 7301, 7302


def batch_size() -> int:
    return max(1, int(getattr(settings, "DELIVERY_BATCH_SIZE", 200)))


def sending_lease() -> timedelta:
    """A claimed (`sending`) delivery whose worker died is looked at again after this long."""
    return timedelta(seconds=int(getattr(settings, "DELIVERY_SENDING_LEASE_S", 600)))


def sending_orphaned_after() -> timedelta:
    """A claim older than this has no live worker: the queue stops a task at its time limit
    (Q_CLUSTER timeout), and a dispatcher never holds a claim longer than its task. Its rows only
    wait for the lease (shown as such, not as being sent)."""
    timeout = (getattr(settings, "Q_CLUSTER", {}) or {}).get("timeout") or 120
    return min(timedelta(seconds=int(timeout)), sending_lease())


@dataclass
class Claimed:
    """One claimed batch: `deliveries` are `sending` now (with `channel`, `customer` (but its
    traits), `topic` and `template` (its name) loaded); `later` were left as they were because a half-open breaker lets
    one probe through first (send the probe, then claim them again)."""

    deliveries: list[Delivery] = field(default_factory=list)
    later: list[int] = field(default_factory=list)
    held: int = 0
    admissions: dict[int, breakers.Admission] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.deliveries or self.held)


def deliveries_due_q(now: datetime) -> Q:
    """Deferred deliveries whose time has come, and queued ones whose enqueue was lost."""
    return (Q(status=DeliveryStatus.DEFERRED, next_attempt_at__lte=now)
            | Q(status=DeliveryStatus.QUEUED, created_at__lte=now - QUEUED_GRACE))


def _sendable(now: datetime) -> Q:
    """Given ids: queued ones, and deferred ones whose time has come."""
    return Q(status=DeliveryStatus.QUEUED) | Q(status=DeliveryStatus.DEFERRED) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))


def _locked_rows(ids: Sequence[int] | None, now: datetime, limit: int) -> list[Delivery]:
    # The customers' traits are read only to reroute (rare); templates are loaded by name (_template_names).
    base = (Delivery.objects.select_related("customer", "topic").defer("customer__traits")
            .select_for_update(of=("self",), **skip_locked()))
    if ids is not None:
        return _transactional_first(base.filter(_sendable(now), pk__in=list(ids)).order_by("id"))
    # Stale queued rows (a lost enqueue: few), then the transactional messages due (their partial index,
    # delivery_due_tx_idx: few), then the others oldest first (the due index): a receipt deferred by a
    # rate limit to the same moment as a marketing backlog is claimed before the backlog, not after it.
    rows = list(base.filter(status=DeliveryStatus.QUEUED, created_at__lte=now - QUEUED_GRACE).order_by("id")[:limit])
    due = base.filter(status=DeliveryStatus.DEFERRED, next_attempt_at__lte=now).order_by("next_attempt_at", "id")
    for transactional in (True, False):
        if len(rows) < limit:
            rows += list(due.filter(transactional=transactional)[: limit - len(rows)])
    return _transactional_first(rows)


def _transactional_first(rows) -> list[Delivery]:
    """Transactional messages first, each part in its order: they take the channel's rate budget
    (RateBook) before the marketing messages of the same batch."""
    return sorted(rows, key=lambda d: not d.transactional)


def _advisory_lock(namespace: int, keys: set[int]) -> None:
    """Transaction-scoped locks, taken in key order (no deadlock between two batches)."""
    if not keys or connection.vendor != "postgresql":
        return  # SQLite: the IMMEDIATE write transaction already excludes every other writer
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, k) FROM (SELECT DISTINCT k FROM unnest(%s::int[]) AS k ORDER BY k OFFSET 0) s",
            [namespace, sorted({key % 2_147_483_647 for key in keys})],
        )


class _Breakers:
    """Each channel's admission, asked once per batch; a half-open breaker admits one probe."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.admissions: dict[int, breakers.Admission] = {}
        self.probing: set[int] = set()

    def take(self, channel: Channel) -> tuple[bool, bool, datetime | None]:
        """(allowed, later, retry_at): later = the probe of this batch is already out."""
        admission = self.admissions.get(channel.pk)
        if admission is None:
            admission = self.admissions[channel.pk] = breakers.breaker_admit(channel=channel, now=self.now)
        if not admission.allowed:
            return False, False, admission.retry_at
        if admission.probe:
            if channel.pk in self.probing:
                return False, True, None
            self.probing.add(channel.pk)
        return True, False, None


def _channels() -> dict[int, Channel]:
    """Every channel, with its fallback chain wired (a handful of rows, one query). On PostgreSQL
    the paused ones and those with quiet hours are locked FOR SHARE first, until the claim ends:
    resuming one or changing its quiet hours (an UPDATE) waits for the claim, so the release after
    the save sees what the claim held under the old rule."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(f"SELECT id FROM {Channel._meta.db_table} "
                        "WHERE paused OR (quiet_start IS NOT NULL AND quiet_end IS NOT NULL) FOR SHARE")
    channels = {c.pk: c for c in Channel.objects.all()}
    for channel in channels.values():
        channel.fallback = channels.get(channel.fallback_id)
    return channels


def _reachable(channels) -> set[Channel]:
    """These channels and their fallback chains."""
    found: dict[int, Channel] = {}
    for channel in channels:
        while channel is not None and channel.pk not in found:
            found[channel.pk] = channel
            channel = channel.fallback
    return set(found.values())


def deliveries_claim(*, ids: Sequence[int] | None = None, now: datetime | None = None,
                     limit: int | None = None) -> Claimed:
    """Check and claim a batch: the given ids that are queued or due, or else (ids None) up
    to `limit` due deliveries (deferred ones whose time has come, queued ones whose enqueue
    was lost), oldest first. Held messages are deferred or suppressed with their reason in
    the same transaction; rows another dispatcher holds are skipped."""
    from journeys.engine.runtime import profile_dict
    from journeys.services.governance import outbound_holds

    now = now or timezone.now()
    limit = limit or batch_size()
    out = Claimed()
    with transaction.atomic():
        rows = _locked_rows(ids, now, limit)
        if not rows:
            return out
        channels = _channels()
        templates = {t.pk: t for t in MessageTemplate.objects.only("id", "name")
                     .filter(pk__in={d.template_id for d in rows if d.template_id})}
        for d in rows:
            d.channel = channels[d.channel_id]
            if d.template_id:
                d.template = templates[d.template_id]
        pressured = [d for d in rows if not d.transactional and not (d.policy or {}).get("in_reply_to")]
        caps = policy.enabled_caps(share_lock=True)
        _advisory_lock(LOCK_CUSTOMER, {d.customer_id for d in pressured
                                       if caps or (d.policy or {}).get("min_gap_other_channel_s")})
        _advisory_lock(LOCK_CHANNEL_RATE, {c.pk for c in _reachable(d.channel for d in rows) if c.rate_limit_per_minute})
        consents = ConsentBook((d.customer_id for d in rows),
                               addresses={d.customer_id: (d.customer.email, d.customer.phone) for d in rows},
                               destinations=[(d.customer_id, d.channel.kind, d.to) for d in rows])
        hold_of = outbound_holds(run_ids=(d.run_id for d in rows))
        pressure = policy.PressureBook(deliveries=pressured, now=now, caps=caps)
        rates, admit = policy.RateBook(now), _Breakers(now)
        held: list[Delivery] = []
        claimed: list[Delivery] = []
        rerouted: set[int] = set()
        traits_loaded = False

        def with_traits(d: Delivery):
            """The customer with their traits (deferred by the claim's query): loaded for the whole
            batch with one query the first time a message is rerouted, not one query a row."""
            nonlocal traits_loaded
            if not traits_loaded:
                traits = dict(Customer.objects.filter(pk__in={r.customer_id for r in rows}).values_list("pk", "traits"))
                for r in rows:
                    r.customer.traits = traits.get(r.customer_id, {})
                traits_loaded = True
            return d.customer

        def hold(d: Delivery, reason: str, until: datetime | None, detail: str = "") -> None:
            d.status = DeliveryStatus.DEFERRED if until is not None else DeliveryStatus.SUPPRESSED
            d.next_attempt_at, d.reason, d.error = until, reason, detail
            held.append(d)

        for d in rows:
            channel = d.channel
            refusal = consents.refusal(d.customer_id, channel.kind, d.topic, d.to) \
                if channel.kind != ChannelKind.WEBHOOK else None
            if refusal:
                hold(d, refusal, None, "consent changed before sending")
                continue
            if channel.paused:
                hold(d, Reason.PAUSED, pause_recheck(d, now), f"channel {channel.name} is paused")
                continue
            # Journeys' outage switches: global safe mode and workflow pauses hold the message (deferred, not lost).
            if why := hold_of(d.run_id):
                hold(d, Reason.PAUSED, pause_recheck(d, now), why)
                continue
            allowed, later, retry_at = admit.take(channel) if channel.enabled else (False, False, None)
            if later:
                out.later.append(d.pk)
                continue
            if not allowed:
                fallback, to = None, ""
                # A message whose last send got no answer may have arrived: it waits for its own
                # channel (same idempotency key), never goes out on another one as well.
                unanswered = bool((d.notes or {}).get("unanswered"))
                kept = _UNANSWERED if unanswered and channel.fallback_id else ""
                if channel.fallback_id and not unanswered:
                    customer = with_traits(d)
                    fallback, to, _ = channel_pick(channel=channel.fallback, profile=profile_dict(customer, now),
                                                   customer=customer, topic=d.topic,
                                                   refuse=consents.refuser(d.customer_id))
                fallback_ok = fallback is not None and not fallback.paused
                if fallback_ok:
                    fallback_ok, later, _ = admit.take(fallback)
                    if later:
                        out.later.append(d.pk)
                        continue
                if fallback_ok:
                    _reroute(d, fallback, to, now)
                    rerouted.add(d.pk)
                    channel = fallback
                elif not channel.enabled and fallback is not None and fallback.paused:
                    # A disabled channel's message waits on its fallback's pause (held, deferred, on its
                    # own channel): the fallback's resume releases it (deliveries_release_held follows
                    # fallback chains), and so does its own channel's return at the next recheck.
                    hold(d, Reason.PAUSED, pause_recheck(d, now),
                         f"channel {channel.name} is disabled and its fallback {fallback.name} is paused")
                    continue
                elif not channel.enabled:
                    hold(d, Reason.NO_ADDRESS, None, f"channel {channel.name} is disabled, no usable fallback{kept}")
                    continue
                else:
                    hold(d, Reason.BREAKER_OPEN, retry_at, f"breaker of {channel.name} is open{kept}")
                    continue
            # A reply the customer is waiting for (a chat answer) is not an unsolicited contact:
            # consent applies (above), quiet hours and caps do not.
            if not d.transactional and not (d.policy or {}).get("in_reply_to"):
                found = (policy.quiet_hours_hold(channel=channel, customer=d.customer, now=now)
                         or pressure.cap_hold(d, now) or pressure.gap_hold(d, now))
                if found:
                    hold(d, found.reason, found.until, found.detail)
                    continue
            found = rates.take(channel)
            if found:
                hold(d, found.reason, found.until, found.detail)
                continue
            pressure.add(d, now)
            claimed.append(d)

        _write_holds(held, now)
        _write_claims(claimed, rerouted, now)
        out.deliveries, out.held, out.admissions = claimed, len(held), admit.admissions
    return out


_ROUTE_FIELDS = ("channel_id", "to", "requested_channel_id", "notes")


def _reroute(d: Delivery, fallback: Channel, to: str, now: datetime) -> None:
    """Move the message to its channel's fallback, noting where from, when and why."""
    channel = d.channel
    d.notes = {**d.notes, "rerouted": [*d.notes.get("rerouted", []),
               {"from": channel.name, "to": fallback.name, "at": now.isoformat(),
                "why": "breaker open" if channel.enabled else "channel disabled"}]}
    d.requested_channel_id = d.requested_channel_id or channel.pk
    d.channel, d.to = fallback, to


_UNANSWERED = " (its last send got no answer and may have arrived: it is not sent on the fallback as well)"


def _write_holds(held: list[Delivery], now: datetime) -> None:
    rows_set(Delivery, [{"id": d.pk, "status": d.status, "reason": d.reason, "error": d.error,
                         "next_attempt_at": d.next_attempt_at, **{f: getattr(d, f) for f in _ROUTE_FIELDS}}
                        for d in held],
             ("status", "reason", "error", "next_attempt_at", *_ROUTE_FIELDS), stamp=now)
    deliveries_stream(deliveries=held, at=now)  # the suppressed ones, with their reason (deferred: not streamed)


def _write_claims(claimed: list[Delivery], rerouted: set[int], now: datetime) -> None:
    """status `sending`, one more attempt, the claim time; a rerouted row also its new channel."""
    if not claimed:
        return
    rows_set(Delivery, [{"id": d.pk, **{f: getattr(d, f) for f in _ROUTE_FIELDS}}
                        for d in claimed if d.pk in rerouted], _ROUTE_FIELDS, stamp=now)
    Delivery.objects.filter(pk__in=[d.pk for d in claimed]).update(
        status=DeliveryStatus.SENDING, attempts=F("attempts") + 1, claimed_at=now, reason="", error="",
        sent_at=None, accepted_at=None, provider_message_id="", latency_ms=None, updated_at=now)
    for d in claimed:
        d.status, d.attempts, d.claimed_at, d.reason, d.error = DeliveryStatus.SENDING, d.attempts + 1, now, "", ""
        d.sent_at, d.accepted_at, d.provider_message_id, d.latency_ms = None, None, "", None
