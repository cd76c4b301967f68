"""Long operations run as background jobs (django-q2) with progress and a stored result.

`job_start` checks who may run what, stores the job and enqueues `run_job` after commit;
`run_job` (the q2 task) reloads the row and calls the service of the job's kind, which
reports progress as it goes. The work itself is done by existing services: ingestion
(`events_parse` / `event_ingest`) for imports, `version_replay` for dry-run replays and the
channels app's `customer_export_write` for data-subject exports (stored in JobChunk rows).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import time
from collections import Counter
from datetime import datetime, timedelta
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.db.models.fields.json import KT
from django.db.models.functions import Length
from django.utils import timezone
from django.utils.module_loading import import_string

from journeys.errors import EventValidationError, JourneyError, PermissionDenied, PayloadTooLarge
from journeys.services.csv_files import CSV_DELIMITERS, csv_delimiter
from journeys.services.event_parsing import MAX_DEPTH, nesting_path
from journeys.models import Customer, Job, JobChunk, JobKind, JobStatus, Source, WorkflowVersion
from journeys.models.jobs import IMPORT_KINDS
from journeys.selectors import EDIT, REVIEW, user_can, user_has_global

logger = logging.getLogger(__name__)

IMPORT_BATCH = 500
REPLAY_LIMIT = 1000
MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_ROWS = 100_000
# A data-subject export is personal data: it can be downloaded for a day, then it is dropped.
EXPORT_KEEP = timedelta(hours=24)
DATA_JOB_PERM = "journeys.run_data_jobs"
# The channels app owns the export of everything held about a person; journeys does not import it.
EXPORT_SERVICE = "channels_app.services.privacy.customer_export_write"
# An export is stored in pieces of about this many characters (JobChunk rows; setting JOB_EXPORT_CHUNK_CHARS).
EXPORT_CHUNK_CHARS = 256 * 1024
ERASE_SERVICE = "channels_app.services.privacy.customer_erase"
# The channels app owns consent: a customer import's `consent.*` columns are read and stored by it.
CONSENT_COLUMNS = "channels_app.services.consent_import.ConsentColumns"
# Jobs a person starts from the console; the others are started through the API (api_jobs.py).
CONSOLE_KINDS = (JobKind.IMPORT_CUSTOMERS, JobKind.IMPORT_EVENTS, JobKind.REPLAY, JobKind.EXPORT)
# The box an import's rows start workflows only with (import_history_reason), by kind.
START_WORKFLOWS_LABELS = {JobKind.IMPORT_CUSTOMERS: "Start workflows for these changes",
                          JobKind.IMPORT_EVENTS: "Start workflows for these events"}
# Columns of a customer CSV that fill the profile (every other column becomes a trait).
CUSTOMER_ID_COLUMNS = ("user_id", "userId")
EVENT_COLUMNS = {"user_id": "userId", "userid": "userId", "anonymous_id": "anonymousId",
                 "anonymousid": "anonymousId", "event": "event", "timestamp": "timestamp",
                 "message_id": "messageId", "messageid": "messageId", "type": "type"}
# Columns kept as text even when all digits (so are `*_id` and `*Id` columns).
TEXT_COLUMNS = frozenset({"id", "email", "phone", "timezone", "locale"})


# --------------------------------------------------------------------------- permissions


def job_check_allowed(*, actor: Any, kind: str, params: dict) -> None:
    """Imports and exports: ops admins (`run_data_jobs`). Replays: whoever may edit the workflow
    (a business-unit editor, for the unit's workflows) or review changes."""
    if actor is None or not getattr(actor, "is_active", False):
        raise PermissionDenied("sign in to run a job")
    if kind == JobKind.REPLAY:
        version = WorkflowVersion.objects.select_related("workflow").filter(pk=params.get("version_id")).first()
        if version is None:
            raise JourneyError(f"no workflow version with id {params.get('version_id')!r}", field="version")
        if not (user_can(actor, EDIT, version.workflow) or user_has_global(actor, REVIEW)):
            raise PermissionDenied(f"you may not replay versions of {version.workflow.name}")
        return
    if kind not in CONSOLE_KINDS:
        raise JourneyError(f"unknown job kind {kind!r}", field="kind")
    if not (actor.is_superuser or actor.has_perm(DATA_JOB_PERM)):
        raise PermissionDenied("only ops admins may run bulk imports and data-subject exports")


def job_start(*, kind: str, actor: Any, params: dict | None = None, input_name: str = "",
              input_text: str = "") -> Job:
    """Store a job and hand it to a q2 worker once the transaction commits."""
    params = dict(params or {})
    job_check_allowed(actor=actor, kind=kind, params=params)
    jobs_purge_exports()
    if kind in (JobKind.IMPORT_CUSTOMERS, JobKind.IMPORT_EVENTS):
        if not input_text.strip():
            raise JourneyError("the uploaded file is empty", field="file")
        if "\x00" in input_text:  # PostgreSQL stores no NUL in text: refuse the file, saying where
            line = input_text.count("\n", 0, input_text.index("\x00")) + 1
            raise JourneyError(f"line {line} contains a NUL character (\\u0000); remove it and upload again",
                               field="file")
        if len(input_text.encode("utf-8")) > MAX_INPUT_BYTES:
            raise JourneyError(f"the file is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MB", field="file")
        if not input_text.lstrip("\ufeff").strip().startswith(("[", "{")):
            csv_header_check(input_text, kind=kind)
        if input_text.count("\n") > MAX_ROWS:  # only a file that may be over the limit is counted
            rows = sum(1 for _ in _records(Job(kind=kind, input_text=input_text))[0])
            if rows > MAX_ROWS:
                raise JourneyError(f"the file has {rows} rows; the limit is {MAX_ROWS} per file: split it into "
                                   "smaller files and import them one after the other", field="file")
        if not Source.objects.filter(pk=params.get("source_id")).exists():
            raise JourneyError("choose the source the rows are attributed to", field="source")
    if kind == JobKind.EXPORT and not Customer.objects.filter(pk=params.get("customer_id")).exists():
        raise JourneyError(f"no customer with id {params.get('customer_id')!r}", field="customer")
    with transaction.atomic():
        job = Job.objects.create(kind=kind, params=params, input_name=input_name[:255], input_text=input_text,
                                 created_by=actor)
        job_queue(job.pk)
    return job


def jobs_purge_exports(*, now: datetime | None = None) -> int:
    """Drop the personal data of exports older than EXPORT_KEEP (the summary stays). Called when
    jobs are started or looked at, so no copy outlives its day by more than a page view."""
    cutoff = (now or timezone.now()) - EXPORT_KEEP
    return _drop_exports(Job.objects.filter(finished_at__lt=cutoff), mark="expired")


# What holds an export's copy: its JSON text in JobChunk rows (`export_size` in bytes, `export_chunks`
# rows) or, for exports made before the copy was chunked, the whole of it in `export`.
EXPORT_COPY_KEYS = ("export", "export_size", "export_chunks")
ERASED_EXPORT_KEYS = (*EXPORT_COPY_KEYS, "external_id")  # what an export of an erased customer no longer holds


def jobs_erase_exports(*, customer_ids: list[int]) -> int:
    """Drop the exports of these customers whatever their age (the customer is being erased):
    the copy and the user id it was filed under go; the job and its section counts stay. The
    pieces of an export still being written go too (it keeps none: see `run_job`)."""
    JobChunk.objects.filter(job__kind=JobKind.EXPORT, job__params__customer_id__in=list(customer_ids)).delete()
    return _drop_exports(Job.objects.filter(params__customer_id__in=list(customer_ids)), mark="erased",
                         drop=ERASED_EXPORT_KEYS)


def _drop_exports(jobs, *, mark: str, drop: tuple[str, ...] = EXPORT_COPY_KEYS) -> int:
    dropped = 0
    kept = jobs.filter(kind=JobKind.EXPORT).filter(Q(result__has_key="export") | Q(result__has_key="export_size"))
    for pk, summary in export_summaries(kept).items():
        result = {k: v for k, v in summary.items() if k not in drop and k not in EXPORT_COPY_KEYS}
        with transaction.atomic():
            JobChunk.objects.filter(job_id=pk).delete()
            dropped += Job.objects.filter(pk=pk).update(result={**result, mark: True})
    return dropped


EXPORT_SUMMARY_KEYS = ("customer", "external_id", "sections", "expired", "erased")


def export_summaries(jobs) -> dict[int, dict]:
    """The results of these export jobs without their copy of the personal data: what `_export`
    returns and the marks dropping it adds, and the copy's size (`export_size`, while it is
    kept). The copy can be a hundred megabytes of JSON for a long-lived customer: it is never
    read here (an export made before the copy was chunked is measured in the database)."""
    rows = jobs.values("pk", *(f"result__{key}" for key in (*EXPORT_SUMMARY_KEYS, "export_size")),
                       inline_size=Length(KT("result__export")))
    summaries = {}
    for row in rows:
        summary = {key: row[f"result__{key}"] for key in EXPORT_SUMMARY_KEYS if row[f"result__{key}"] is not None}
        size = row["result__export_size"] if row["result__export_size"] is not None else row["inline_size"]
        if size is not None:
            summary["export_size"] = size
        summaries[row["pk"]] = summary
    return summaries


def job_chunks(job: Job, *, rows: int = 4) -> Iterator[str]:
    """A job's stored result text (an export's JSON), piece by piece in order, reading a few
    pieces at a time: what the downloads stream."""
    seq = 0
    while True:
        texts = list(JobChunk.objects.filter(job_id=job.pk, seq__gte=seq, seq__lt=seq + rows).order_by("seq")
                     .values_list("text", flat=True))
        if not texts:
            return
        yield from texts
        seq += rows


def job_has_chunks(job: Job) -> bool:
    """Whether the job's result is downloaded from its stored pieces (an export with its copy)."""
    return job.kind == JobKind.EXPORT and "export_size" in job.result


# --------------------------------------------------------------------------- the q2 task


def job_progress(*, job: Job, done: int, total: int | None = None, message: str = "") -> None:
    """Record progress where the status page sees it (its own short write, outside the work)."""
    job.progress_done = done
    if total is not None:
        job.progress_total = total
    if message:
        job.message = message[:255]
    Job.objects.filter(pk=job.pk).update(progress_done=job.progress_done, progress_total=job.progress_total,
                                         message=job.message)


def job_queue(job_id: int, *, part: int | None = None) -> None:
    """Hand the job (an import: its part from row index `part`) to a q2 worker once the
    transaction commits."""
    from journeys.engine.queue import task_send_on_commit

    args, name = ((job_id,), f"job-{job_id}") if part is None else ((job_id, part), f"job-{job_id}-{part}")
    task_send_on_commit("journeys.services.jobs.run_job", *args, task_name=name)


def run_job(job_id: int, part: int | None = None) -> str:
    """The q2 task: run one job to its end, or (imports) one bounded part of it. A job that
    already finished is left alone (a retried task does not run twice); imports are idempotent
    anyway (message ids derive from each row's content)."""
    from django_q.exceptions import TimeoutException

    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.finished:
        return "gone" if job is None else job.status
    if job.kind in IMPORT_KINDS:
        return _import_part(job, start=part or 0)
    # One task runs a job: a second one (the sweep queued it again while the first waited in a
    # long queue) finds it taken. A job left running longer than the queue's time limit has no
    # task on it any more (the queue stops every task at that limit), so it may be taken again.
    now = timezone.now()
    free = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING) & (
        Q(started_at__isnull=True) | Q(started_at__lt=now - timedelta(seconds=_task_timeout())))
    if not Job.objects.filter(free, pk=job.pk).update(status=JobStatus.RUNNING, started_at=now):
        return Job.objects.filter(pk=job.pk).values_list("status", flat=True).first() or "gone"
    runner = RUNNERS[job.kind]
    try:
        result = runner(job)
    except TimeoutException:  # a SystemExit: q2 drops the task (ack_failures), so say so on the job
        _job_fail(job.pk, f"stopped by the task queue's time limit ({_task_timeout()} s) before it finished")
        raise
    except Exception as exc:  # noqa: BLE001 - a job reports any failure on its page
        logger.exception("job %s failed", job.pk)
        _job_fail(job.pk, str(exc)[:5000] or type(exc).__name__)
        return JobStatus.FAILED
    with transaction.atomic():
        if job.kind == JobKind.EXPORT and _erased_meanwhile(job.params.get("customer_id")):
            result = {**{k: v for k, v in result.items() if k not in ERASED_EXPORT_KEYS}, "erased": True}
            JobChunk.objects.filter(job_id=job.pk).delete()
        Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, result=result, finished_at=timezone.now(),
                                             message="finished")
    return JobStatus.SUCCEEDED


