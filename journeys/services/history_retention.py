"""Keeping finished history bounded: runs, step executions, messages, cases, jobs, empty profiles,
expired sessions and the login log (docs/SCALING.md "Retention"); and, whatever the retention,
the inputs of finished jobs after JOB_INPUT_KEEP_DAYS (journeys.services.job_inputs).

`history_housekeeping` runs with the events housekeeping schedule. With HISTORY_RETENTION_DAYS
set, finished runs older than that go, oldest first, workflow by workflow, `batch` ids at a time,
each batch one short transaction (found through run_workflow_finished_idx, never by reading the
table), with what hangs off them: step executions, their messages and attempts (the channels
app), the case's link to them. What must keep holding does:

- re-entry limits (`once`, cooldown): before a run goes, its (workflow, customer) entry is kept
  as an EntryGate row (the one the engine's conditional upsert already enforces limits with),
  so a customer whose `once` run was deleted still cannot enter again;
- frequency caps: nothing younger than the longest enabled cap's window goes (a floor the
  channels app registers);
- experiments: the history of a workflow with an experiment, running or concluded, stays until
  the experiment is deleted (its report reads the runs and messages); the experiments app
  registers which workflows those are;
- a run with a message not yet sent (held by a pause, safe mode or its send time), or that a
  case not yet closed came from, stays (RUN_HOLDS, registered by the channels and agents apps).

Other apps prune their own finished history (closed cases) through HISTORY_PRUNERS. With a
retention set, anonymous profiles that retention left with nothing (no event, run, message,
case, identity but their anonymous ids...) are deleted too: their ids are queued in ProfileCheck
when their events or runs go (and, once, those made before: profiles_backfill), and looked at a
batch at a time. Without one, no profile is deleted.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, Value
from django.utils import timezone

from journeys.choices import IdentityKind, RunStatus
from journeys.models import Customer, Identity, JourneyRun, ProfileCheck, ProfileCheckBackfill
from journeys.models.jobs import Job, JobStatus
from journeys.services.job_inputs import job_inputs_purge

BATCH = 2000
FINISHED_RUN_STATUSES = (RunStatus.COMPLETED, RunStatus.EXITED, RunStatus.FAILED)
# A profile touched this recently is left alone: its first event may be in a transaction not yet committed.
PROFILE_GRACE = timedelta(days=1)

# Registered by other apps in AppConfig.ready() (journeys imports none of them):
# workflow ids whose history must stay whatever its age (experiments not yet concluded)
HISTORY_KEEPERS: list[Callable[[], set[int]]] = []
# how far back other apps read finished history (the longest frequency-cap window): nothing younger goes
HISTORY_FLOORS: list[Callable[[], timedelta]] = []
# runs that must stay whatever their age, as a condition on JourneyRun (a message not yet sent, an open case)
RUN_HOLDS: list[Callable[[], Q]] = []
# delete other apps' rows of these runs (messages), inside the batch's transaction; returns counts
RUN_DEPENDENTS: list[Callable[[list[int]], dict]] = []
# other apps' own finished history older than the cutoff: (cutoff, deadline, batch) -> counts
HISTORY_PRUNERS: list[Callable[[datetime, float, int], dict]] = []


def relations_detach(model: type[models.Model], ids_filter: dict) -> None:
    """What points at the rows of `model` about to go, as each relation says (SET_NULL, CASCADE),
    found through the model's relations, so other apps' references (cases) are handled too."""
    for rel in model._meta.get_fields(include_hidden=True):  # hidden: related_name="+" relations too
        if not (rel.auto_created and not rel.concrete and (rel.one_to_many or rel.one_to_one)):
            continue
        lookup = {f"{rel.field.attname}__{k}": v for k, v in ids_filter.items()}
        manager = rel.related_model._base_manager
        if rel.on_delete is models.SET_NULL:
            manager.filter(**lookup).update(**{rel.field.attname: None})
        elif rel.on_delete is models.CASCADE:
            manager.filter(**lookup).delete()


def history_cutoff(*, now: datetime | None = None) -> datetime | None:
    """Finished history older than this goes (None: HISTORY_RETENTION_DAYS unset, nothing goes).
    Never younger than what other apps read back (the longest frequency-cap window)."""
    days = settings.HISTORY_RETENTION_DAYS
    if not days:
        return None
    keep = max([timedelta(days=days), *(floor() for floor in HISTORY_FLOORS)])
    return (now or timezone.now()) - keep


def profiles_check_later(customer_ids) -> None:
    """Queue these customers for the empty-profile check (their events or runs are going)."""
    ids = {pk for pk in customer_ids if pk is not None}
    if ids:
        ProfileCheck.objects.bulk_create([ProfileCheck(customer_id=pk) for pk in ids], ignore_conflicts=True)


_GATE_KEEP = """
INSERT INTO journeys_entrygate (workflow_id, customer_id, entered_at)
SELECT workflow_id, customer_id, MAX(created_at) FROM journeys_journeyrun WHERE id IN ({ids})
GROUP BY workflow_id, customer_id
ON CONFLICT (workflow_id, customer_id) DO UPDATE SET entered_at = excluded.entered_at
WHERE journeys_entrygate.entered_at < excluded.entered_at
"""


@transaction.atomic
def runs_delete(*, ids: list[int]) -> dict:
    """Delete these runs and what hangs off them in one transaction. Their entries are kept first
    as EntryGate rows (the last entry per workflow and customer), so re-entry `once` and cooldown
    limits hold without the runs; their customers are queued for the empty-profile check."""
    if not ids:
        return {"runs": 0}
    placeholders = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(_GATE_KEEP.format(ids=placeholders), ids)
    profiles_check_later(JourneyRun.objects.filter(pk__in=ids).values_list("customer_id", flat=True).distinct())
    counts: dict = {}
    for dependents in RUN_DEPENDENTS:
        for key, n in dependents(ids).items():
            counts[key] = counts.get(key, 0) + n
    relations_detach(JourneyRun, {"in": ids})  # step executions; cases' origin_run
    counts["runs"] = JourneyRun.objects.filter(pk__in=ids)._raw_delete(connection.alias)
    return counts


def runs_retention_run(*, cutoff: datetime, deadline: float, batch: int = BATCH) -> dict:
    """Delete runs finished before `cutoff`, oldest first, `batch` at a time, workflow by workflow
    (run_workflow_finished_idx), skipping the workflows whose history another app keeps
    (HISTORY_KEEPERS: their old runs are never read) and the runs another app holds (RUN_HOLDS:
    read again each pass, but few), which the walk steps past (finished_at, id)."""
    from journeys.models import Workflow

    kept: set[int] = set()
    for keeper in HISTORY_KEEPERS:
        kept |= keeper()
    held = Q()
    for hold in RUN_HOLDS:
        held |= hold()
    counts: dict = {"runs": 0}
    for workflow_id in Workflow.objects.exclude(pk__in=kept).order_by("pk").values_list("pk", flat=True):
        for status in FINISHED_RUN_STATUSES:
            after = Q()
            while time.monotonic() < deadline:
                rows = list(JourneyRun.objects.filter(after, workflow_id=workflow_id, status=status,
                                                      finished_at__lt=cutoff)
                            .annotate(held=ExpressionWrapper(held, output_field=BooleanField()) if held else Value(False))
                            .order_by("finished_at", "pk").values_list("pk", "finished_at", "held")[:batch])
                for key, n in runs_delete(ids=[pk for pk, _, hold in rows if not hold]).items():
                    counts[key] = counts.get(key, 0) + n
                if len(rows) < batch:
                    break
                last_pk, last_at, _ = rows[-1]
                after = Q(finished_at__gt=last_at) | Q(finished_at=last_at, pk__gt=last_pk)
    return counts


def jobs_retention_run(*, cutoff: datetime, deadline: float, batch: int = BATCH) -> int:
    """Delete finished jobs (imports, exports, triggers, erasures: their summaries) older than the cutoff."""
    deleted = 0
    while time.monotonic() < deadline:
        ids = list(Job.objects.filter(finished_at__lt=cutoff, status__in=(JobStatus.SUCCEEDED, JobStatus.FAILED))
                   .order_by("finished_at").values_list("pk", flat=True)[:batch])
        if ids:
            with transaction.atomic():
                relations_detach(Job, {"in": ids})  # its chunks
                Job.objects.filter(pk__in=ids)._raw_delete(connection.alias)
        deleted += len(ids)
        if len(ids) < batch:
            break
    return deleted


def _holds_something() -> Q:
    """A profile holds something when any row points at it: an event, a run, a message, a case,
    a consent, an assignment, a merge, an identity other than an anonymous id... Rows the engine
    derives from the profile (due dates, segment and stage rechecks: no database constraint, they
    follow the profile) do not count."""
    found = Q()
    for rel in Customer._meta.get_fields(include_hidden=True):
        if not (rel.auto_created and not rel.concrete and (rel.one_to_many or rel.one_to_one)):
            continue
        if rel.on_delete is models.CASCADE and not rel.field.db_constraint:
            continue  # derived bookkeeping
        rows = rel.related_model._base_manager.filter(**{rel.field.attname: OuterRef("pk")})
        if rel.related_model is Identity:
            rows = rows.exclude(kind=IdentityKind.ANONYMOUS_ID)
        found |= Exists(rows)
    return found


def profiles_prune(*, now: datetime, deadline: float, batch: int = 500) -> int:
    """Look at the queued profiles (ProfileCheck), a batch at a time: delete the anonymous ones
    (no user id, email or phone, no traits, neither merged nor erased) that hold nothing any more
    and were not touched for a day; drop them all from the queue."""
    deleted = 0
    holds = _holds_something()
    while time.monotonic() < deadline:
        ids = list(ProfileCheck.objects.order_by("pk").values_list("pk", flat=True)[:batch])
        if not ids:
            break
        with transaction.atomic():
            empty = list(
                Customer.objects.filter(pk__in=ids, external_id="", email="", phone="", traits={},
                                        merged_into__isnull=True, erased_at__isnull=True,
                                        updated_at__lt=now - PROFILE_GRACE)
                .exclude(holds).select_for_update(skip_locked=True).values_list("pk", flat=True))
            if empty:
                Customer.objects.filter(pk__in=empty).delete()  # their anonymous ids and bookkeeping rows
            ProfileCheck.objects.filter(pk__in=ids).delete()
        deleted += len(empty)
    return deleted


def profiles_backfill(*, deadline: float, batch: int = 5000) -> int:
    """Queue the anonymous profiles made before the retention queued its own (those earlier event
    retention left empty), walking customers by id from the stored watermark, `batch` at a time,
    until the end is reached once (ProfileCheckBackfill). Returns how many were queued."""
    mark, _ = ProfileCheckBackfill.objects.get_or_create(pk=1)
    queued = 0
    while not mark.done and time.monotonic() < deadline:
        rows = list(Customer.objects.filter(pk__gt=mark.last_id).order_by("pk")
                    .values_list("pk", "external_id", "email", "merged_into_id")[:batch])
        anonymous = [pk for pk, external_id, email, merged in rows if not (external_id or email or merged)]
        profiles_check_later(anonymous)
        queued += len(anonymous)
        mark.last_id = rows[-1][0] if rows else mark.last_id
        mark.done = len(rows) < batch
        mark.save(update_fields=["last_id", "done"])
    return queued


def sessions_purge() -> int:
    """Expired sessions (Django keeps them until `clearsessions`): the session engine's own clean-up."""
    from importlib import import_module

    from django.contrib.sessions.models import Session

    expired = (Session.objects.filter(expire_date__lt=timezone.now()).count()  # expire_date index
               if settings.SESSION_ENGINE.endswith(".db") else 0)
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
    return expired


