"""Reads of the channels app for ops: what holds a waiting message *now*, and how the messages of
a workflow stand (queued, held, sending, sent, failed, bounced, the send rate and an ETA).

A deferred delivery keeps the reason it was held with (`reason`, `error`, `next_attempt_at`)
until a dispatcher claims it again, which during a large send can be minutes after the hold
ended. So the reason a delivery shows is worked out from what holds it at the moment of
reading: a pause (the channel's, safe mode, the workflow's) and an open breaker from the live
switches, a timed hold (quiet hours, caps, rate limit, send time, a retry's backoff) from
`next_attempt_at`. A hold that no longer applies reads "due (was held: ...)".

Every count here starts from an index: waiting messages from the status index
(`delivery_due_idx`), recent sends from `(channel, sent_at)`, recent failures from the failed
rows by when they failed (`delivery_failed_idx`) and the bounced ones by status (`delivery_due_idx`:
few, an address is suppressed after its first bounce); a message's workflow is its run's
(`run_id` -> the run's primary key).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from channels_app.choices import SENT_STATUSES, BreakerState, DeliveryStatus, Reason
from channels_app.models import Channel, ChannelBreaker, Delivery, MessageTemplate
from channels_app.services.claim import sending_lease, sending_orphaned_after
from journeys.choices import WorkflowStatus
from journeys.models import JourneyRun, Workflow
from journeys.selectors import customers_named
from journeys.services.api_jobs import idempotency_key_stored
from journeys.services.customers_api import CustomerNotFound, customer_get

PENDING = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
# Holds that end at `next_attempt_at` by themselves.
TIMED = (Reason.QUIET_HOURS, Reason.FREQUENCY_CAP, Reason.RECENT_CONTACT, Reason.RATE_LIMIT, Reason.SEND_TIME,
         Reason.RETRY)
RATE_MINUTES = 5  # the send rate (and the ETA) is taken over the last few minutes
FAILED_WINDOW = timedelta(hours=1)  # a workflow's failures are shown by reason over the last hour

# What a waiting message is waiting for now (the `hold` annotation). "due": held before, no longer.
HOLD_LABELS = {
    "queued": "Queued",
    "sending": "Sending",
    "lease": "Waiting for a lost worker's lease",
    "channel_paused": "Held: channel paused",
    "safe_mode": "Held: safe mode (every message held)",
    "workflow_paused": "Held: workflow paused",
    "breaker_open": "Held: circuit breaker open",
    Reason.QUIET_HOURS.value: "Held: quiet hours",
    Reason.FREQUENCY_CAP.value: "Held: frequency cap",
    Reason.RECENT_CONTACT.value: "Held: contacted recently on another channel",
    Reason.RATE_LIMIT.value: "Held: channel send rate limit",
    Reason.SEND_TIME.value: "Held: waiting for the customer's usual hour",
    Reason.RETRY.value: "Retrying after a transient error",
    "due": "Due, waiting its turn (no longer held)",
}


@dataclass(frozen=True)
class Switches:
    """The holds that are switched on and off (a handful of rows): read once per page."""

    paused_channels: frozenset[int]
    open_breakers: frozenset[int]
    safe_mode: bool
    paused_workflows: frozenset[int]


def switches_now() -> Switches:
    """Paused channels (and disabled ones whose fallback is paused: their messages wait on that
    pause), channels whose breaker is not closed, journeys' safe mode and the paused workflows."""
    from journeys.services.governance import safe_mode_active

    channels = {pk: (paused, enabled, fallback) for pk, paused, enabled, fallback
                in Channel.objects.values_list("pk", "paused", "enabled", "fallback_id")}
    paused = {pk for pk, (is_paused, enabled, fallback) in channels.items()
              if is_paused or (not enabled and fallback in channels and channels[fallback][0])}
    breakers = ChannelBreaker.objects.exclude(state=BreakerState.CLOSED).values_list("channel_id", flat=True)
    workflows = Workflow.objects.filter(status=WorkflowStatus.PAUSED).values_list("pk", flat=True)
    return Switches(frozenset(paused), frozenset(breakers), safe_mode_active(), frozenset(workflows))


