"""Best-channel selection: which channel, and when, for one message to one customer.

The channels are ranked by urgency (urgent updates: push or SMS first; triage: chat
first), then the customer's stated preference (trait `preferred_channel`, a channel
name or kind), then the channel they last engaged on (opens and clicks of past
deliveries, engagement events such as `Push Opened` or `Chat Message Received`).
Each ranked channel is then checked with the same policy services the worker uses
(reachability, consent, pause, breaker, quiet hours, caps, recent contact); one that
would be refused or held is skipped with its reason. Timing: with enough engagement
history, a non-urgent message waits for the customer's most frequent engagement hour
on their own clock. Every decision is written down in `ChannelChoice.reasons`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q

from channels_app.choices import URGENCY_KINDS, BreakerState, ChannelKind, Reason, Urgency
from channels_app.models import Channel, ChannelBreaker, Delivery, Topic
from channels_app.services import policy
from channels_app.services.consent import consent_refusal
from channels_app.services.sending import channel_address
from journeys.engine.runtime import add_local, customer_zone

# Events that say "the customer engaged on this channel kind". `None`: the kind is in
# properties.channel_kind. Email Opened / Link Clicked are read from the deliveries.
ENGAGEMENT_EVENTS: dict[str, str | None] = {
    "Push Opened": ChannelKind.PUSH,
    "Notification Opened": ChannelKind.PUSH,
    "SMS Replied": ChannelKind.SMS,
    "SMS Received": ChannelKind.SMS,
    "Chat Message Received": ChannelKind.CHAT,
    "In-App Message Clicked": ChannelKind.IN_APP,
    "Message Engaged": None,
}
HISTORY_DAYS = 90
# An open or click counts when its message was sent at most this long before the history's
# start: the deliveries are read by (customer, sent_at) range, never a customer's whole history.
OPEN_LAG = timedelta(days=30)
MIN_ENGAGEMENTS = 5


@dataclass(frozen=True)
class Engagement:
    at: datetime
    kind: str  # a channel kind
    source: str  # "delivery:<id>" or "event:<name>"


@dataclass
class ChannelChoice:
    """The outcome: a channel (or None when nothing may reach the customer), its address,
    when to send, and why. `considered` lists every ranked channel with what happened."""

    channel: Channel | None
    to: str = ""
    send_at: datetime | None = None
    chosen_by: str = ""  # urgency | preference | last_engaged | order | held (all others refused)
    reasons: list[str] = field(default_factory=list)
    considered: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=dict)
    refusal: str = ""  # the top channel's reason when no channel fits

    @property
    def summary(self) -> str:
        return "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return {
            "channel": self.channel.name if self.channel else None,
            "chosen_by": self.chosen_by,
            "reasons": self.reasons,
            "considered": self.considered,
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "timing": self.timing,
        }


def engagements_list(*, customer, now: datetime, days: int = HISTORY_DAYS) -> list[Engagement]:
    """The customer's engagements over the last `days`, newest first: opened or clicked
    deliveries, engagement events and (when nothing else explains it) last_engaged_at."""
    if getattr(customer, "pk", None) is None:
        return []
    deliveries, events = _engagement_rows([customer.pk], now=now, days=days)
    return _engagements(customer, now=now, days=days, deliveries=deliveries.get(customer.pk, []),
                        events=events.get(customer.pk, []))


HISTORY_ROWS = 500  # per customer and kind: the newest, enough for a best hour and the last channel


def _engagement_rows(customer_ids: list[int], *, now: datetime, days: int) -> tuple[dict, dict]:
    """Opened/clicked deliveries (sent at most OPEN_LAG before the start) and engagement events of
    these customers since `days` ago, by customer, newest first (at most HISTORY_ROWS each): one
    query for each of the two kinds."""
    from journeys.engine.batch import ids_q
    from journeys.models import Event

    since = now - timedelta(days=days)
    deliveries: dict[int, list] = {}
    for row in (Delivery.objects.filter(ids_q("customer_id", customer_ids), sent_at__gte=since - OPEN_LAG)
                .filter(Q(opened_at__gte=since) | Q(clicked_at__gte=since))
                .values_list("customer_id", "pk", "channel__kind", "opened_at", "clicked_at").order_by("-id")
                [:HISTORY_ROWS if len(customer_ids) == 1 else None]):
        found = deliveries.setdefault(row[0], [])
        if len(found) < HISTORY_ROWS:
            found.append(row[1:])
    events: dict[int, list] = {}
    for row in (Event.objects.filter(ids_q("customer_id", customer_ids), name__in=list(ENGAGEMENT_EVENTS),
                                     timestamp__gte=since, timestamp__lte=now)
                .values_list("customer_id", "name", "properties", "timestamp").order_by("-timestamp")
                [:HISTORY_ROWS if len(customer_ids) == 1 else None]):
        found = events.setdefault(row[0], [])
        if len(found) < HISTORY_ROWS:
            found.append(row[1:])
    return deliveries, events


def _engagements(customer, *, now: datetime, days: int, deliveries: list, events: list) -> list[Engagement]:
    since = now - timedelta(days=days)
    out: list[Engagement] = []
    for pk, kind, opened, clicked in deliveries:
        at = min(t for t in (opened, clicked) if t is not None)
        if at <= now:
            out.append(Engagement(at=at, kind=kind, source=f"delivery:{pk}"))
    for name, props, at in events:
        kind = ENGAGEMENT_EVENTS[name] or str((props or {}).get("channel_kind") or "")
        if kind in ChannelKind.values:
            out.append(Engagement(at=at, kind=kind, source=f"event:{name}"))
    last = getattr(customer, "last_engaged_at", None)
    if last and since <= last <= now and not any(abs((e.at - last).total_seconds()) < 60 for e in out):
        out.append(Engagement(at=last, kind="", source="profile:last_engaged_at"))
    out.sort(key=lambda e: e.at, reverse=True)
    return out


class EngagementBook:
    """engagements_list for the customers of a batch: their history read with one query per kind
    on first use, for the moment `now` (another moment, or a customer outside, reads alone).
    An engine batch keeps one (`current()`, a read cache: nothing to flush)."""

    KEY = "channels.history"

    def __init__(self, customer_ids, now: datetime) -> None:
        self.customer_ids, self.now = set(customer_ids), now
        self._rows: tuple[dict, dict] | None = None

    @classmethod
    def current(cls) -> EngagementBook | None:
        from journeys.engine.batch import current_batch

        batch = current_batch()
        return batch.extension(cls.KEY, lambda b: cls(b.customer_ids, b.now)) if batch is not None else None

    def flush(self) -> None:
        """Nothing to write."""

    def engagements(self, customer, now: datetime) -> list[Engagement]:
        if now != self.now or getattr(customer, "pk", None) not in self.customer_ids:
            return engagements_list(customer=customer, now=now)
        if self._rows is None:
            self._rows = _engagement_rows(list(self.customer_ids), now=now, days=HISTORY_DAYS)
        deliveries, events = self._rows
        return _engagements(customer, now=now, days=HISTORY_DAYS, deliveries=deliveries.get(customer.pk, []),
                            events=events.get(customer.pk, []))


class PressureCache:
    """Frequency caps and recent contacts for the choices of a batch: the caps read once, the
    contacts of all its customers with one query on first use, looking back as far as the
    longest cap or gap asked so far (a longer gap reads them again). Checks at `now` or later
    are answered from it; another moment, or a customer outside, reads alone. Caps and gaps
    count messages sent, never the batch's own unwritten ones (as one choice at a time does).
    An engine batch keeps one (`current()`, a read cache: nothing to flush)."""

    KEY = "channels.pressure"

    def __init__(self, customer_ids, now: datetime) -> None:
        self.customer_ids, self.now = set(customer_ids), now
        self.caps: list | None = None
        self.book: policy.PressureBook | None = None
        self.window_s = -1

    @classmethod
    def current(cls) -> PressureCache | None:
        from journeys.engine.batch import current_batch

        batch = current_batch()
        return batch.extension(cls.KEY, lambda b: cls(b.customer_ids, b.now)) if batch is not None else None

    def flush(self) -> None:
        """Nothing to write."""

    def hold(self, probe: Delivery, at: datetime) -> policy.Hold | None:
        if at < self.now or probe.customer_id not in self.customer_ids:
            return policy.frequency_cap_hold(delivery=probe, now=at) or policy.recent_contact_hold(delivery=probe, now=at)
        if self.caps is None:
            self.caps = policy.enabled_caps()
        window = max([cap.window_s for cap in self.caps] + [policy.gap_s(probe)])
        if window > self.window_s:
            self.book = policy.PressureBook(deliveries=(), now=self.now, caps=self.caps,
                                            customer_ids=self.customer_ids, window_s=window)
            self.window_s = window
        return self.book.cap_hold(probe, at) or self.book.gap_hold(probe, at)


def best_hour(*, engagements: list[Engagement], zone) -> tuple[int, int]:
    """The local hour the customer engages in most (ties: the most recent such hour), and its count."""
    hours = [e.at.astimezone(zone).hour for e in engagements]  # newest first
    counts = Counter(hours)
    top = max(counts.values())
    hour = next(h for h in hours if counts[h] == top)
    return hour, top


def send_time_choose(*, customer, engagements: list[Engagement], urgency: str, mode: str, now: datetime,
                     min_engagements: int = MIN_ENGAGEMENTS) -> tuple[datetime | None, dict]:
    """When to send: None = now. Urgent and triage messages and `mode="now"` never wait;
    otherwise, with at least `min_engagements`, wait for the customer's best local hour."""
    if urgency != Urgency.NORMAL:
        return None, {"decision": "now", "why": f"{urgency} message: sent now"}
    if mode == "now":
        return None, {"decision": "now", "why": "the step sends now"}
    if len(engagements) < min_engagements:
        return None, {"decision": "now", "why": f"sent now: {len(engagements)} engagements in {HISTORY_DAYS} days "
                                                 f"(a best hour needs {min_engagements})"}
    zone = customer_zone(customer)
    hour, count = best_hour(engagements=engagements, zone=zone)
    local = now.astimezone(zone)
    basis = f"{count} of {len(engagements)} engagements at {hour:02d}:00 {zone.key}"
    if local.hour == hour:
        return None, {"decision": "now", "hour": hour, "why": f"sent now: their best hour ({basis})"}
    at = add_local(now, zone, at=f"{hour:02d}:00").astimezone(now.tzinfo)
    return at, {"decision": "deferred", "hour": hour, "send_at": at.isoformat(),
                "why": f"deferred to {hour:02d}:00 {zone.key}, their most frequent engagement hour ({basis})"}