def _job_fail(job_id: int, error: str, **fields: Any) -> int:
    return Job.objects.filter(pk=job_id).exclude(status__in=(JobStatus.SUCCEEDED, JobStatus.FAILED)).update(
        status=JobStatus.FAILED, error=error, finished_at=timezone.now(), **fields)


def _task_timeout() -> int:
    return int(settings.Q_CLUSTER.get("timeout") or 120)


REQUEUED = "waiting for a worker; queued again at "


def jobs_sweep_stalled(*, now: datetime | None = None) -> dict:
    """Find jobs left `running` by a task that never came back, or left `queued` by a task never handed out (the queue's time limit struck,
    or the worker died and q2 dropped or lost the task): nothing else would ever move them.

    Silence longer than the time limit plus q2's retry delay means no task is on it. An import
    goes on from the part after what it stored (its parts are idempotent), up to
    IMPORT_REQUEUES times; after that, and for the other kinds (one task each), the job fails
    with a message saying what happened and, for an import, how many rows landed.
    Called by the events housekeeping schedule."""
    now = now or timezone.now()
    quiet = timedelta(seconds=_task_timeout() + int(settings.Q_CLUSTER.get("retry") or 0))
    requeued = failed = 0
    # Never started: its task was lost on the way (the broker was down when the job was stored),
    # or waits behind a long queue. Queued again once per quiet period (run_job lets one task run it).
    # The time it was last queued again is kept in its `message` (what the job page shows), not in
    # `result`, which is the job's outcome as the API hands it out.
    stale = Job.objects.filter(status=JobStatus.QUEUED, created_at__lt=now - quiet).values_list("pk", "message")
    for pk, message in stale:
        sent = message.removeprefix(REQUEUED) if message.startswith(REQUEUED) else None
        if sent and now - datetime.fromisoformat(sent) <= quiet:
            continue
        if Job.objects.filter(pk=pk, status=JobStatus.QUEUED).update(message=REQUEUED + now.isoformat()):
            logger.warning("job %s: still queued after %s s, queued again (its task was lost or waits)",
                           pk, int(quiet.total_seconds()))
            job_queue(pk)
            requeued += 1
    running = Job.objects.filter(status=JobStatus.RUNNING).values_list("pk", "kind", "started_at", "result")
    for pk, kind, started_at, result in running.iterator(chunk_size=100):
        state = _import_state(result)
        last = datetime.fromisoformat(state["at"]) if state.get("at") else started_at
        if last is not None and now - last <= quiet:
            continue
        silent = int((now - last).total_seconds()) if last is not None else None
        why = f"no progress for {silent} s" if silent is not None else "it never started"
        if kind in IMPORT_KINDS:
            outcome = _import_resume(pk, why=why + " (the worker timed out or died)", now=now)
            requeued += outcome == "requeued"
            failed += outcome == "failed"
        else:
            failed += _job_fail(pk, f"stopped: {why}; the worker running it timed out (limit "
                                    f"{_task_timeout()} s) or died. Start it again.")
    return {"requeued": requeued, "failed": failed}


