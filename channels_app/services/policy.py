"""Timing and pressure: quiet hours in the customer's timezone, frequency caps, a gap
after the last contact on another channel, the channel's send rate. Each check
returns None (go) or a Hold: suppress, or defer until a moment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.db.models import Max, Min, Q

from channels_app.choices import SENT_STATUSES, ChannelKind, PressureAction, Reason
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


def quiet_hours_hold(*, channel: Channel, customer, now: datetime) -> Hold | None:
    """Inside the channel's quiet hours on the customer's clock: wait for the window to end."""
    if channel.quiet_start is None or channel.quiet_end is None:
        return None
    zone = customer_zone(customer)
    local = now.astimezone(zone)
    if not _in_window(local.timetz().replace(tzinfo=None), channel.quiet_start, channel.quiet_end):
        return None
    end = datetime.combine(local.date(), channel.quiet_end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), channel.quiet_end, tzinfo=zone)
    return Hold(Reason.QUIET_HOURS, until=end.astimezone(now.tzinfo),
                detail=f"quiet hours {channel.quiet_start:%H:%M}-{channel.quiet_end:%H:%M} {zone.key}")


def _sent(customer_id: int):
    """Messages that reached the customer (webhook calls are integrations, not contacts)."""
    return (Delivery.objects.filter(customer_id=customer_id, status__in=SENT_STATUSES, sent_at__isnull=False)
            .exclude(channel__kind=ChannelKind.WEBHOOK))


def frequency_cap_hold(*, delivery: Delivery, now: datetime) -> Hold | None:
    """The first cap this send would break (global, per channel, per topic)."""
    caps = FrequencyCap.objects.filter(enabled=True).filter(
        Q(channel__isnull=True) | Q(channel_id=delivery.channel_id)
    ).filter(Q(topic__isnull=True) | Q(topic_id=delivery.topic_id))
    for cap in caps.order_by("window_s"):
        since = now - timedelta(seconds=cap.window_s)
        recent = _sent(delivery.customer_id).filter(sent_at__gt=since).exclude(pk=delivery.pk)
        if cap.channel_id:
            recent = recent.filter(channel_id=cap.channel_id)
        if cap.topic_id:
            recent = recent.filter(topic_id=cap.topic_id)
        count = recent.count()
        if count >= cap.limit:
            detail = f"cap {cap.name}: {count}/{cap.limit} in {cap.window_s}s"
            if cap.action == PressureAction.SUPPRESS:
                return Hold(Reason.FREQUENCY_CAP, detail=detail)
            oldest = recent.order_by("-sent_at").values_list("sent_at", flat=True)[cap.limit - 1]
            return Hold(Reason.FREQUENCY_CAP, until=oldest + timedelta(seconds=cap.window_s) + timedelta(seconds=1),
                        detail=detail)
    return None


def recent_contact_hold(*, delivery: Delivery, now: datetime) -> Hold | None:
    """Step option `min_gap_other_channel_s`: no send within that long after the customer's
    last message on another channel kind or their last engagement (open, click...)."""
    gap = int((delivery.policy or {}).get("min_gap_other_channel_s") or 0)
    if not gap:
        return None
    last_other = (_sent(delivery.customer_id).exclude(channel__kind=delivery.channel.kind)
                  .aggregate(m=Max("sent_at"))["m"])
    engaged = getattr(delivery.customer, "last_engaged_at", None)
    last = max([m for m in (last_other, engaged) if m is not None], default=None)
    if last is None or now - last >= timedelta(seconds=gap):
        return None
    detail = f"last contact {last.isoformat()} is within {gap}s"
    if (delivery.policy or {}).get("recent_contact_action", PressureAction.DEFER) == PressureAction.SUPPRESS:
        return Hold(Reason.RECENT_CONTACT, detail=detail)
    return Hold(Reason.RECENT_CONTACT, until=last + timedelta(seconds=gap), detail=detail)


def rate_limit_hold(*, channel: Channel, now: datetime) -> Hold | None:
    """The channel's sends per minute, counted in the database (shared by all workers)."""
    if not channel.rate_limit_per_minute:
        return None
    since = now - timedelta(seconds=60)
    sent = Delivery.objects.filter(channel=channel, sent_at__gt=since)
    if sent.count() < channel.rate_limit_per_minute:
        return None
    first = sent.aggregate(m=Min("sent_at"))["m"]
    return Hold(Reason.RATE_LIMIT, until=first + timedelta(seconds=60, milliseconds=1),
                detail=f"{channel.rate_limit_per_minute}/min")