def _run_workflow(run: str = "run_id") -> Subquery:
    """A delivery's workflow: its run's (a primary-key probe; deliveries hold the run's id)."""
    return Subquery(JourneyRun.objects.filter(pk=OuterRef(run)).order_by().values("workflow_id")[:1])


def hold_expression(*, now: datetime, switches: Switches | None = None) -> Case:
    """The `hold` of a delivery as SQL (a key of HOLD_LABELS, '' for a message that is done), in
    the order the dispatcher's claim checks them: channel pause, safe mode, workflow pause, breaker.
    Reads the `run_workflow` annotation (deliveries_with_hold adds it)."""
    switches = switches or switches_now()
    paused = Q(status=DeliveryStatus.DEFERRED, reason=Reason.PAUSED)
    whens = [
        When(status=DeliveryStatus.QUEUED, then=Value("queued")),
        # a claim older than any live task's: its worker died, the rows wait for the lease to end
        When(status=DeliveryStatus.SENDING, claimed_at__lt=now - sending_orphaned_after(), then=Value("lease")),
        When(status=DeliveryStatus.SENDING, then=Value("sending")),
        When(~Q(status=DeliveryStatus.DEFERRED), then=Value("")),
        When(paused & Q(channel_id__in=switches.paused_channels), then=Value("channel_paused")),
    ]
    if switches.safe_mode:
        whens.append(When(paused, then=Value("safe_mode")))
    whens += [
        When(paused & Q(run_workflow__in=switches.paused_workflows), then=Value("workflow_paused")),
        When(reason=Reason.BREAKER_OPEN, channel_id__in=switches.open_breakers, then=Value("breaker_open")),
        When(reason__in=TIMED, next_attempt_at__gt=now, then=F("reason")),
    ]
    return Case(*whens, default=Value("due"), output_field=CharField())


def deliveries_with_hold(queryset: QuerySet, *, now: datetime | None = None,
                         switches: Switches | None = None) -> QuerySet:
    """The deliveries, each annotated with `run_workflow` (its run's workflow id) and `hold`: what
    it waits for at this moment (a queryset annotated already is returned as it is)."""
    if "hold" in queryset.query.annotations:
        return queryset
    return (queryset.annotate(run_workflow=_run_workflow())
            .annotate(hold=hold_expression(now=now or timezone.now(), switches=switches)))


def deliveries_held_by(queryset: QuerySet, *, hold: str, now: datetime | None = None) -> QuerySet:
    """The deliveries waiting for `hold` now (a HOLD_LABELS key), from the status index."""
    if hold not in HOLD_LABELS:
        raise ValueError(f"unknown hold {hold!r}")
    status = {"queued": DeliveryStatus.QUEUED, "sending": DeliveryStatus.SENDING,
              "lease": DeliveryStatus.SENDING}.get(hold, DeliveryStatus.DEFERRED)
    return deliveries_with_hold(queryset.filter(status=status), now=now).filter(hold=hold)


def _reason_label(reason: str) -> str:
    return Reason(reason).label if reason in Reason.values else (reason or "failed")


def _at(moment: datetime | None) -> str:
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S}" if moment else "?"


def delivery_hold_text(delivery: Delivery, now: datetime | None = None) -> str:
    """What the deliveries list says about a message: what holds it now (annotated `hold`); for
    one whose hold has ended, that it was held and since when it is due; for one that is done,
    why it was not sent (its reason)."""
    hold = getattr(delivery, "hold", None)
    if not hold:
        return delivery.get_reason_display() if delivery.reason else ""
    if hold in ("queued", "sending"):
        return ""
    when = delivery.next_attempt_at
    if hold == "due":
        was = delivery.error or delivery.get_reason_display() or "held"
        if when and when > (now or timezone.now()):
            return f"No longer held (was: {was}); looked at again {_at(when)}"
        return f"Due{f' since {_at(when)}' if when else ''}, waiting its turn (was held: {was})"
    text = HOLD_LABELS[hold]
    if hold == "lease" and delivery.claimed_at:
        return f"{text} (until {_at(delivery.claimed_at + sending_lease())}, then sent or recorded)"
    if (hold in TIMED or hold == "breaker_open") and when:
        text += f" until {_at(when)}"
    if hold in ("channel_paused", "workflow_paused", "safe_mode") and (delivery.notes or {}).get("held_since"):
        text += f", since {_at(datetime.fromisoformat(delivery.notes['held_since']))}"
    return text