def _erased_meanwhile(customer_id: Any) -> bool:
    """Whether the exported customer was erased while the export ran. The row lock orders this
    against the erasure (which locks its profiles first): either the erasure comes first and the
    copy is not kept, or the copy is stored first and the erasure drops it (jobs_erase_exports)."""
    erased = Customer.objects.select_for_update().filter(pk=customer_id).values_list("erased_at", flat=True)
    return next(iter(erased), None) is not None


# --------------------------------------------------------------------------- imports


# How a CSV file's delimiter is named in messages (told from its header line).


def _records(job: Job, *, start: int = 0, offset: int | None = None,
             number: int | None = None) -> tuple[Iterator[tuple[int, Any, int | None]], bool]:
    """The uploaded rows from row index `start` on, read as a stream (none is kept), each with the
    number people know it by and the place in the text after it; and whether the file is JSON.

    A JSON list of objects (rows count from 1), JSON lines (numbered by line), or CSV with a header
    row, separated by commas, semicolons or tabs (told from the header line). A CSV row is numbered
    as a spreadsheet shows it: the header is row 1, each record one row even when a quoted cell
    spans several lines (an empty line is an empty row, skipped). `offset` and `number` (the place
    after row `start - 1` and its number, as an earlier part left them) let a part start reading at
    its own rows instead of reading past the ones before; without them the rows before are read
    and dropped. A CSV cell may be as large as the file: an oversized row is then rejected by its
    number like any other bad row, instead of the csv module failing the whole file."""
    text = job.input_text
    begin = 1 if text.startswith("\ufeff") else 0
    first = next((c for c in itertools.islice(text, begin, None) if not c.isspace()), "")
    if first == "[":  # one document: read whole, then walked
        try:
            data = json.loads(text[begin:])
        except RecursionError:
            raise JourneyError(f"nested more than {MAX_DEPTH} levels deep at {nesting_path(text[begin:])}",
                               field="file") from None
        except ValueError as exc:
            raise JourneyError(f"not valid JSON: {exc}", field="file") from None
        return ((n, row, None) for n, row in itertools.islice(enumerate(data, 1), start, None)), True
    resume = offset is not None and number is not None and start > 0
    where = [offset if resume else begin]
    lines = _lines_from(text, where[0], where)
    if first == "{":
        rows = _json_lines(lines, where, number=number if resume else 0)
        return (rows if resume else itertools.islice(rows, start, None)), True
    delimiter = csv_delimiter(text, begin)
    csv.field_size_limit(max(csv.field_size_limit(), MAX_INPUT_BYTES))
    header_lines = _lines_from(text, begin, [begin])
    header, header_number = _csv_header(csv.reader(header_lines, delimiter=delimiter))
    _csv_header_check(header, kind=job.kind, delimiter=delimiter)
    if not resume:
        where[0] = begin
        lines = _lines_from(text, begin, where)
        reader = csv.reader(lines, delimiter=delimiter)
        _csv_header(reader)
        rows = _csv_rows(reader, header, where, number=header_number, delimiter=delimiter)
        return itertools.islice(rows, start, None), False
    return _csv_rows(csv.reader(lines, delimiter=delimiter), header, where, number=number,
                     delimiter=delimiter), False