def _preferred(customer, channels: list[Channel]) -> Channel | None:
    wanted = str(((getattr(customer, "traits", None) or {}).get("preferred_channel")) or "").strip().lower()
    if not wanted:
        return None
    return (next((c for c in channels if c.name.lower() == wanted), None)
            or next((c for c in channels if c.kind == wanted), None))


def channels_rank(*, customer, channels: list[Channel], urgency: str,
                  engagements: list[Engagement]) -> list[tuple[Channel, str, str]]:
    """Ranked (channel, ranked_by, why) best first: urgency tier, stated preference,
    the channel kind last engaged on, how often they engaged there, the step's order."""
    first_kinds = URGENCY_KINDS.get(Urgency(urgency), ())
    preferred = _preferred(customer, channels)
    last_kind = next((e.kind for e in engagements if e.kind), "")
    frequency = Counter(e.kind for e in engagements if e.kind)

    def key(item: tuple[int, Channel]):
        index, channel = item
        tier = first_kinds.index(channel.kind) if channel.kind in first_kinds else len(first_kinds)
        is_preferred = preferred is not None and channel.pk == preferred.pk
        # Within the urgent kinds, the stated preference decides between push and SMS.
        return (tier if not (is_preferred and tier < len(first_kinds)) else -1,
                not is_preferred, channel.kind != last_kind, -frequency[channel.kind], index)

    ranked = []
    for _index, channel in sorted(enumerate(channels), key=key):
        if channel.kind in first_kinds and not (preferred and channel.pk == preferred.pk):
            by, why = "urgency", f"{urgency}: {'/'.join(first_kinds)} first"
        elif preferred is not None and channel.pk == preferred.pk:
            by, why = "preference", f"stated preference (preferred_channel={customer.traits.get('preferred_channel')})"
            if channel.kind in first_kinds:
                why += f", and {urgency} messages go to {'/'.join(first_kinds)} first"
        elif last_kind and channel.kind == last_kind:
            by, why = "last_engaged", (f"last engaged on {last_kind} "
                                       f"({next(e for e in engagements if e.kind == last_kind).at:%Y-%m-%d %H:%M} UTC, "
                                       f"{frequency[last_kind]} engagements)")
        else:
            by, why = "order", "next in the step's channel order"
        ranked.append((channel, by, why))
    return ranked


