"""What a job was given: an import's uploaded file (`Job.input_text`) and an API trigger's
recipients with their data (`Job.params`). Both name people (user ids, email addresses,
traits, consent choices), so they are kept only as long as they serve:

- while the job runs (a worker on another machine reads the file from the row) and
  JOB_INPUT_KEEP_DAYS days after it finished, then `job_inputs_purge` (the history housekeeping)
  deletes them; the job keeps its name, counts and rejected rows (row number, field, error);
- an erasure takes the person out of the inputs still kept (`job_inputs_erase`): their rows of
  an upload and their entries of a trigger are emptied in place, so the row numbers a job
  reports (rejected rows, a trigger's `not_found` positions) still point at the same rows, and
  a job still running skips them (an empty row is rejected, an empty recipient not found).

Jobs holding an input are found by kind and by what is still kept, and among those only the
ones whose stored text contains one of the person's identifiers are read (in SQL), so an
erasure reads no upload that does not name the person.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Func, JSONField, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from journeys.choices import IdentityKind
from journeys.models import Customer, Identity, Job, JobKind
from journeys.models.jobs import IMPORT_KINDS
from journeys.services.api_jobs import (
    KEY_DIGEST_MARK, LEGACY_FINGERPRINT_CHARS, idempotency_key_hidden, request_fingerprint, request_matches,
)
from journeys.services.csv_files import csv_delimiter
from journeys.services.identity import phone_e164, phone_normalize

TRIGGER_INPUT_KEYS = ("recipients", "data")  # a trigger's params that say who and with what
PURGE_BATCH = 200

# Fields that name a person in an uploaded row or a trigger's recipient (matched case-insensitively,
# nested or dotted: `traits.email`, `context.traits.phone`), and which of the person's keys they hold.
ROW_FIELDS = {"user_id": "ids", "userid": "ids", "anonymous_id": "ids", "anonymousid": "ids",
              "previous_id": "ids", "previousid": "ids", "email": "emails", "phone": "phones"}
RECIPIENT_FIELDS = {**ROW_FIELDS, "customer_id": "customer_ids"}  # a trigger names profiles by number too


@dataclass(frozen=True)
class PersonKeys:
    """What names a person in a job's input: their user and anonymous ids, email addresses
    (lower case), phone numbers (as stored and in E.164) and profile numbers."""

    ids: frozenset[str]
    emails: frozenset[str]
    phones: frozenset[str]
    customer_ids: frozenset[int]

    def texts(self) -> set[str]:
        """The strings one of which a stored input naming the person contains (as typed, and with
        JSON's escapes, as a JSON column may store a non-ASCII one)."""
        return {form for value in (*self.ids, *self.emails, *self.phones) if value for form in _forms(value)}

    def found_in(self, field: str) -> Q:
        """A condition on a text column: it contains one of the identifiers (an email address in
        any case, ids and numbers as they are stored: a cheaper scan of a long upload)."""
        match = Q()
        for value in self.emails:
            for form in _forms(value):
                match |= Q(**{f"{field}__icontains": form})
        for value in (*self.ids, *self.phones):
            for form in _forms(value):
                match |= Q(**{f"{field}__contains": form})
        return match

    def named_by(self, value: Any, fields: dict[str, str], field: str = "") -> bool:
        """Whether `value` (a row, a recipient, nested) names the person under one of `fields`."""
        if isinstance(value, dict):
            return any(self.named_by(v, fields, str(k)) for k, v in value.items())
        if isinstance(value, list):
            return any(self.named_by(v, fields, field) for v in value)
        kind = fields.get(field.rsplit(".", 1)[-1].strip().lower())
        if kind is None or value is None or isinstance(value, (bool, float, dict, list)):
            return False
        text = str(value).strip()
        if kind == "ids":
            return text in self.ids
        if kind == "emails":
            return text.lower() in self.emails
        if kind == "phones":
            return bool({phone_normalize(text), phone_e164(text)} - {""} & self.phones)
        return text.isdigit() and int(text) in self.customer_ids


def _forms(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1]}


