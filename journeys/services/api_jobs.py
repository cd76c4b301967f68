"""Background jobs started through the API, idempotent by the client's key.

A job is stored once per key (the unique `Job.idempotency_key`): a replay with the same key and
the same request finds it (and its result); the same key with a different request is refused.
The work runs in a q2 worker (`journeys.services.jobs.run_job`) after commit.

Clients name keys after what they send (`welcome-<email>`, `receipt-<userId>-<order>`), so a key
is stored as a keyed digest (`idempotency_key_stored`), never as sent, and so is the request it
was used for (`request_fingerprint`): a replay still finds its request and is compared with it,
and an erasure leaves nothing of the person in either.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import IntegrityError, transaction

from journeys.engine.queue import task_send_on_commit
from journeys.errors import JourneyError
from journeys.models import ApiToken, Job, JobStatus
from journeys.services.digests import personal_digest

# What marks the client's part of a stored key as a digest (`trigger:#<digest>`).
KEY_DIGEST_MARK = "#"


class IdempotencyMismatch(JourneyError):
    code = "idempotency_key_reused"


def _canonical(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def request_fingerprint(payload: Any) -> str:
    """What a key was used for, as a keyed digest of the request (keys sorted, no whitespace):
    it recognises a replay, and says nothing of the request (a message's address, a trigger's
    recipients) to whoever reads it, so an erasure may keep it."""
    return personal_digest(_canonical(payload), purpose="idempotent-request")


LEGACY_FINGERPRINT_CHARS = 64  # stored before fingerprints were keyed: a bare sha256 of the request


def request_matches(stored: str | None, payload: Any) -> bool:
    """Whether a stored fingerprint is of this request (also one stored before they were keyed)."""
    if stored and len(stored) == LEGACY_FINGERPRINT_CHARS:
        return stored == hashlib.sha256(_canonical(payload).encode("utf-8", "surrogatepass")).hexdigest()
    return stored == request_fingerprint(payload)


def idempotency_key_stored(key: str) -> str:
    """`<use>:<client's key>` as it is stored: the client's part as a keyed digest (the use, such
    as `api` or `trigger`, stays readable)."""
    use, _, client_key = key.partition(":")
    return f"{use}:{KEY_DIGEST_MARK}{personal_digest(client_key, purpose='idempotency-key')}"


def idempotency_key_forms(key: str) -> list[str]:
    """The stored forms a replay of `key` may find: its digest, and the key itself as rows stored
    before keys were digested hold it (an erasure digests those of the person: `idempotency_key_hidden`)."""
    return [idempotency_key_stored(key), key]


def idempotency_key_hidden(stored: str) -> str:
    """A stored key with its client's part digested (a key stored before keys were digested);
    one already digested is returned as it is."""
    use, _, client_key = stored.partition(":")
    return stored if not client_key or client_key.startswith(KEY_DIGEST_MARK) else idempotency_key_stored(stored)


def idempotency_check(*, stored_hash: str | None, request: Any, what: str = "request") -> None:
    """A key replayed with the request it was first used for passes; with another request it is
    refused (IdempotencyMismatch: the API's 422 naming `idempotency_key`)."""
    if not request_matches(stored_hash, request):
        raise IdempotencyMismatch(f"was already used for a different {what}; use a new key", field="idempotency_key")


def idempotent_job_find(*, key: str, request: Any) -> Job | None:
    """The job stored for this key, or None; the same key for another request is an error."""
    job = Job.objects.filter(idempotency_key__in=idempotency_key_forms(key)).order_by("pk").first()
    if job is not None:
        idempotency_check(stored_hash=job.request_hash, request=request)
    return job


def api_job_start(*, kind: str, token: ApiToken, params: dict, key: str, request: Any,
                  status: str = JobStatus.QUEUED, result: dict | None = None, enqueue: bool = True) -> tuple[Job, bool]:
    """Store a job once per key and hand it to a worker after commit; returns (job, created).
    `request` is what the key is used for (a replay must be the same).

    `status`/`result` store a job that was done synchronously (a small trigger), so a replay of
    its key answers the same way without doing the work again."""
    from django.utils import timezone

    existing = idempotent_job_find(key=key, request=request)
    if existing is not None:
        return existing, False
    finished = status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    try:
        with transaction.atomic():
            job = Job.objects.create(kind=kind, params=params, api_token=token,
                                     idempotency_key=idempotency_key_stored(key),
                                     request_hash=request_fingerprint(request), status=status, result=result or {},
                                     finished_at=timezone.now() if finished else None)
    except IntegrityError:  # a concurrent request with the same key stored it first
        return idempotent_job_find(key=key, request=request), False
    if enqueue and not finished:
        task_send_on_commit("journeys.services.jobs.run_job", job.pk, task_name=f"job-{job.pk}")
    return job, True