def _breaker_open(channel: Channel, now: datetime, breaker: ChannelBreaker | None | bool = False) -> bool:
    """Read-only look at the breaker (the worker's breaker_allow may start a probe); `breaker`:
    the channel's row (or None) when the caller has read it already."""
    if breaker is False:
        breaker = ChannelBreaker.objects.filter(channel=channel).first()
    if breaker is None or breaker.state == BreakerState.CLOSED:
        return False
    if breaker.state == BreakerState.OPEN:
        return now < (breaker.opened_at or now) + timedelta(seconds=channel.breaker_cooldown_s)
    return False


def channel_hold(*, channel: Channel, customer, profile: dict, topic: Topic | None, at: datetime,
                 policy_options: dict | None = None, refuse=None,
                 breakers: dict | None = None, pressure: PressureCache | None = None) -> tuple[str, str, str, bool]:
    """Would this channel send to this customer at `at`? ("", address, "", False) when yes,
    else (reason, address, detail, waits): the same checks as message_send and the worker;
    `waits` when the hold only delays the message (quiet hours, a deferring cap, a pause).
    A batch passes `refuse(channel_kind, topic)` (its consents), `breakers` (channel id ->
    breaker row) and `pressure` (caps and recent contacts), read once for all its customers."""
    address = channel_address(channel, profile)
    if not channel.enabled:
        return Reason.NO_ADDRESS, address, f"channel {channel.name} is disabled", False
    if not address:
        return Reason.NO_ADDRESS, address, f"no {channel.kind} address on the profile", False
    real = getattr(customer, "pk", None) is not None
    if real:
        refusal = refuse(channel.kind, topic, address) if refuse is not None else \
            consent_refusal(customer=customer, channel_kind=channel.kind, topic=topic, address=address)
        if refusal:
            return refusal, address, Reason(refusal).label, False
    if channel.paused:
        return Reason.PAUSED, address, f"channel {channel.name} is paused", True
    if _breaker_open(channel, at, breakers.get(channel.pk) if breakers is not None else False):
        return Reason.BREAKER_OPEN, address, f"breaker of {channel.name} is open", True
    if topic is not None and topic.transactional:
        return "", address, "", False
    hold = policy.quiet_hours_hold(channel=channel, customer=customer, now=at)
    if hold is None and real:
        probe = Delivery(customer=customer, channel=channel, topic=topic, policy=policy_options or {})
        hold = pressure.hold(probe, at) if pressure is not None else \
            policy.frequency_cap_hold(delivery=probe, now=at) or policy.recent_contact_hold(delivery=probe, now=at)
    if hold is not None:
        until = f" (until {hold.until:%Y-%m-%d %H:%M} UTC)" if hold.until else ""
        return hold.reason, address, hold.detail + until, hold.until is not None
    return "", address, "", False