def _lines_from(text: str, position: int, where: list[int]) -> Iterator[str]:
    """The text's lines from `position`, split at "\n" only (each keeps its line end); `where[0]`
    is the place after the last line handed out (the csv reader takes no line ahead of a record)."""
    size = len(text)
    while position < size:
        end = text.find("\n", position)
        end = size if end < 0 else end + 1
        where[0] = end
        yield text[position:end]
        position = end


def _json_lines(lines: Iterator[str], where: list[int], *, number: int) -> Iterator[tuple[int, Any, int]]:
    # numbered by the file's own lines, blank ones included; only line ends split (JSON text
    # holds no raw CR or LF, but may hold U+2028, which str.splitlines would also split at)
    for raw in lines:
        pieces = raw.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
        after = where[0] if len(pieces) == 1 else None  # lone CRs: no place a part could start at
        for line in pieces:
            number += 1
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except RecursionError:
                row = _Broken(f"nested more than {MAX_DEPTH} levels deep")
            except ValueError as exc:
                row = _Broken(f"not valid JSON ({exc.msg})")
            yield number, row, after


def _csv_header(reader: Any) -> tuple[list[str], int]:
    """The header row's names and its row number (empty lines before it are rows too)."""
    number = 0
    try:
        for cells in reader:
            number += 1
            if cells:
                return [name.strip() for name in cells], number
    except csv.Error as exc:
        raise JourneyError(f"row {number + 1}: {exc}", field="file") from None
    raise JourneyError("the CSV file has no header row", field="file")


def _csv_rows(reader: Any, header: list[str], where: list[int], *, number: int,
              delimiter: str) -> Iterator[tuple[int, Any, int]]:
    columns = len(header)
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise JourneyError(f"row {number + 1}: {exc}", field="file") from None
        number += 1
        if not cells:  # an empty line: an empty row in a spreadsheet, not a record
            continue
        if len(cells) > columns:
            yield number, _Broken(f"{len(cells)} cells, but the header names {columns} columns (a "
                                  f"{CSV_DELIMITERS[delimiter]} inside a value needs quotes)"), where[0]
            continue
        cells = cells + [None] * (columns - len(cells))
        yield number, {name: value for name, value in zip(header, cells) if name}, where[0]


def csv_header_check(text: str, *, kind: str) -> None:
    """The upload's CSV header, checked before a job is stored: see `_csv_header_check`."""
    begin = 1 if text.startswith("\ufeff") else 0
    delimiter = csv_delimiter(text, begin)
    header, _ = _csv_header(csv.reader(_lines_from(text, begin, [begin]), delimiter=delimiter))
    _csv_header_check(header, kind=kind, delimiter=delimiter)


