"""Time-driven work: wake due runs, fire inactivity windows, date and cron triggers.

Every part costs what is due, not the size of the customer base: due runs, inactivity windows
and date occurrences are read through indexes on their due moments (SKIP LOCKED pages), cron
audiences through the segment service (SQL where the rule translates). New entries are made
set-based by `journeys.engine.enrolment` (entry rules, re-entry limits enforced in the database,
one open run per customer, canary share, business hours), and started, like due runs, by q2
tasks of up to 1,000 runs each on the event workers (`journeys.engine.wakeups`): the tick
itself only claims and hands out work.

New entries from date, inactivity and cron triggers follow a workflow's canary share
exactly as event entries do (`canary_admits`, the same stable bucket per customer);
runs already started, and inactivity windows already open, stay on their version.

`engine_tick` (the `engine_tick` q2 schedule, every minute, on the schedules cluster) never
overlaps itself: it holds a lease (journeys.engine.lease) while it works and a tick that finds
the lease held returns at once. It also stops claiming new work after ENGINE_TICK_BUDGET_S
seconds (what is left stays due for the next tick). The functions below are also safe to run
concurrently on their own (tests force that): rows are claimed with SKIP LOCKED, cron moments
under the TriggerState row lock, and every limit is a database constraint.
"""

from __future__ import annotations

import logging
import time as monotonic
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from journeys.choices import TriggerKind, VersionState
from journeys.engine.batch import ids_q, skip_locked
from journeys.engine.compiled import canary_admits, load_version, routable_versions
from journeys.engine.cron import cron_fires, parse_cron
from journeys.engine.dates import date_versions, dates_fire_due, dates_prepare, dates_refresh_stale, zone_named
from journeys.engine.enrolment import Candidate, enroll_candidates
from journeys.engine.lease import Lease, LeaseLost
from journeys.engine.wakeups import runs_claim_due
from journeys.models import JourneyRun, TriggerState, TriggerWatch, WorkflowVersion

logger = logging.getLogger(__name__)
BATCH = 1000  # inactivity windows per page
AUDIENCE_PAGE = 2000  # customers of a cron audience enrolled per transaction
CATCH_UP = timedelta(days=1)  # how far back a cron trigger looks for a missed moment
TICK_LEASE = "journeys.engine_tick"
TICK_TTL = timedelta(minutes=5)
GUARD_PROBE = 10  # runs read to find the previous release's broadcast (`_broadcast_found`)



def runs_wake_due(*, now: datetime | None = None, deadline: float | None = None) -> int:
    """Resume waiting runs whose timer is due (a delay ends: 'next'; a wait times out: 'timeout')
    and start bulk entries that are due; returns how many runs were claimed."""
    return runs_claim_due(now=now or timezone.now(), deadline=deadline)


def watches_fire_due(*, now: datetime | None = None, deadline: float | None = None) -> int:
    """Inactivity windows that closed without the follow-up event: enrol the customers, set-based."""
    now = now or timezone.now()
    fired = 0
    while True:
        with transaction.atomic():
            watches = list(
                TriggerWatch.objects.select_for_update(of=("self",), **skip_locked())
                .filter(due_at__lte=now, fired_at__isnull=True, cancelled_at__isnull=True)
                .select_related("start_event").order_by("due_at")[:BATCH]
            )
            serving = _serving({w.version_id for w in watches})
            successors = _successors([w for w in watches if w.version_id not in serving])
            groups: dict[int, list[Candidate]] = defaultdict(list)
            for watch in watches:
                # Routed when the window opened (canary share): it enrols on that version while
                # the version still serves (live, or the workflow's canary); after a publish, on the
                # version that now takes the customer's entries, if it still starts on that event.
                vid = watch.version_id if watch.version_id in serving else successors.get(watch.pk)
                if vid is not None:
                    groups[vid].append(Candidate(
                        customer_id=watch.customer_id, trigger_key=f"inactivity:{watch.start_event_id}",
                        event=watch.start_event))
            for vid, candidates in sorted(groups.items()):
                enroll_candidates(version=load_version(vid), candidates=candidates, now=now)
            TriggerWatch.objects.filter(ids_q("pk", [w.pk for w in watches])).update(fired_at=now)
        fired += len(watches)
        if len(watches) < BATCH or (deadline is not None and monotonic.monotonic() > deadline):
            return fired


