"""Trigger a live workflow through the API: for listed customers (by user id, email or customer
id) or for everyone matching a segment rule, with per-recipient data the steps and templates
read as `journey.*`.

Idempotent by the client's key: the request is a Job stored once per key (a unique constraint),
and the runs it makes share the trigger key `api:<job id>`, so a replayed request or a retried
task never enrols anyone twice. Small lists are enrolled at once; large lists and segments by
a background job (one `runs_enroll_bulk` call per page of customers, never one per customer).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from journeys.choices import IdentityKind, WorkflowStatus
from journeys.errors import JourneyError
from journeys.models import ApiToken, Customer, Job, JobKind, JobStatus, JourneyRun, Workflow
from journeys.services.api_jobs import api_job_start
from journeys.services.bulk_ingest import identities_find

# Run variables other parts of the product give a meaning to (docs/CONVENTIONS.md).
RESERVED_VARIABLES = frozenset({"holdout", "experiment", "experiment_arm", "case_id"})
PAGE = 2000


def _check_data(data: dict, field: str) -> None:
    for key in data:
        if key in RESERVED_VARIABLES:
            raise JourneyError(f"{key!r} is a reserved journey variable; use another name", field=f"{field}.{key}")


def trigger_validate(*, workflow: Workflow, recipients: list[dict] | None, segment: str | None, data: dict) -> int:
    """Refuse what cannot be done, naming the field; returns the live version's id."""
    from journeys.rules import validate_profile_rule

    if workflow.live_version_id is None:
        raise JourneyError(f"workflow {workflow.name!r} has no live version", field="workflow")
    if workflow.status != WorkflowStatus.ACTIVE:
        raise JourneyError(f"workflow {workflow.name!r} is {workflow.status}", field="workflow")
    _check_data(data, "data")
    for index, recipient in enumerate(recipients or []):
        _check_data(recipient.get("data") or {}, f"recipients[{index}].data")
    if segment is not None and (problems := validate_profile_rule(segment)):
        raise JourneyError("; ".join(problems), field="segment")
    return workflow.live_version_id


def recipients_resolve(recipients: list[dict]) -> tuple[dict[int, dict], list[int]]:
    """({customer id: journey variables}, indexes of recipients not found or erased), a few queries for the
    whole list. A customer named twice gets the data of both (the later wins)."""

    def key(r: dict) -> tuple[str, str] | None:
        if r.get("user_id"):
            return IdentityKind.USER_ID, r["user_id"]
        if r.get("email"):
            return IdentityKind.EMAIL, r["email"].strip().lower()
        return None

    keys = [key(r) for r in recipients]
    owners = identities_find({k for k in keys if k is not None})
    ids = {int(r["customer_id"]) for r, k in zip(recipients, keys) if k is None and r.get("customer_id")}
    known = {pk: merged for pk, merged in Customer.objects.filter(pk__in=set(owners.values()) | ids,
                                                                   erased_at__isnull=True)
             .values_list("pk", "merged_into_id")}
    out: dict[int, dict] = {}
    missing: list[int] = []
    for index, (r, k) in enumerate(zip(recipients, keys)):
        if k is not None:
            pk = owners.get(k)
        else:
            pk = int(r["customer_id"]) if r.get("customer_id") else None
        if pk is None or pk not in known:
            missing.append(index)
            continue
        pk = known[pk] or pk  # an absorbed profile's data goes to its survivor
        out[pk] = {**out.get(pk, {}), **(r.get("data") or {})}
    return out, missing


def _enrol(*, version_id: int, variables: dict[int, dict], trigger_key: str, now: datetime) -> None:
    from journeys.engine.compiled import load_version
    from journeys.engine.enrolment import VersionNotLive, runs_enroll_bulk

    if variables:
        try:
            runs_enroll_bulk(version=load_version(version_id), customer_ids=sorted(variables),
                             trigger_key=trigger_key, now=now, variables=variables)
        except VersionNotLive as exc:
            raise JourneyError(f"the workflow takes no entries now ({exc})", field="workflow") from None