def _csv_header_check(names: list[str], *, kind: str, delimiter: str) -> None:
    """A header naming a column twice is refused: every row would silently keep only the last
    of its cells. One naming none of the columns the import reads (a file exported with another
    delimiter, or from a tool that calls the id `external_id`) is refused naming what it found:
    otherwise every row would be rejected, each with the same "is required"."""
    seen: dict[str, int] = {}
    for position, name in enumerate((name.strip() for name in names), 1):
        if name and name in seen:
            raise JourneyError(f"the CSV header names the column {name!r} twice (columns {seen[name]} and "
                               f"{position}): rename or remove one", field="file")
        seen.setdefault(name, position)
    if kind == JobKind.IMPORT_CUSTOMERS:
        expected, known = CUSTOMER_ID_COLUMNS, any(name in CUSTOMER_ID_COLUMNS for name in seen)
    elif kind == JobKind.IMPORT_EVENTS:
        expected, known = ("user_id", "anonymous_id", "event"), any(name.lower() in EVENT_COLUMNS for name in seen)
    else:
        return
    if not known:
        found = ", ".join(repr(name) for name in list(seen)[:10]) + (", ..." if len(seen) > 10 else "")
        raise JourneyError(f"the CSV header ({CSV_DELIMITERS[delimiter]}-separated) names none of the columns "
                           f"this import reads: found {found}; expected {', '.join(expected)}. Save the file as "
                           "CSV separated by commas, semicolons or tabs, with a header row naming these columns",
                           field="file")


class _Broken(dict):
    """A line that could not be read: rejected with its reason, never skipped silently."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


def _value(text: Any) -> Any:
    """CSV cells are text: numbers, booleans and JSON objects/lists are read as such."""
    if not isinstance(text, str):
        return text
    value = text.strip()
    if value in ("true", "false"):
        return value == "true"
    if value[:1] in ("{", "[") or value.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # kept as the text it is (too deep to be a value)
            return value
    return value


def _text_column(key: str) -> bool:
    """Ids, email, phone, timezone and locale are text even when they are all digits: a phone
    number read as an integer fills no profile and claims no identity."""
    return key.lower() in TEXT_COLUMNS or key.lower().endswith("_id") or key.endswith("Id")


def _cell(key: str, raw: Any, *, typed: bool = True) -> Any:
    """A value for `key`: text for text columns, else (when `typed`) what the CSV text reads as."""
    if _text_column(key):
        return str(raw).strip() if isinstance(raw, (str, int)) and not isinstance(raw, bool) else raw
    return _value(raw) if typed else raw


def _non_finite(value: Any, path: str = "") -> str | None:
    """Where the first NaN or infinite number is (JSON allows neither, but Python's parser reads
    NaN, Infinity and 1e999): PostgreSQL's jsonb refuses it, failing the whole batch, and SQLite
    drops the row, so such a row is rejected by its path before anything is stored."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "row"
    if isinstance(value, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return None
    return next((found for where, item in items if (found := _non_finite(item, where))), None)


class _ContentIds:
    """Message ids derived from what a row says, not from the job: the same file imported again
    (by another job) gives the same ids, so what is already stored is skipped. Identical rows in
    one file stay apart by their occurrence (the second is `...-2`)."""

    def __init__(self, kind: str) -> None:
        self.kind, self.seen = kind, Counter()

    def digest(self, row: dict) -> str:
        canonical = json.dumps([self.kind, row], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:40]

    def __call__(self, row: dict) -> str:
        digest = self.digest(row)
        self.seen[digest] += 1
        return f"import-{digest}" + (f"-{self.seen[digest]}" if self.seen[digest] > 1 else "")

    def count_before(self, job: Job, *, start: int, rows: list, own_id: Callable[[dict], bool]) -> None:
        """Count the occurrences, in the rows before `start`, of this part's rows (those without
        their own messageId): the file is read again up to there, keeping no row."""
        wanted = {self.digest(row) for row in rows if _readable(row) and not _safe(own_id, row, True)}
        if not wanted or not start:
            return
        records, _ = _records(job)
        for _, row, _ in itertools.islice(records, start):
            if _readable(row) and not _safe(own_id, row, True) and (digest := self.digest(row)) in wanted:
                self.seen[digest] += 1


def _readable(row: Any) -> bool:
    return isinstance(row, dict) and not isinstance(row, _Broken)


def _safe(check: Callable[[dict], bool], row: dict, default: bool) -> bool:
    """`check(row)`, or `default` for a row the check rejects (it is rejected by number later)."""
    try:
        return check(row)
    except (EventValidationError, PayloadTooLarge):
        return default


def _customer_payload(row: dict, *, from_json: bool) -> dict:
    user_id = next((str(row[k]).strip() for k in CUSTOMER_ID_COLUMNS if row.get(k) not in (None, "")), "")
    if not user_id:
        raise EventValidationError("is required", field="user_id")
    given = row.get("traits")
    traits = {k: _cell(k, v, typed=False) for k, v in given.items()} if isinstance(given, dict) else {}
    for key, raw in row.items():
        if key in (*CUSTOMER_ID_COLUMNS, "traits") or raw in (None, "") or _consent_column(key):
            continue
        traits[key] = _cell(key, raw)
    return {"type": "identify", "userId": user_id, "traits": traits}


def _consent_column(key: Any) -> bool:
    """`consent` and `consent.*` columns hold consent (CONSENT_COLUMNS), never a trait."""
    return isinstance(key, str) and (key.strip() == "consent" or key.strip().startswith("consent."))


class _NoConsentColumns:
    """Without the channels app there is no consent to store: a row that sets one is refused."""

    def parse(self, row: dict) -> list:
        if any(_consent_column(key) and value not in (None, "") for key, value in row.items()):
            raise EventValidationError("consent columns need the channels app", field="consent")
        return []


def _consent_columns() -> Any:
    from django.apps import apps

    return import_string(CONSENT_COLUMNS)() if apps.is_installed("channels_app") else _NoConsentColumns()


def _event_payload(row: dict, *, from_json: bool) -> dict:
    shaped = isinstance(row.get("properties"), dict) or "userId" in row or "anonymousId" in row
    if from_json and shaped:
        payload = dict(row)  # a Segment track payload
    else:  # CSV (whatever its headers are called) and flat JSON rows: columns through the table
        payload, properties = {"type": "track"}, {}
        for key, raw in row.items():
            if raw in (None, ""):
                continue
            name = EVENT_COLUMNS.get(key.lower())
            if name:
                payload[name] = str(raw).strip()
            elif key.startswith("properties."):
                properties[key.split(".", 1)[1]] = _cell(key.split(".", 1)[1], raw)
            elif key == "properties":
                if not isinstance(_value(raw), dict):
                    raise EventValidationError("must be a JSON object", field="properties")
                properties.update(_value(raw))
            else:
                properties[key] = _cell(key, raw)
        payload["properties"] = properties
    payload.setdefault("type", "track")
    return payload


def _import_part(job: Job, *, start: int) -> str:
    """One part of an import: rows `start`.. for at most `JOB_IMPORT_PART_ROWS` rows or
    `JOB_IMPORT_PART_SECONDS` (a quarter of the queue's time limit by default), then the next part
    is queued. So no task nears the time limit whatever the file's size, and a part that is lost
    is found by `jobs_sweep_stalled`. The job's progress (next row, counts, rejected rows) is on
    the Job row, saved in the transaction that stores each batch."""
    from django_q.exceptions import TimeoutException

    state = _import_claim(job, start=start)
    if state is None:  # a duplicate delivery of a part that is done or being done
        return JobStatus.RUNNING
    build = _customer_payload if job.kind == JobKind.IMPORT_CUSTOMERS else _event_payload
    try:
        state = _import_rows(job, state=state, build=build)
    except TimeoutException:
        _import_resume(job.pk, why=f"a part was stopped by the task queue's time limit ({_task_timeout()} s)")
        raise
    except Exception as exc:  # noqa: BLE001 - a job reports any failure on its page
        logger.exception("job %s failed", job.pk)
        _job_fail(job.pk, str(exc)[:5000] or type(exc).__name__)
        return JobStatus.FAILED
    if state["next_row"] < state["rows"]:
        job_queue(job.pk, part=state["next_row"])
        return JobStatus.RUNNING
    result = {key: state[key] for key in IMPORT_RESULT_KEYS if key in state}
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, result=result, finished_at=timezone.now(),
                                         message="finished")
    return JobStatus.SUCCEEDED