def _successors(watches: list[TriggerWatch]) -> dict[int, int]:
    """watch id -> the version that now takes its customer's new entries in the watch's workflow
    (live or canary, by the canary share), where that version is an inactivity trigger on the
    event that opened the window. A window opened before a publish is not lost with its version."""
    if not watches:
        return {}
    workflow_of = dict(WorkflowVersion.objects.filter(pk__in={w.version_id for w in watches})
                       .values_list("pk", "workflow_id"))
    takers: dict[int, list[tuple[int, str, tuple[int, int, bool] | None]]] = defaultdict(list)
    for vid, routing in _routed(TriggerKind.INACTIVITY):
        version = load_version(vid)
        takers[version.workflow_id].append((vid, version.trigger_event, routing))
    out = {}
    for watch in watches:
        for vid, event, routing in takers.get(workflow_of.get(watch.version_id), ()):
            if event == watch.start_event.name and canary_admits(routing, watch.customer_id):
                out[watch.pk] = vid
                break
    return out


def _serving(version_ids: set[int]) -> set[int]:
    """Which of these versions are live or a workflow's canary (paused workflows included)."""
    return set(WorkflowVersion.objects.filter(pk__in=version_ids).filter(
        Q(state=VersionState.LIVE) | Q(workflow__canary_version=F("pk"))).values_list("pk", flat=True))


def _routed(kind: str) -> list[tuple[int, tuple[int, int, bool] | None]]:
    """(version id, canary routing) of the versions taking new entries for this trigger kind:
    the live ones and canaries; routing is None unless the workflow has a canary."""
    rows = routable_versions().filter(trigger_kind=kind).values_list(
        "pk", "workflow_id", "workflow__canary_version_id", "workflow__canary_percent")
    return [(vid, None if canary_id is None else (wid, percent, vid == canary_id))
            for vid, wid, canary_id, percent in rows]


def date_triggers_run(*, now: datetime | None = None, deadline: float | None = None) -> int:
    """Date-attribute triggers (birthdays, anniversaries), in each customer's own timezone, read
    from the precomputed due moments (journeys.engine.dates); returns how many runs were made.

    trigger_config: {"attribute": "signup_date", "offset_days": 0, "at": "09:00", "yearly": true}.
    A customer enters once per local date (trigger key date:<local date>).
    """
    now = now or timezone.now()
    versions = date_versions(_routed(TriggerKind.DATE_ATTRIBUTE))
    dates_prepare(versions=versions, now=now)
    dates_refresh_stale(versions=versions, now=now, deadline=deadline)
    return dates_fire_due(versions=versions, now=now, deadline=deadline).enrolled


def _moment_claim(version_id: int, fields, zone: ZoneInfo, now: datetime) -> TriggerState:
    """Under the TriggerState row lock: if no broadcast is in progress, claim the latest cron
    moment in (last moment considered, now], read on `zone`'s wall clock (missed moments are not
    sent once each: one catch-up broadcast, for the latest, within CATCH_UP). A moment whose
    occurrence the previous release already broadcast on the UTC clock is passed over
    (`_sent_on_the_utc_clock`)."""
    state, _ = TriggerState.objects.select_for_update().get_or_create(version_id=version_id)
    if state.broadcast_at is not None:
        return state
    start = max(state.last_tick_at or (now - timedelta(minutes=1)), now - CATCH_UP)
    moment, claimed = now, None
    while moment > start:
        if cron_fires(fields, moment, zone):
            claimed = moment
            break
        moment -= timedelta(minutes=1)
    state.last_tick_at = now
    if claimed is not None and _sent_on_the_utc_clock(version_id, fields, zone, claimed):
        claimed = None
    if claimed is not None:
        state.broadcast_at, state.broadcast_after_id = claimed, 0
    state.save()
    return state