def person_keys(*, customer_ids: list[int]) -> PersonKeys:
    """The keys of these profiles (a customer and the profiles merged into it), read before an
    erasure deletes their identities."""
    by_kind: dict[str, set[str]] = {kind: set() for kind in IdentityKind.values}
    for kind, value in Identity.objects.filter(customer_id__in=customer_ids).values_list("kind", "value"):
        by_kind.setdefault(kind, set()).add(value)
    for external_id, email, phone in Customer.objects.filter(pk__in=customer_ids).values_list(
            "external_id", "email", "phone"):
        by_kind[IdentityKind.USER_ID].add(external_id)
        by_kind[IdentityKind.EMAIL].add(email)
        by_kind[IdentityKind.PHONE].add(phone)
    phones = {form for p in by_kind[IdentityKind.PHONE] for form in (phone_normalize(p), phone_e164(p))}
    return PersonKeys(ids=frozenset((by_kind[IdentityKind.USER_ID] | by_kind[IdentityKind.ANONYMOUS_ID]) - {""}),
                      emails=frozenset({e.strip().lower() for e in by_kind[IdentityKind.EMAIL]} - {""}),
                      phones=frozenset(phones - {""}), customer_ids=frozenset(customer_ids))


# --------------------------------------------------------------------------- retention


class JSONWithout(Func):
    """A JSON object without some of its keys, worked out by the database (no row is read)."""

    output_field = JSONField()

    def __init__(self, expression, keys: tuple[str, ...]) -> None:
        super().__init__(expression)
        self.keys = keys

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql} - %s::text[])", [*params, list(self.keys)]

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"json_remove({sql}, {', '.join(['%s'] * len(self.keys))})", [*params, *(f"$.{k}" for k in self.keys)]