# --------------------------------------------------------------------------- a workflow's messages


@contextmanager
def _without_jit() -> Iterator[None]:
    """These reads probe a run per message: with a few thousand messages PostgreSQL's estimate
    passes jit_above_cost, and compiling took longer than the statements themselves (0.3-0.7 s
    of 1-2 s with 36,000 waiting messages), so it is off for them (as in engine/entry_gate.py)."""
    with transaction.atomic():
        if connection.vendor != "postgresql":
            yield
            return
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
        yield
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit TO DEFAULT")


def _not_delivered_since(queryset: QuerySet, moment: datetime) -> list[dict[str, Any]]:
    """The rows of `queryset` (values().annotate() of an aggregate) over the messages that failed for
    good or bounced since `moment` (by when they did: `updated_at`), each with its `status`. One
    query per status, so that each is an index range whatever the planner makes of an OR: the
    failed rows from delivery_failed_idx (a render failure has no attempt), the bounced ones from
    delivery_due_idx (status first)."""
    rows = []
    for status in (DeliveryStatus.FAILED, DeliveryStatus.BOUNCED):
        rows += [{**row, "status": status} for row in queryset.filter(status=status, updated_at__gte=moment)]
    return rows


def _not_delivered_label(status: str, reason: str) -> str:
    if status == DeliveryStatus.BOUNCED:
        return "bounced: the recipient's server refused the address"
    return _reason_label(reason)


def workflow_messages(*, workflow_ids: list[int], now: datetime | None = None) -> dict[int, dict[str, Any]]:
    """Per workflow: its messages waiting now by what holds them (queued, held, sending), those
    sent, failed and bounced over the last RATE_MINUTES, the send rate per minute and an ETA
    (seconds) for the queued and sending ones at that rate; and those not delivered over the last
    hour, failed (a template that fails to render fails every message; a provider's permanent
    error; the last retry) and bounced (the recipient's server refused the address) apart, by
    reason in `failed_by`. Costs what is waiting plus what was sent or not delivered lately (four
    indexed queries), not the workflow's history."""
    now = now or timezone.now()
    since = now - timedelta(minutes=RATE_MINUTES)
    wanted = set(workflow_ids)
    out = {pk: {"queued": 0, "held": 0, "sending": 0, "held_by": [], "sent_recent": 0, "failed_recent": 0,
                "failed_hour": 0, "bounced_recent": 0, "bounced_hour": 0, "failed_by": [], "rate_per_min": 0.0,
                "eta_s": None, "window_min": RATE_MINUTES}
           for pk in wanted}
    if not wanted:
        return out
    channels = list(Channel.objects.values_list("pk", flat=True))
    with _without_jit():
        waiting = list(deliveries_with_hold(Delivery.objects.filter(status__in=PENDING, run_id__isnull=False), now=now)
                       .values("run_workflow", "hold")
                       .annotate(n=Count("id"), until=Max("next_attempt_at"), claimed=Max("claimed_at"))
                       .order_by())
        sent = list(Delivery.objects.filter(channel_id__in=channels, sent_at__gte=since, run_id__isnull=False)
                    .exclude(status=DeliveryStatus.BOUNCED)  # a bounce reported after sending is counted as bounced
                    .annotate(workflow_id=_run_workflow()).values("workflow_id").annotate(n=Count("id")).order_by())
        failed = _not_delivered_since(Delivery.objects.filter(run_id__isnull=False)
                                      .annotate(workflow_id=_run_workflow()).values("workflow_id", "reason")
                                      .annotate(n=Count("id"), recent=Count("id", filter=Q(updated_at__gte=since)))
                                      .order_by(), now - FAILED_WINDOW)
    for row in waiting:
        if row["run_workflow"] not in wanted:
            continue
        entry, hold = out[row["run_workflow"]], row["hold"]
        if hold in ("queued", "due"):
            entry["queued"] += row["n"]
        elif hold == "sending":
            entry["sending"] += row["n"]
        else:
            until = row["until"] if hold in TIMED or hold == "breaker_open" else None
            if hold == "lease":  # the last of these claims' leases to end
                until = row["claimed"] + sending_lease() if row["claimed"] else None
            entry["held"] += row["n"]
            # a hold that ends on another day says which (the page shows the date then, not only the time)
            today = until is not None and timezone.localdate(until) == timezone.localdate(now)
            entry["held_by"].append({"key": hold, "label": HOLD_LABELS[hold], "n": row["n"], "until": until,
                                     "until_today": today})
    for row in sent:
        if row["workflow_id"] in wanted:
            out[row["workflow_id"]]["sent_recent"] = row["n"]
    for row in failed:
        if row["workflow_id"] in wanted:
            entry, status = out[row["workflow_id"]], row["status"]
            entry[f"{status}_recent"] += row["recent"]
            entry[f"{status}_hour"] += row["n"]
            entry["failed_by"].append({"status": status, "reason": row["reason"], "n": row["n"],
                                       "label": _not_delivered_label(status, row["reason"])})
    for entry in out.values():
        entry["held_by"].sort(key=lambda h: -h["n"])
        entry["failed_by"].sort(key=lambda f: -f["n"])
        entry["rate_per_min"] = round(entry["sent_recent"] / RATE_MINUTES, 1)
        todo = entry["queued"] + entry["sending"]
        if todo and entry["sent_recent"]:
            entry["eta_s"] = int(todo * RATE_MINUTES * 60 / entry["sent_recent"])
        elif not todo:
            entry["eta_s"] = 0
    return out


