"""Timing and pressure: quiet hours in the customer's timezone, frequency caps, a gap
after the last contact on another channel, the channel's send rate. Each check
returns None (go) or a Hold: suppress, or defer until a moment.

The dispatcher checks a whole batch: `PressureBook` loads the recent contacts of the
batch's customers with one query and `RateBook` a channel's sends of the last minute,
and each counts the messages the batch itself lets through. A message that is being
sent (claimed, `sending`) counts as a contact from its claim on, so two workers
that take turns on a customer (the claim holds a lock on it, see services/claim.py)
cannot break a cap between them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from django.db import connection
from django.db.models import Count, F, Min, Q
from django.db.models.functions import Coalesce

from channels_app.choices import CONTACT_STATUSES, ChannelKind, DeliveryStatus, PressureAction, Reason
from channels_app.models import Channel, Delivery, FrequencyCap
from journeys.engine.runtime import customer_zone


@dataclass
class Hold:
    reason: str
    until: datetime | None = None  # None: suppress; a moment: defer until then
    detail: str = ""


def _in_window(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end  # wraps midnight, e.g. 21:00-08:00


def _clock_reads(day: date, at: time, zone: tzinfo) -> list[datetime]:
    """The moments (UTC) at which a clock in `zone` comes to read `at` on `day`: one on most days;
    two when the clock is set back over it (fold 0 and fold 1); when it is set forward over it
    (the time does not exist that day), the jump, the first moment it reads `at` or later."""
    wall = datetime.combine(day, at)
    moments = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    real = sorted(m for m in moments if m.astimezone(zone).replace(tzinfo=None) == wall)
    if real:
        return real
    before, after = sorted(moments)  # skipped: the jump lies between its two readings, to the second
    while after - before > timedelta(seconds=1):
        middle = before + timedelta(seconds=(after - before).total_seconds() // 2)
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return [after]


def quiet_hours_hold(*, channel: Channel, customer, now: datetime) -> Hold | None:
    """Inside the channel's quiet hours on the customer's clock: wait for the window to end.

    The end is the first moment after `now` at which the customer's clock reads the window's end,
    compared in UTC: on the night the clock is set back a local time comes twice (the hold at the
    second 01:10 lasts until the second 01:30, never a moment already past), and on the night it
    is set forward an end the clock skips is reached when it jumps."""
    if channel.quiet_start is None or channel.quiet_end is None:
        return None
    zone = customer_zone(customer)
    local = now.astimezone(zone)
    if not _in_window(local.timetz().replace(tzinfo=None), channel.quiet_start, channel.quiet_end):
        return None
    end = min(moment for days in range(3)
              for moment in _clock_reads(local.date() + timedelta(days=days), channel.quiet_end, zone)
              if moment > now)
    return Hold(Reason.QUIET_HOURS, until=end.astimezone(now.tzinfo),
                detail=f"quiet hours {channel.quiet_start:%H:%M}-{channel.quiet_end:%H:%M} {zone.key}")


def _contacts(customer_ids: list[int], since: datetime):
    """Messages since then that reached these customers or are being sent to them (webhook calls
    are integrations, not contacts), with the moment they count from (sent, else claimed) and
    whether they are transactional (caps do not count those, see `PressureBook.cap_hold`). Two
    parts, each an index range: those sent since then (customer, sent_at), and those in flight
    (status `sending`, a few at any time), so a customer's older history is never read."""
    from journeys.engine.batch import ids_q

    contacts = Delivery.objects.filter(ids_q("customer_id", customer_ids)).exclude(channel__kind=ChannelKind.WEBHOOK)
    fields = ("pk", "customer_id", "channel_id", "channel__kind", "topic_id", "transactional", "at")
    sent = contacts.filter(status__in=CONTACT_STATUSES, sent_at__gt=since).annotate(at=F("sent_at"))
    sending = contacts.filter(status=DeliveryStatus.SENDING).annotate(at=Coalesce("sent_at", "claimed_at")).filter(
        at__gt=since)
    return sent.values_list(*fields).order_by().union(sending.values_list(*fields).order_by(), all=True)


@dataclass(frozen=True)
class Contact:
    delivery_id: int | None
    channel_id: int
    channel_kind: str
    topic_id: int | None
    transactional: bool
    at: datetime


def enabled_caps(*, share_lock: bool = False) -> list[FrequencyCap]:
    """The caps that apply, shortest window first. share_lock (a claim, on PostgreSQL): the same
    query FOR SHARE, held until the claim commits, so saving or deleting one of these caps (an
    UPDATE/DELETE) waits for the claim and its release sees the holds the claim made under the old
    rule. Claims do not block each other (shared locks)."""
    caps = FrequencyCap.objects.filter(enabled=True).order_by("window_s", "id")
    if share_lock and connection.vendor == "postgresql":
        sql, params = caps.query.sql_with_params()
        return list(FrequencyCap.objects.raw(f"{sql} FOR SHARE", params))
    return list(caps)


def gap_s(delivery: Delivery) -> int:
    return int((delivery.policy or {}).get("min_gap_other_channel_s") or 0)