def channel_choose(*, customer, profile: dict, channels: list[Channel], urgency: str = Urgency.NORMAL,
                   topic: Topic | None = None, send_time: str = "best_hour", now: datetime,
                   min_engagements: int = MIN_ENGAGEMENTS, policy_options: dict | None = None, refuse=None,
                   breakers: dict | None = None, history: EngagementBook | None = None,
                   pressure: PressureCache | None = None) -> ChannelChoice:
    """Pick the channel and the send time for one message, and say why.

    When every channel would be refused or held, the best-ranked channel that only has
    to *wait* (quiet hours, a deferring cap, a pause) is used, so the message goes out
    when it may; when all refuse outright, the choice is None with the top reason.
    """
    engagements = history.engagements(customer, now) if history is not None else \
        engagements_list(customer=customer, now=now)
    send_at, timing = send_time_choose(customer=customer, engagements=engagements, urgency=urgency,
                                       mode=send_time, now=now, min_engagements=min_engagements)
    at = send_at or now
    choice = ChannelChoice(channel=None, send_at=send_at, timing=timing)
    waiting: tuple[Channel, str, str, str] | None = None
    for channel, by, why in channels_rank(customer=customer, channels=channels, urgency=urgency,
                                          engagements=engagements):
        reason, address, detail, waits = channel_hold(channel=channel, customer=customer, profile=profile, topic=topic,
                                               at=at, policy_options=policy_options, refuse=refuse,
                                               breakers=breakers, pressure=pressure)
        row = {"channel": channel.name, "kind": channel.kind, "ranked_by": by, "why": why}
        if reason:
            row.update(skipped=str(reason), detail=detail)
            choice.considered.append(row)
            choice.refusal = choice.refusal or str(reason)
            if waiting is None and waits:
                waiting = (channel, address, by, f"{why}; waits: {detail}")
            continue
        row["chosen"] = True
        choice.considered.append(row)
        if choice.channel is None:
            choice.channel, choice.to, choice.chosen_by = channel, address, by
            choice.reasons.append(f"{channel.name}: {why}")
        break
    skipped = [f"{r['channel']} skipped ({r['skipped']}: {r['detail']})" for r in choice.considered if "skipped" in r]
    if choice.channel is None and waiting is not None:
        channel, address, by, why = waiting
        choice.channel, choice.to, choice.chosen_by = channel, address, "held"
        choice.reasons.append(f"{channel.name}: every channel is held; {why}")
    if choice.channel is None:
        choice.reasons.append("no channel may reach the customer")
    # Most important first: the choice, the timing, then what was skipped (the summary is cut at 255).
    choice.reasons.append(timing["why"])
    choice.reasons.extend(skipped)
    return choice