def version_message_totals(*, version_id: int, since: datetime) -> dict[str, int]:
    """The messages of a version's runs started since `since` (the graph page's window) by outcome
    (sent, suppressed, failed, bounced, waiting) and the total: "x of y sent" (a bounced one was
    not sent: the recipient's server refused it). Reads the runs as a range of
    run_version_created_idx and their messages through the run_id index (ids read first: as a
    subquery the planner may hash the whole delivery table)."""
    runs = list(JourneyRun.objects.filter(version_id=version_id, created_at__gte=since).values_list("pk", flat=True))
    by_status = dict(Delivery.objects.filter(run_id__in=runs)
                     .values_list("status").annotate(n=Count("id")).values_list("status", "n").order_by())
    return {"total": sum(by_status.values()), "sent": sum(by_status.get(s, 0) for s in SENT_STATUSES),
            "suppressed": by_status.get(DeliveryStatus.SUPPRESSED, 0),
            "failed": by_status.get(DeliveryStatus.FAILED, 0), "bounced": by_status.get(DeliveryStatus.BOUNCED, 0),
            "waiting": sum(by_status.get(s, 0) for s in PENDING)}


# --------------------------------------------------------------------------- the deliveries list


REQUEUE_STATUSES = (DeliveryStatus.FAILED, DeliveryStatus.DEFERRED)


def deliveries_requeue_preview(*, ids: list[int]) -> dict[str, Any]:
    """What "send again" would do with these deliveries, for its confirmation page: per channel
    and status, how many would be queued (failed or deferred ones) and how many of those never
    rendered (they are rendered again first, or refused); how many are left alone, and of those how
    many are held until their send time (`deliveries_requeue` keeps that time). One query."""
    held = Q(status=DeliveryStatus.DEFERRED, reason=Reason.SEND_TIME, next_attempt_at__gt=timezone.now())
    rows = (Delivery.objects.filter(pk__in=ids).order_by().values("channel__name", "status")
            .annotate(n=Count("id", filter=~held), held=Count("id", filter=held),
                      blank=Count("id", filter=Q(subject="", body="", html_body="") & ~held)))
    groups = [{"channel": r["channel__name"], "status": r["status"], "n": r["n"], "never_rendered": r["blank"]}
              for r in rows if r["status"] in REQUEUE_STATUSES and r["n"]]
    groups.sort(key=lambda g: (g["channel"], g["status"]))
    to_send = sum(g["n"] for g in groups)
    return {"selected": len(ids), "to_send": to_send, "never_rendered": sum(g["never_rendered"] for g in groups),
            "left_alone": len(ids) - to_send, "send_time": sum(r["held"] for r in rows), "groups": groups}