class PressureBook:
    """Frequency caps and the gap after the last contact, for many deliveries: the recent
    contacts of their customers in one query; `add` counts a message the batch sends."""

    def __init__(self, *, deliveries: Iterable[Delivery], now: datetime, caps: list[FrequencyCap] | None = None,
                 customer_ids: Iterable[int] = (), window_s: int = 0):
        """`customer_ids` and `window_s` add customers and a longer look back than the deliveries
        need (a batch that reads its customers' contacts once for the checks it will make)."""
        deliveries = list(deliveries)
        self.caps = enabled_caps() if caps is None else caps
        self.contacts: dict[int, list[Contact]] = defaultdict(list)
        windows = [cap.window_s for cap in self.caps] + [gap_s(d) for d in deliveries] + [window_s]
        customer_ids = {d.customer_id for d in deliveries} | set(customer_ids)
        if not customer_ids or not max(windows, default=0):
            return
        since = now - timedelta(seconds=max(windows))
        for pk, customer_id, channel_id, kind, topic_id, transactional, at in _contacts(sorted(customer_ids), since):
            self.contacts[customer_id].append(Contact(pk, channel_id, kind, topic_id, transactional, at))

    def add(self, delivery: Delivery, at: datetime) -> None:
        self.contacts[delivery.customer_id].append(
            Contact(delivery.pk, delivery.channel_id, delivery.channel.kind, delivery.topic_id,
                    delivery.transactional, at))

    def cap_hold(self, delivery: Delivery, now: datetime) -> Hold | None:
        """The first cap this send would break (global, per channel, per topic). A cap governs the
        messages it may hold, so it counts only those: transactional messages (receipts, one-time
        codes) neither wait for a cap nor use it up, as with Customer.io's message limits and
        Braze's frequency capping. (The gap after the last contact still counts them: a receipt
        is a contact a campaign on another channel should not follow at once.)"""
        for cap in self.caps:
            if cap.channel_id not in (None, delivery.channel_id) or cap.topic_id not in (None, delivery.topic_id):
                continue
            since = now - timedelta(seconds=cap.window_s)
            recent = sorted((c.at for c in self.contacts.get(delivery.customer_id, ())
                             if c.at > since and not c.transactional
                             and (delivery.pk is None or c.delivery_id != delivery.pk)
                             and cap.channel_id in (None, c.channel_id) and cap.topic_id in (None, c.topic_id)),
                            reverse=True)
            if len(recent) >= cap.limit:
                detail = f"cap {cap.name}: {len(recent)}/{cap.limit} in {cap.window_s}s"
                if cap.action == PressureAction.SUPPRESS:
                    return Hold(Reason.FREQUENCY_CAP, detail=detail)
                return Hold(Reason.FREQUENCY_CAP, detail=detail,
                            until=recent[cap.limit - 1] + timedelta(seconds=cap.window_s) + timedelta(seconds=1))
        return None

    def gap_hold(self, delivery: Delivery, now: datetime) -> Hold | None:
        """Step option `min_gap_other_channel_s`: no send within that long after the customer's
        last message on another channel kind or their last engagement (open, click...)."""
        gap = gap_s(delivery)
        if not gap:
            return None
        last_other = max((c.at for c in self.contacts.get(delivery.customer_id, ())
                          if c.channel_kind != delivery.channel.kind), default=None)
        engaged = getattr(delivery.customer, "last_engaged_at", None)
        last = max([m for m in (last_other, engaged) if m is not None], default=None)
        if last is None or now - last >= timedelta(seconds=gap):
            return None
        detail = f"last contact {last.isoformat()} is within {gap}s"
        if (delivery.policy or {}).get("recent_contact_action", PressureAction.DEFER) == PressureAction.SUPPRESS:
            return Hold(Reason.RECENT_CONTACT, detail=detail)
        return Hold(Reason.RECENT_CONTACT, until=last + timedelta(seconds=gap), detail=detail)


def frequency_cap_hold(*, delivery: Delivery, now: datetime) -> Hold | None:
    """The first cap this one send would break (see PressureBook for a batch)."""
    return PressureBook(deliveries=[delivery], now=now).cap_hold(delivery, now)


def recent_contact_hold(*, delivery: Delivery, now: datetime) -> Hold | None:
    """The gap after the last contact, for one send (see PressureBook for a batch)."""
    return PressureBook(deliveries=[delivery], now=now, caps=[]).gap_hold(delivery, now)


class RateBook:
    """Each channel's sends per minute, counted in the database (shared by all workers) once
    per batch; `take` lets a message through or says until when it waits."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._seen: dict[int, list] = {}  # channel id -> [count in the last minute, first of them]

    def take(self, channel: Channel) -> Hold | None:
        if not channel.rate_limit_per_minute:
            return None
        seen = self._seen.get(channel.pk)
        if seen is None:
            since = self.now - timedelta(seconds=60)
            found = (Delivery.objects.filter(channel=channel)
                     .filter(Q(sent_at__gt=since) | Q(status=DeliveryStatus.SENDING, claimed_at__gt=since))
                     .aggregate(n=Count("pk"), first=Min(Coalesce("sent_at", "claimed_at"))))
            seen = self._seen[channel.pk] = [found["n"], found["first"]]
        if seen[0] < channel.rate_limit_per_minute:
            seen[0] += 1
            seen[1] = seen[1] or self.now
            return None
        return Hold(Reason.RATE_LIMIT, until=(seen[1] or self.now) + timedelta(seconds=60, milliseconds=1),
                    detail=f"{channel.rate_limit_per_minute}/min")


def rate_limit_hold(*, channel: Channel, now: datetime) -> Hold | None:
    """The channel's sends per minute, for one send (see RateBook for a batch)."""
    return RateBook(now).take(channel)