def job_inputs_purge(*, now: datetime | None = None, budget_s: float = 5.0) -> int:
    """Delete the inputs of jobs finished more than JOB_INPUT_KEEP_DAYS days ago (the history
    housekeeping, every few minutes): a batch of jobs per statement, set-based, oldest first
    (job_finished_idx), within `budget_s`. Returns how many jobs lost their input."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.JOB_INPUT_KEEP_DAYS)
    finished = Job.objects.filter(finished_at__lt=cutoff)
    kept = [(finished.filter(kind__in=IMPORT_KINDS).exclude(input_text=""), {"input_text": ""}),
            (finished.filter(kind=JobKind.TRIGGER, params__has_key="recipients"),
             {"params": JSONWithout(F("params"), TRIGGER_INPUT_KEYS)})]
    deadline, purged = time.monotonic() + budget_s, 0
    for jobs, cleared in kept:
        while time.monotonic() < deadline:
            ids = list(jobs.order_by("finished_at").values_list("pk", flat=True)[:PURGE_BATCH])
            if ids:
                purged += Job.objects.filter(pk__in=ids).update(**cleared)
            if len(ids) < PURGE_BATCH:
                break
    return purged


# --------------------------------------------------------------------------- erasure


def job_inputs_erase(*, keys: PersonKeys) -> dict[str, int]:
    """Take the person out of every job input still kept (called inside the erasure, after it
    locked the person's profiles): their rows of uploads and their entries of API triggers are
    emptied in place; the client's idempotency key (and request fingerprint) of any job about
    them, if stored before those were keyed digests, is digested. Returns what was emptied."""
    uploads = keys.found_in("input_text")
    rows = _rewrite(Job.objects.filter(kind__in=IMPORT_KINDS).exclude(input_text="").filter(uploads) if uploads else None,
                    erase=lambda job: _upload_without(job, keys))
    named = keys.found_in("params_text")
    for pk in keys.customer_ids:  # as both databases print a JSON number after its key
        named |= Q(params_text__contains=f'"customer_id": {pk},') | Q(params_text__contains=f'"customer_id": {pk}}}')
    triggers = Job.objects.filter(kind=JobKind.TRIGGER, params__has_key="recipients").annotate(
        params_text=Cast("params", TextField())).filter(named) if named else None
    recipients = _rewrite(triggers, erase=lambda job: _recipients_without(job, keys))
    about = Job.objects.filter(Q(params__customer_id__in=sorted(keys.customer_ids)) | Q(pk__in=recipients["jobs"]))
    for pk, key in (about.filter(idempotency_key__isnull=False).exclude(idempotency_key__contains=f":{KEY_DIGEST_MARK}")
                    .values_list("pk", "idempotency_key")):
        Job.objects.filter(pk=pk).update(idempotency_key=idempotency_key_hidden(key))
    return {"import_rows": rows["emptied"], "trigger_recipients": recipients["emptied"]}


def _rewrite(jobs, *, erase) -> dict:
    """Lock each job of `jobs` (by id: concurrent erasures of two people of one file must not
    undo each other) and store what `erase(job)` changed: (fields to update, entries emptied)."""
    found = {"emptied": 0, "jobs": []}
    if jobs is None:
        return found
    for pk in jobs.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=pk).only("pk", "input_text", "params", "request_hash").first()
            changes, emptied = erase(job)
            if emptied:
                Job.objects.filter(pk=pk).update(**changes)
                found["emptied"] += emptied
                found["jobs"].append(pk)
    return found


def _upload_without(job: Job, keys: PersonKeys) -> tuple[dict, int]:
    text, emptied = input_without(job.input_text, keys)
    return {"input_text": text}, emptied


def _recipients_without(job: Job, keys: PersonKeys) -> tuple[dict, int]:
    params = job.params
    if not isinstance(params, dict) or not isinstance(params.get("recipients"), list):
        return {}, 0
    recipients = [{} if keys.named_by(r, RECIPIENT_FIELDS) else r for r in params["recipients"]]
    emptied = sum(1 for old, new in zip(params["recipients"], recipients) if new is not old)
    changes: dict[str, Any] = {"params": {**params, "recipients": recipients}}
    if len(job.request_hash) == LEGACY_FINGERPRINT_CHARS:  # a bare hash of the request as it was: keyed
        request = {k: v for k, v in params.items() if k != "version_id"}  # as workflow_trigger fingerprints it
        if request_matches(job.request_hash, request):
            changes["request_hash"] = request_fingerprint(request)
    return changes, emptied


def input_without(text: str, keys: PersonKeys) -> tuple[str, int]:
    """An uploaded file (CSV, a JSON list or JSON lines, as `journeys.services.jobs._records` reads
    it) with the rows that name the person emptied, and how many; every other row stays as it was
    written. A file that cannot be read row by row is dropped whole (it named the person; the
    job failed on it or will)."""
    stripped = text.lstrip("\ufeff").strip()
    try:
        if stripped.startswith("["):
            rows = json.loads(stripped)
            if not isinstance(rows, list):
                raise ValueError("not a list")
            kept = [{} if keys.named_by(row, ROW_FIELDS) else row for row in rows]
            emptied = sum(1 for old, new in zip(rows, kept) if new is not old)
            return (json.dumps(kept, ensure_ascii=False) if emptied else text), emptied
        if stripped.startswith("{"):
            return _json_lines_without(text, keys)
        return _csv_without(text, keys)
    except (ValueError, RecursionError, csv.Error):
        return "", 1


def _json_lines_without(text: str, keys: PersonKeys) -> tuple[str, int]:
    pieces, emptied = re.split(r"(\r\n|\r|\n)", text), 0
    lowered = {t.lower() for t in keys.texts()}
    for i in range(0, len(pieces), 2):  # even pieces are lines, odd ones their line ends
        line = pieces[i]
        if not line.strip():
            continue
        try:
            names = keys.named_by(json.loads(line.lstrip("\ufeff")), ROW_FIELDS)
        except (ValueError, RecursionError):  # a broken line (rejected by the job): by its text
            names = any(t in line.lower() for t in lowered)
        if names:
            pieces[i], emptied = "{}", emptied + 1
    return ("".join(pieces) if emptied else text), emptied


def _csv_without(text: str, keys: PersonKeys) -> tuple[str, int]:
    """CSV rows naming the person become rows of empty cells (`"",,,`: read as a row with no user
    id, rejected by its number, never skipped), a record spanning lines keeping its line ends
    inside the first cell's quotes, so the following rows keep their line and row numbers. The rest of the file is kept byte for byte: the
    reader is fed line by line and each row's lines are taken as they were."""
    consumed: list[str] = []

    def lines():
        for line in io.StringIO(text):  # as `_records` reads it: split at "\n" only
            consumed.append(line)
            yield line

    delimiter = csv_delimiter(text)
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(lines(), delimiter=delimiter)
    header = [name.lstrip("\ufeff").strip() for name in next(reader, [])]
    out, emptied = ["".join(consumed)], 0
    consumed.clear()
    for cells in reader:
        raw = "".join(consumed)
        consumed.clear()
        if keys.named_by(dict(zip(header, cells)), ROW_FIELDS):
            body = raw.rstrip("\r\n")  # one record still (its line ends inside the quotes): rows keep their numbers
            raw = '"' + "\n" * body.count("\n") + '"' + delimiter * (max(len(header), 1) - 1) + raw[len(body):]
            emptied += 1
        out.append(raw)
    out.append("".join(consumed))
    return ("".join(out) if emptied else text), emptied