WORKFLOW_CHOICES_MAX = 50


def delivery_workflow_choices(*, user: Any, selected: str | None = None) -> list[tuple[str, str]]:
    """The workflows the deliveries list offers to filter by, read from the workflows table (never
    from the deliveries): those with a live version the user may see, live and paused, the most
    recently changed first (at most WORKFLOW_CHOICES_MAX), plus the one selected (any workflow id
    is accepted in the URL: the dashboard and the graph page link to it)."""
    from journeys.selectors import VIEW, workflows_for_user

    visible = workflows_for_user(user, VIEW)
    rows = list(visible.filter(live_version__isnull=False, status__in=(WorkflowStatus.ACTIVE, WorkflowStatus.PAUSED))
                .order_by("-updated_at").values_list("pk", "name", "status")[:WORKFLOW_CHOICES_MAX])
    if selected and selected.isdigit() and all(str(pk) != selected for pk, _, _ in rows):
        rows += list(visible.filter(pk=int(selected)).values_list("pk", "name", "status"))
    return [(str(pk), f"{name} (paused)" if status == WorkflowStatus.PAUSED else name)
            for pk, name, status in sorted(rows, key=lambda r: r[1].lower())]


def deliveries_of_workflow(queryset: QuerySet, *, workflow_id: int) -> QuerySet:
    """The deliveries of a workflow's runs (run_id -> the runs of the workflow, by its index)."""
    return queryset.filter(run_id__in=JourneyRun.objects.filter(workflow_id=workflow_id).values("pk"))


# --------------------------------------------------------------------------- management API reads


def channels_list() -> QuerySet[Channel]:
    """Channels with their breaker's state (closed when it never opened); one left join."""
    return Channel.objects.annotate(
        breaker_state=Coalesce(F("breaker__state"), Value(BreakerState.CLOSED)),
        breaker_opened_at=F("breaker__opened_at"),
    )


def templates_list() -> QuerySet[MessageTemplate]:
    """Templates with their topic (its slug is shown); one join."""
    return MessageTemplate.objects.select_related("topic")


# The deliveries list offers only filters an index serves: customer_id (delivery_customer_sent_idx),
# workflow_id (the runs' (workflow, customer, trigger_key) index, then the deliveries' run_id index)
# and status (delivery_due_idx). A time range alone would read every delivery on a large table
# (neither created_at nor sent_at leads an index), so `since` only narrows customer_id or workflow_id.