def _sent_on_the_utc_clock(version_id: int, fields, zone: ZoneInfo, moment: datetime,
                           floor: datetime | None = None) -> bool:
    """Whether release 0921fe7 (or before), which read every schedule on the UTC clock, already
    broadcast this occurrence: for a zone west of UTC its moment came first (Monday 10:00 UTC for
    "0 10 * * 1" in New York, now 15:00 UTC), so an install upgraded in between would send the
    same period's broadcast twice. That moment is the wall time this one stands for read as UTC
    (`_utc_reading`); the old broadcast is a run of this version keyed by it (`_broadcast_found`).

    Where the zone's clock also fires at that moment ("0 10,15 * * 1-5": 15:00 UTC is 10:00 in
    New York), the run may be this code's own broadcast of it; it is the old release's only if
    this guard passed that moment over, which is the same question one step back (at most
    CATCH_UP back from the first moment asked about, so an hourly schedule is never held back)."""
    floor = floor or moment - CATCH_UP
    earlier = _utc_reading(fields, zone, moment)
    if earlier is None or not floor <= earlier < moment:
        return False
    # the runs made since that moment by the real clock (`moment` may be a catch-up's or a test's)
    since = min(earlier, timezone.now() - (moment - earlier)) - timedelta(minutes=5)
    if not _broadcast_found(version_id, f"schedule:{earlier.isoformat()}", since):
        return False
    if cron_fires(fields, earlier, zone) and not _sent_on_the_utc_clock(version_id, fields, zone, earlier, floor):
        return False
    logger.warning("schedule of version %s: the %s occurrence was already sent at %s by the release that read "
                   "schedules in UTC; not sent again", version_id, moment.isoformat(), earlier.isoformat())
    return True


def _utc_reading(fields, zone: ZoneInfo, moment: datetime) -> datetime | None:
    """The UTC minute at which the UTC clock fired the occurrence `zone`'s clock fires at `moment`:
    its wall time read as UTC, or, at the first minute after a spring-forward jump, the latest
    skipped wall time the cron names ("0 2 * * *" in New York fires at 07:00 UTC that day, for
    02:00). None if the UTC clock never fired it."""
    wall = moment.astimezone(zone).replace(tzinfo=dt_timezone.utc, fold=0)
    before = (moment - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=dt_timezone.utc, fold=0)
    candidate = wall
    while candidate > before:
        if cron_fires(fields, candidate, dt_timezone.utc):
            return candidate
        candidate -= timedelta(minutes=1)
    return None


def _broadcast_found(version_id: int, key: str, since: datetime) -> bool:
    """Whether the broadcast keyed `key` is among the first GUARD_PROBE runs this version made
    from `since`: a broadcast creates its first page of runs at its moment, so those are read
    in created_at order through run_version_created_idx (LIMIT GUARD_PROBE), whatever the size
    of the segment or of the version's history, while the TriggerState row lock is held."""
    first = (JourneyRun.objects.filter(version_id=version_id, created_at__gte=since)
             .order_by("created_at").values_list("trigger_key", flat=True)[:GUARD_PROBE])
    return key in list(first)


def schedules_run(*, now: datetime | None = None, deadline: float | None = None) -> int:
    """Cron triggers over a segment: {"cron": "0 9 * * 1", "segment": "profile.plan == 'pro'",
    "timezone": "Europe/Paris"}, the cron read on that zone's wall clock (UTC without one; DST
    rules: `cron_fires`).

    Each cron moment is claimed once under the TriggerState row lock, and its audience is
    enrolled page by page with trigger key schedule:<moment>; each page commits together with
    the cursor, so a tick that dies resumes after the last committed page and two ticks can
    neither claim the same moment twice nor enrol anyone twice. Returns how many runs were made.
    """
    from journeys.services.segments import segment_customer_ids

    now = (now or timezone.now()).replace(second=0, microsecond=0)
    enrolled = 0
    for vid, routing in _routed(TriggerKind.SCHEDULE):
        version = load_version(vid)
        fields = parse_cron(version.trigger_config.get("cron", ""))
        zone = zone_named(version.trigger_config.get("timezone"))
        with transaction.atomic():
            pending = _moment_claim(vid, fields, zone, now).broadcast_at is not None
        while pending:
            with transaction.atomic():
                state = TriggerState.objects.select_for_update().get(version_id=vid)
                if state.broadcast_at is None:
                    break
                ids = segment_customer_ids(rule=version.trigger_config.get("segment", ""), now=now,
                                           after_id=state.broadcast_after_id, limit=AUDIENCE_PAGE)
                key = f"schedule:{state.broadcast_at.isoformat()}"
                enrolled += enroll_candidates(version=version, candidates=[Candidate(customer_id=c, trigger_key=key) for c in ids],
                                              now=now, routing=routing).enrolled
                if ids:
                    state.broadcast_after_id = ids[-1]
                if len(ids) < AUDIENCE_PAGE:
                    state.broadcast_at, state.broadcast_after_id = None, 0
                state.save(update_fields=["broadcast_at", "broadcast_after_id"])
                pending = state.broadcast_at is not None
            if deadline is not None and monotonic.monotonic() > deadline:
                break
    return enrolled