IMPORT_RESULT_KEYS = ("rows", "imported", "duplicates", "rejected", "rejected_rows", "failed_batches", "source",
                      "parts", "consents")
# How often a stalled import is queued again from where it stopped before it is failed.
IMPORT_REQUEUES = 3


def _import_state(result: Any) -> dict:
    """Where an unfinished import stands: the state its parts keep on the job (next row, counts).
    The previous release kept only counts there (no `next_row`): a job it left unfinished starts
    again from the first row with counts at zero, so the rows it stored count as already stored
    and the counts add up to the rows read."""
    return result if isinstance(result, dict) and result.get("partial") and "next_row" in result else {}


def _import_claim(job: Job, *, start: int) -> dict | None:
    """Take the part starting at row `start`, or None when it is not this part's turn: the job
    is past it (a re-delivered task) or another task took it within the time limit."""
    now = timezone.now()
    with transaction.atomic():
        row = Job.objects.select_for_update().filter(pk=job.pk).first()
        if row is None or row.finished:
            return None
        state = _import_state(row.result)
        if state.get("next_row", 0) != start:
            return None
        taken = state.get("claimed_at")
        if taken and state.get("claimed") == start and now - datetime.fromisoformat(taken) < timedelta(
                seconds=_task_timeout()):
            return None
        state = {"partial": True, "rows": None, "next_row": 0, "imported": 0, "duplicates": 0, "rejected": 0,
                 "consents": 0,
                 "rejected_rows": [], "failed_batches": [], "stored_rows": 0, "parts": 0, "requeued": 0,
                 **state, "claimed": start, "claimed_at": now.isoformat(), "at": now.isoformat()}
        state["parts"] += 1
        Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, result=state,
                                             started_at=row.started_at or now)
    return state