class DeliveryFilterRefused(ValueError):
    """A filter combination no index serves; `field` names the filter to drop or complete."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def deliveries_lookup(*, customer_id: int | None = None, workflow_id: int | None = None, status: str = "",
                      since: datetime | None = None) -> QuerySet[Delivery]:
    """Deliveries matching every filter given (all when none is), each filter through an index
    (see above); `since` (created at or after) only with customer_id or workflow_id.
    A merged-away customer's id reads its survivor's deliveries (merges move them there)."""
    if since is not None and customer_id is None and workflow_id is None:
        raise DeliveryFilterRefused("since", "give customer_id or workflow_id with since (no index serves a time "
                                             "range over every delivery)")
    queryset = Delivery.objects.select_related("channel", "template", "topic").annotate(workflow_id=_run_workflow())
    if customer_id is not None:
        try:
            customer_id = customer_get(pk=customer_id).pk
        except CustomerNotFound:
            return queryset.none()
        queryset = queryset.filter(customer_id=customer_id)
    if workflow_id is not None:
        queryset = deliveries_of_workflow(queryset, workflow_id=workflow_id)
    if status:
        queryset = queryset.filter(status=status)
    if since is not None:
        queryset = queryset.filter(created_at__gte=since)
    return queryset


# --------------------------------------------------------------------------- /metrics


HELD_REASONS = (Reason.PAUSED, Reason.BREAKER_OPEN)


def channel_metrics(*, now: datetime) -> list:
    """The channels' part of /metrics (journeys.console.metrics): per channel, the messages waiting
    by state (queued, sending, held by a pause or an open breaker, deferred for a time: quiet hours,
    caps, retries...), those that failed in the last hour, the breaker's state and whether it is
    paused. From delivery_due_idx (what waits) and delivery_failed_idx (what failed lately). The
    waiting messages are counted up to COUNT_CAP per channel and state: a scrape reads at most that
    many rows each, however long the backlog."""
    from journeys.console.metrics import COUNT_CAP, Family, _capped_count

    names = dict(Channel.objects.values_list("pk", "name"))
    waiting = Family("journeys_deliveries_waiting", "Messages not sent yet, per channel and state: queued, sending, "
                                                    "held (a pause or an open breaker), deferred (for a time: quiet "
                                                    "hours, caps, retries; the dashboard shows these as held too); "
                                                    f"counted up to {COUNT_CAP}.")
    deferred = Delivery.objects.filter(status=DeliveryStatus.DEFERRED)
    states = {"queued": Delivery.objects.filter(status=DeliveryStatus.QUEUED),
              "sending": Delivery.objects.filter(status=DeliveryStatus.SENDING),
              "held": deferred.filter(reason__in=HELD_REASONS), "deferred": deferred.exclude(reason__in=HELD_REASONS)}
    for pk, name in sorted(names.items(), key=lambda item: item[1]):
        for state, queryset in states.items():
            waiting.add(_capped_count(queryset.filter(channel_id=pk)), channel=name, state=state)
    failed = Family("journeys_deliveries_failed_last_hour",
                    "Messages that failed for good in the last hour (never rendered, a provider's permanent error, "
                    "or the last retry); bounced ones are in journeys_deliveries_bounced_last_hour.")
    bounced = Family("journeys_deliveries_bounced_last_hour",
                     "Messages that bounced in the last hour: the recipient's server refused the address (not sent).")
    counts = {(row["channel_id"], row["status"]): row["n"]
              for row in _not_delivered_since(Delivery.objects.values("channel_id").annotate(n=Count("id")).order_by(),
                                              now - FAILED_WINDOW)}
    breaker = Family("journeys_channel_breaker_state", "1 for the state a channel's circuit breaker is in.")
    paused = Family("journeys_channel_paused", "1 while a channel is paused (its messages are held).")
    for channel in channels_list().order_by("name"):
        failed.add(counts.get((channel.pk, DeliveryStatus.FAILED), 0), channel=channel.name)
        bounced.add(counts.get((channel.pk, DeliveryStatus.BOUNCED), 0), channel=channel.name)
        for state in BreakerState.values:
            breaker.add(int(channel.breaker_state == state), channel=channel.name, state=state)
        paused.add(int(channel.paused), channel=channel.name)
    return [waiting, failed, bounced, breaker, paused]


def delivery_channel(*, delivery_id: int) -> Channel | None:
    """The channel a delivery is on now (its provider and settings: how its status callbacks are
    checked), with one query; None when there is no such delivery."""
    return (Channel.objects.filter(pk=Subquery(Delivery.objects.filter(pk=delivery_id).values("channel_id")[:1]))
            .only("id", "provider", "settings").first())


def deliveries_searched(term: str) -> Q:
    """The admin search over messages, exact and through indexes: that customer's messages (resolved
    first, then read from delivery_customer_sent_idx), the message of that idempotency key (an API
    message's is stored as its digest), or of that provider message id (delivery_provider_id_idx,
    whose condition the filter repeats so PostgreSQL may use the partial index). A substring search
    over the addresses read every message."""
    keys = {term, idempotency_key_stored(f"api:{term.removeprefix('api:')}")}
    provider_id = Q(provider_message_id=term) & ~Q(provider_message_id="")
    return Q(customer_id__in=customers_named(term)) | Q(idempotency_key__in=keys) | provider_id
