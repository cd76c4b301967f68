"""Background jobs started through the API, idempotent by the client's key.

A job is stored once per key (the unique `Job.idempotency_key`): a replay with the same key and
the same request finds it (and its result); the same key with a different request is refused.
The work runs in a q2 worker (`journeys.services.jobs.run_job`) after commit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import IntegrityError, transaction

from journeys.engine.queue import task_send_on_commit
from journeys.errors import JourneyError
from journeys.models import ApiToken, Job, JobStatus


class IdempotencyMismatch(JourneyError):
    code = "idempotency_key_reused"


def request_fingerprint(payload: Any) -> str:
    """A stable hash of what a key was used for (keys sorted, no whitespace)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
                          .encode("utf-8", "surrogatepass")).hexdigest()


def idempotency_check(*, stored_hash: str | None, request_hash: str, what: str = "request") -> None:
    """A key replayed with the request it was first used for passes; with another request it is
    refused (IdempotencyMismatch: the API's 422 naming `idempotency_key`)."""
    if stored_hash != request_hash:
        raise IdempotencyMismatch(f"was already used for a different {what}; use a new key", field="idempotency_key")


def idempotent_job_find(*, key: str, request_hash: str) -> Job | None:
    """The job stored for this key, or None; the same key for another request is an error."""
    job = Job.objects.filter(idempotency_key=key).first()
    if job is not None:
        idempotency_check(stored_hash=job.request_hash, request_hash=request_hash)
    return job


def api_job_start(*, kind: str, token: ApiToken, params: dict, key: str, request_hash: str,
                  status: str = JobStatus.QUEUED, result: dict | None = None, enqueue: bool = True) -> tuple[Job, bool]:
    """Store a job once per key and hand it to a worker after commit; returns (job, created).

    `status`/`result` store a job that was done synchronously (a small trigger), so a replay of
    its key answers the same way without doing the work again."""
    from django.utils import timezone

    existing = idempotent_job_find(key=key, request_hash=request_hash)
    if existing is not None:
        return existing, False
    finished = status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    try:
        with transaction.atomic():
            job = Job.objects.create(kind=kind, params=params, api_token=token, idempotency_key=key,
                                     request_hash=request_hash, status=status, result=result or {},
                                     finished_at=timezone.now() if finished else None)
    except IntegrityError:  # a concurrent request with the same key stored it first
        return idempotent_job_find(key=key, request_hash=request_hash), False
    if enqueue and not finished:
        task_send_on_commit("journeys.services.jobs.run_job", job.pk, task_name=f"job-{job.pk}")
    return job, True