def _import_resume(job_id: int, *, why: str, now: datetime | None = None) -> str:
    """A part stopped before it finished (`why`): queue the job's next part again, or fail it
    saying how many rows landed once it was queued again IMPORT_REQUEUES times."""
    now = now or timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, status=JobStatus.RUNNING).first()
        if job is None:
            return "gone"
        state = _import_state(job.result) or {"next_row": 0, "requeued": 0}
        landed = (f"{state.get('next_row', 0)} of {state.get('rows') or 'the'} rows were processed: "
                  f"{state.get('imported', 0)} imported, {state.get('duplicates', 0)} already stored, "
                  f"{state.get('rejected', 0)} rejected")
        if state.get("requeued", 0) >= IMPORT_REQUEUES:
            _job_fail(job.pk, f"stopped: {why}, {IMPORT_REQUEUES + 1} times. {landed}. Import the file again to "
                              "store the rest (rows already stored are skipped).")
            return "failed"
        # claimed_at goes, so the queued part may start at once; `at` restarts the sweep's clock
        state = {k: v for k, v in state.items() if k not in ("claimed", "claimed_at")}
        state.update(partial=True, requeued=state.get("requeued", 0) + 1, at=now.isoformat())
        Job.objects.filter(pk=job.pk).update(result=state, message=f"resumed: {why}; {landed}"[:255])
        next_row = state.get("next_row", 0)
        job_queue(job_id, part=next_row)
    logger.warning("job %s: %s; queued again from row index %s", job_id, why, next_row)
    return "requeued"


def _import_rows(job: Job, *, state: dict, build: Callable[..., dict]) -> dict:
    """Validate the part's rows (a bad one is rejected with its row number and field) and store
    the good ones batch by batch: each batch is one transaction with the job's progress, so a
    batch is stored whole or not at all and the job knows exactly where it is."""
    from journeys.services.catalog import catalog_apply
    from journeys.services.event_parsing import check_event_size, check_storable_text
    from journeys.services.ingest import event_ingest, events_parse

    source = Source.objects.get(pk=job.params["source_id"])
    total, start = state.get("rows"), state["next_row"]
    if total is None:  # the first part counts the rows (reading, keeping none)
        records, _ = _records(job)
        total = sum(1 for _ in records)
        if total > MAX_ROWS:
            raise JourneyError(f"{total} rows; the limit is {MAX_ROWS} per file", field="file")
    state.update(rows=total, source=source.name)
    part_rows = max(1, int(getattr(settings, "JOB_IMPORT_PART_ROWS", 5000)))
    part_seconds = float(getattr(settings, "JOB_IMPORT_PART_SECONDS", 0) or _task_timeout() / 4)
    deadline = time.monotonic() + part_seconds
    received = timezone.now()
    end = min(total, start + part_rows)
    records, from_json = _records(job, start=start, offset=state.get("offset"), number=state.get("number"))
    rows = list(itertools.islice(records, end - start))  # this part's rows only
    message_id = _ContentIds(job.kind)
    message_id.count_before(job, start=start, rows=[row for _, row, _ in rows],
                            own_id=lambda row: build(row, from_json=from_json).get("messageId") not in (None, ""))
    consents = _consent_columns() if job.kind == JobKind.IMPORT_CUSTOMERS else None
    history = import_history_reason(job)
    position = start
    job_progress(job=job, done=start + state["stored_rows"], total=2 * total - state["rejected"],
                 message=f"rows {start + 1} to {end} of {total}")
    while position < end and (position == start or time.monotonic() < deadline):
        batch_end = min(end, position + IMPORT_BATCH)
        good, rejected = [], []
        for number, row, _ in rows[position - start:batch_end - start]:
            try:
                if isinstance(row, _Broken):
                    raise EventValidationError(row.reason, field="row")
                if not isinstance(row, dict):
                    raise EventValidationError("must be an object", field="row")
                payload = build(row, from_json=from_json)
                if payload.get("messageId") in (None, ""):  # the row's own messageId wins
                    payload["messageId"] = message_id(row)
                if where := _non_finite(payload):
                    raise EventValidationError("not a finite number", field=where)
                check_storable_text(payload, field="")  # NUL, lone surrogates: named by their field
                check_event_size(payload, max_bytes=settings.EVENT_API["MAX_EVENT_BYTES"], prefix="")
                parsed = events_parse(payloads=[payload], received_at=received)
                for where, why in parsed[0].extra.get("unreadable", ()):  # a phone no one can dial: fix the file
                    raise EventValidationError(why, field=where)
                catalog_apply(policy=source.schema_policy, events=parsed)
                choices = consents.parse(row) if consents is not None else []
            except (EventValidationError, PayloadTooLarge) as exc:
                rejected.append({"row": number, "field": _row_field(exc.field or "", kind=job.kind, from_json=from_json),
                                 "error": exc.message})
            else:
                good.append((number, parsed[0], choices))
        step = dict(state)
        step.update(next_row=batch_end, rejected=state["rejected"] + len(rejected),
                    rejected_rows=(state["rejected_rows"] + rejected)[:1000], stored_rows=state["stored_rows"] + len(good),
                    number=rows[batch_end - start - 1][0], offset=rows[batch_end - start - 1][2],
                    at=timezone.now().isoformat(), requeued=0)  # stalls count only while nothing moves
        try:
            with transaction.atomic():
                outcome = event_ingest(source=source, events=[p for _, p, _ in good], history=history) if good else None
                if outcome is not None:
                    step.update(imported=state["imported"] + outcome.stored,
                                duplicates=state["duplicates"] + outcome.duplicates)
                if any(choices for _, _, choices in good):  # after the ingest: its customers exist now
                    step["consents"] = state.get("consents", 0) + consents.apply(
                        rows=[(p.user_id, choices) for _, p, choices in good], source=f"import job {job.pk}",
                        actor=job.created_by)
                _import_save(job, step)
        except (JourneyError, DatabaseError) as exc:  # the batch's transaction rolled back: none of it is stored
            step.update(imported=state["imported"], duplicates=state["duplicates"], consents=state.get("consents", 0),
                        failed_batches=[*state["failed_batches"],
                                        {"rows": f"{good[0][0]}-{good[-1][0]}", "error": str(exc)[:500]}])
            _import_save(job, step)
        state, position = step, batch_end
    return state