def login_log_purge(*, now: datetime, batch: int = 5000) -> int:
    """The login access log (django-axes: one row per login and logout, and per failure) older
    than LOGIN_LOG_KEEP_DAYS, `batch` rows per table and run, read through the primary key."""
    from django.apps import apps

    cutoff = now - timedelta(days=settings.LOGIN_LOG_KEEP_DAYS)
    purged = 0
    for name in ("AccessLog", "AccessFailureLog"):
        try:
            model = apps.get_model("axes", name)
        except LookupError:
            continue
        # oldest first by id (attempt_time has no index): up to the first row young enough to stay
        rows = list(model.objects.order_by("pk").values_list("pk", "attempt_time")[:batch])
        ids = [pk for pk, _ in itertools.takewhile(lambda row: row[1] < cutoff, rows)]
        purged += model.objects.filter(pk__in=ids)._raw_delete(connection.alias) if ids else 0
    return purged


def history_housekeeping(*, now: datetime | None = None, budget_s: float = 20.0, batch: int = BATCH) -> dict:
    """The scheduled upkeep of finished history (with the events housekeeping, every few minutes):
    each part in bounded batches, the whole within `budget_s`, so a backlog is worked off over
    several runs."""
    now = now or timezone.now()
    deadline = time.monotonic() + budget_s
    result: dict = {"sessions_purged": sessions_purge(), "login_log_purged": login_log_purge(now=now),
                    "job_inputs_purged": job_inputs_purge(now=now, budget_s=budget_s / 4)}
    cutoff = history_cutoff(now=now)
    if cutoff is not None:
        # Runs get half the budget at most: with a backlog of them (the first runs after the
        # retention is set) the other parts still move on every run instead of waiting behind.
        runs_deadline = min(deadline, time.monotonic() + budget_s / 2)
        result.update(runs_retention_run(cutoff=cutoff, deadline=runs_deadline, batch=batch))
        result["jobs"] = jobs_retention_run(cutoff=cutoff, deadline=deadline, batch=batch)
        for pruner in HISTORY_PRUNERS:
            result.update(pruner(cutoff, deadline, batch))
        profiles_backfill(deadline=deadline)
        result["profiles_deleted"] = profiles_prune(now=now, deadline=deadline)
    return result