def _summary(*, job: Job, requested: int, not_found: list[int]) -> dict:
    enrolled = JourneyRun.objects.filter(workflow_id=job.params["workflow_id"], trigger_key=f"api:{job.pk}").count()
    return {"workflow": job.params["workflow_id"], "version": job.params["version_id"], "requested": requested,
            "enrolled": enrolled, "not_found": not_found[:1000], "not_found_count": len(not_found),
            "not_enrolled": max(0, requested - enrolled - len(not_found))}


def workflow_trigger(*, workflow: Workflow, token: ApiToken, key: str, recipients: list[dict] | None = None,
                     segment: str | None = None, data: dict | None = None,
                     now: datetime | None = None) -> tuple[Job, bool]:
    """Enrol recipients (or a segment) in the workflow's live version; returns (job, created).

    Entry rules, re-entry policy and the one-open-run rule still apply: a refused customer
    counts as `not_enrolled`. The request's `data` is given to everyone, a recipient's own
    `data` on top of it."""
    data = data or {}
    version_id = trigger_validate(workflow=workflow, recipients=recipients, segment=segment, data=data)
    request: dict[str, Any] = {"workflow_id": workflow.pk, "recipients": recipients, "segment": segment, "data": data}
    params = {**request, "version_id": version_id}
    key = f"trigger:{key}"
    if segment is not None or len(recipients or []) > settings.API["TRIGGER_SYNC_MAX"]:
        return api_job_start(kind=JobKind.TRIGGER, token=token, params=params, key=key, request=request)
    now = now or timezone.now()
    with transaction.atomic():
        job, created = api_job_start(kind=JobKind.TRIGGER, token=token, params=params, key=key,
                                     request=request, status=JobStatus.RUNNING, enqueue=False)
        if not created:
            return job, False
        variables, missing = recipients_resolve(recipients or [])
        _enrol(version_id=version_id, variables={pk: {**data, **v} for pk, v in variables.items()},
               trigger_key=f"api:{job.pk}", now=now)
        job.result = _summary(job=job, requested=len(recipients or []), not_found=missing)
        job.status, job.finished_at = JobStatus.SUCCEEDED, timezone.now()
        job.progress_done = job.progress_total = len(recipients or [])
        job.save(update_fields=["result", "status", "finished_at", "progress_done", "progress_total"])
    return job, True


def _progress(job: Job, *, done: int, total: int, message: str) -> None:
    """Progress where the job's status page and GET /api/v1/jobs/<id> see it (a short write of its own)."""
    Job.objects.filter(pk=job.pk).update(progress_done=done, progress_total=total, message=message[:255])


def trigger_job_run(*, job: Job) -> dict:
    """The background half (`run_job`): enrol page by page, one bulk enrolment per page. A retried
    task enrols nobody twice (the runs' trigger key is the job's)."""
    from journeys.services.segments import segment_customer_ids

    params, now = dict(job.params), timezone.now()
    data, key = params.get("data") or {}, f"api:{job.pk}"
    # The workflow's live version when the job runs (a publish in between is followed, not refused).
    live = Workflow.objects.filter(pk=params["workflow_id"]).values_list("live_version_id", flat=True).first()
    params["version_id"] = live or params["version_id"]
    if params.get("segment") is not None:
        after, done = 0, 0
        while True:
            ids = segment_customer_ids(rule=params["segment"], now=now, after_id=after, limit=PAGE)
            if not ids:
                break
            with transaction.atomic():
                _enrol(version_id=params["version_id"], variables={pk: dict(data) for pk in ids}, trigger_key=key, now=now)
            done += len(ids)
            after = ids[-1]
            _progress(job, done=done, total=done, message=f"{done} customers of the segment handled")
        return _summary(job=job, requested=done, not_found=[])
    recipients = params.get("recipients") or []
    missing_all: list[int] = []
    for start in range(0, len(recipients), PAGE):
        page = recipients[start:start + PAGE]
        variables, missing = recipients_resolve(page)
        missing_all.extend(start + i for i in missing)
        with transaction.atomic():
            _enrol(version_id=params["version_id"], variables={pk: {**data, **v} for pk, v in variables.items()},
                   trigger_key=key, now=now)
        _progress(job, done=start + len(page), total=len(recipients),
                  message=f"{start + len(page)} of {len(recipients)} recipients handled")
    return _summary(job=job, requested=len(recipients), not_found=missing_all)