def _row_field(field: str, *, kind: str, from_json: bool) -> str:
    """The field a rejected row is named by: a customer CSV's columns are the identify's traits,
    so `traits.email` is the file's column `email`."""
    if kind == JobKind.IMPORT_CUSTOMERS and not from_json and field.startswith("traits."):
        return field.removeprefix("traits.")
    return field


def import_history_reason(job: Job) -> str:
    """Why an import's rows start no workflow ("" when they may): an import is history (a
    backfill, a migration) unless whoever started it ticked "Start workflows for these events"
    (or "... these changes" for customers). A customer file's rows still set traits and consents,
    and the date triggers read the dates they set; they start no attribute-change or segment-entry
    run, so moving 100,000 customers in does not greet the 10,000 on the pro plan."""
    if job.kind not in IMPORT_KINDS or job.params.get("start_workflows"):
        return ""
    return (f"history: imported by job {job.pk} without \"{START_WORKFLOWS_LABELS[job.kind]}\", "
            "so it started no workflow")


def _import_save(job: Job, state: dict) -> None:
    """The job's place in its file and its counts, with the progress the status page shows:
    a row checked counts one, a good row stored one more."""
    total = state["rows"]
    Job.objects.filter(pk=job.pk).update(result=state, progress_done=state["next_row"] + state["stored_rows"],
                                         progress_total=2 * total - state["rejected"],
                                         message=f"{state['next_row']} of {total} rows: {state['imported']} imported")


# --------------------------------------------------------------------------- replay, export


def _replay(job: Job) -> dict:
    """Replay the recent events of the version's trigger through it and the live version.

    Progress is per replayed event when `version_replay` reports it (`on_progress`), else the job
    moves from 0 to 1 when the replay is done."""
    import inspect

    from journeys.services.governance import version_replay

    version = WorkflowVersion.objects.select_related("workflow").get(pk=job.params["version_id"])
    live = version.workflow.live_version
    baseline = live if live is not None and live.pk != version.pk else None
    days = int(job.params.get("days") or 7)
    options: dict[str, Any] = {"days": days, "limit": int(job.params.get("limit") or REPLAY_LIMIT)}
    job_progress(job=job, done=0, total=1, message=f"replaying the events of the last {days} days")
    if "on_progress" in inspect.signature(version_replay).parameters:
        options["on_progress"] = lambda done, total: job_progress(job=job, done=done, total=total,
                                                                  message=f"event {done} of {total}")
    report = version_replay(proposed=version, baseline=baseline, **options)
    job_progress(job=job, done=max(job.progress_total, 1), total=max(job.progress_total, 1))
    return {**report, "proposed": {**report["proposed"], "workflow": version.workflow.name}}


def _export(job: Job) -> dict:
    """Write the export's JSON into JobChunk rows as the channels app produces it (a page of rows
    at a time), so the worker never holds the whole copy; the result keeps a summary only."""
    customer = Customer.objects.get(pk=job.params["customer_id"])
    job_progress(job=job, done=0, total=1, message=f"collecting everything held about customer #{customer.pk}")
    JobChunk.objects.filter(job_id=job.pk).delete()  # a task run again writes the copy anew
    writer = _ChunkWriter(job.pk)
    sections = import_string(EXPORT_SERVICE)(customer=customer, write=writer.write)
    writer.flush()
    job_progress(job=job, done=1)
    return {"customer": customer.pk, "external_id": customer.external_id, "sections": sections,
            "export_size": writer.size, "export_chunks": writer.seq}


class _ChunkWriter:
    """Collects written text and stores it as numbered JobChunk rows of about EXPORT_CHUNK_CHARS."""

    def __init__(self, job_id: int) -> None:
        self.job_id, self.seq, self.size = job_id, 0, 0
        self.parts: list[str] = []
        self.buffered = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.buffered += len(text)
        self.size += len(text.encode("utf-8"))
        if self.buffered >= getattr(settings, "JOB_EXPORT_CHUNK_CHARS", EXPORT_CHUNK_CHARS):
            self.flush()

    def flush(self) -> None:
        if self.parts:
            JobChunk.objects.create(job_id=self.job_id, seq=self.seq, text="".join(self.parts))
            self.seq, self.parts, self.buffered = self.seq + 1, [], 0


def _erase(job: Job) -> dict:
    """Erasure requested through the API: the same service as `manage.py erase_customer`. A
    customer merged into another since the request is the survivor now (the API's lookup)."""
    from journeys.services.customers_api import customer_get

    customer = customer_get(pk=job.params["customer_id"])
    job_progress(job=job, done=0, total=1, message=f"erasing customer #{customer.pk}")
    record = import_string(ERASE_SERVICE)(customer=customer, actor=job.params.get("actor") or "api",
                                          reason=job.params.get("reason") or "")
    job_progress(job=job, done=1)
    return {"customer": customer.pk, "erasure_record": record.pk, "counts": record.counts}


def _trigger(job: Job) -> dict:
    from journeys.services.triggers import trigger_job_run

    return trigger_job_run(job=job)


RUNNERS: dict[str, Callable[[Job], dict]] = {
    JobKind.REPLAY: _replay,
    JobKind.EXPORT: _export,
    JobKind.ERASE: _erase,
    JobKind.TRIGGER: _trigger,
}