def segment_entries_refresh(*, now: datetime | None = None) -> int:
    """Segment-entry triggers for customers who came into the segment without an event (time passing,
    an import): hourly, set-based (journeys.engine.segment_entries). Returns how many runs were made."""
    from journeys.engine.segment_entries import segment_entries_run

    return segment_entries_run(routed=_routed(TriggerKind.SEGMENT_ENTRY), now=now or timezone.now())


def segment_entries_new() -> bool:
    """Whether a segment-entry trigger went live and has not recorded its members yet: the
    refresh then runs at the next minute, not the next hour (who comes into the segment without
    an event before that first refresh counts as in at go-live, and does not enter)."""
    return routable_versions().filter(trigger_kind=TriggerKind.SEGMENT_ENTRY).filter(
        Q(trigger_state__isnull=True) | Q(trigger_state__prepared_at__isnull=True)).exists()


def _in_chunks(queryset, size: int = 500):
    """Customers page by page (by id), with no cursor held open between pages.

    django-q2's enqueue closes idle connections (close_old_connections), which would
    kill a server-side iterator mid-loop on SQLite; each page is read in full first.
    """
    last = 0
    while True:
        page = list(queryset.filter(pk__gt=last).order_by("pk")[:size])
        if not page:
            return
        yield from page
        last = page[-1].pk


def stages_refresh(*, now: datetime | None = None) -> int:
    """Re-evaluate rule-defined lifecycle stages for everyone, set-based (time passes: 'inactive for 30 days')."""
    from journeys.services.lifecycle import customer_stages_refresh

    return customer_stages_refresh(now=now or timezone.now())


def engine_tick(*, now: datetime | None = None) -> dict:
    """Everything time-driven, once, under the tick's lease (a tick never overlaps itself: a
    second one returns {"skipped": "..."} at once). Each part stops claiming new work when the
    budget (ENGINE_TICK_BUDGET_S) is spent; what is left stays due for the next tick."""
    from journeys.engine.processor import events_sweep

    now = now or timezone.now()
    lease = Lease(TICK_LEASE, ttl=TICK_TTL)
    parts = ("swept", "woken", "inactivity", "date", "schedule", "stages", "segments")
    if not lease.acquire():
        return {**dict.fromkeys(parts, 0), "skipped": "another tick holds the lease"}
    deadline = monotonic.monotonic() + getattr(settings, "ENGINE_TICK_BUDGET_S", 45)
    out: dict = dict.fromkeys(parts, 0)
    try:
        for name, part in (
            ("swept", lambda: events_sweep()),
            ("woken", lambda: runs_wake_due(now=now, deadline=deadline)),
            ("inactivity", lambda: watches_fire_due(now=now, deadline=deadline)),
            ("date", lambda: date_triggers_run(now=now, deadline=deadline)),
            ("schedule", lambda: schedules_run(now=now, deadline=deadline)),
            ("stages", lambda: stages_refresh(now=now) if now.minute == 0 else 0),  # hourly
            ("segments", lambda: segment_entries_refresh(now=now) if now.minute == 0 or segment_entries_new() else 0),  # hourly; a new trigger at once
        ):
            try:
                out[name] = part()
            except LeaseLost:
                raise
            except Exception:  # one broken part must not stop the others (nor every later tick)
                logger.exception("engine tick: the %s part failed; the other parts still run", name)
                out[name] = 0
                out.setdefault("failed", []).append(name)
            lease.renew()
    except LeaseLost:
        logger.warning("engine tick lost its lease (it ran longer than %s); stopping", TICK_TTL)
        out["lease_lost"] = True
    finally:
        lease.release()
    return out
