"""Date-attribute triggers (birthdays, anniversaries, renewals) at a cost that follows what is due.

Each customer's next due moment per live date trigger is precomputed into `DateTriggerDue`
(version, customer, local date, due_at in UTC, end of that local day), so the minute tick
reads only the rows that are due, through the index on `due_at`, whatever the number of
customers. The moments are kept current:

- when a version starts taking entries (published, or made a canary), the tick queues every
  customer who has the trait (one INSERT ... SELECT) and marks the version prepared;
- when a customer's watched trait, timezone or merge state changes, a database trigger on the
  customer table queues them (`DateTriggerStale`), whatever wrote the row: the event API's
  set-based profile updates, imports, merges, update_profile steps, the admin, erasure;
- the tick drains that queue in pages (SKIP LOCKED), recomputing the queued customers' rows;
- a fired (or missed) occurrence moves to the next one; a one-off date is then removed;
- a version that stops taking entries (retired, its workflow paused) has its rows removed.

An occurrence is the local date `anniversary + offset_days` (yearly) or `date + offset_days`
(one-off), at the trigger's `at` local time in the customer's timezone (an unknown timezone is
UTC); it may fire until the end of that local day, as before (a tick that was down all day does
not send a day late). Feb 29 is celebrated on Feb 28 in common years. A local time that the
clocks skip (DST spring-forward) is read as Python and PostgreSQL read it (02:30 is 03:30); a
repeated one (fall-back) is its first occurrence. The trigger key `date:<local date>` keeps
an occurrence to one run per customer, however often it is recomputed.
"""

from __future__ import annotations

import logging
import re
import time as monotonic
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone as dt_timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import connection, transaction
from django.db.models.fields.json import KeyTransform

from journeys.choices import TriggerKind
from journeys.engine.batch import ids_in, rows_insert, skip_locked
from journeys.engine.compiled import CompiledVersion, load_version
from journeys.engine.enrolment import Candidate, EnrolmentResult, enroll_candidates
from journeys.models import Customer, DateTriggerDue, DateTriggerStale, TriggerState

STALE_PAGE = 2000
FIRE_PAGE = 1000
MAX_OFFSET_DAYS = 365
logger = logging.getLogger(__name__)
UTC = dt_timezone.utc


@dataclass(frozen=True, slots=True)
class DateRule:
    """A date trigger's settings: {"attribute": "signup_date", "offset_days": 0, "at": "09:00", "yearly": true}."""

    attribute: str
    offset_days: int
    at: time
    yearly: bool

    @classmethod
    def of(cls, config: dict) -> DateRule:
        """Read the settings; a ValueError names the setting to fix."""
        at = config.get("at") or "09:00"
        try:
            digits = at[:2] + at[3:] if isinstance(at, str) and len(at) == 5 and at[2] == ":" else ""
            if not (digits.isascii() and digits.isdigit()):
                raise ValueError
            at_time = time(int(at[:2]), int(at[3:]))
        except ValueError:
            raise ValueError(f"at: {at!r} is not a local time; give HH:MM from 00:00 to 23:59, e.g. 09:00") from None
        offset = config.get("offset_days") or 0
        if isinstance(offset, str) and re.fullmatch(r"-?[0-9]+", offset.strip()):
            offset = int(offset)  # "3", as an older import wrote it
        if isinstance(offset, bool) or not isinstance(offset, int) or not -MAX_OFFSET_DAYS <= offset <= MAX_OFFSET_DAYS:
            raise ValueError(f"offset_days: {offset!r} is not a whole number of days from -{MAX_OFFSET_DAYS} "
                             f"to {MAX_OFFSET_DAYS} (negative: before the date)")
        return cls(attribute=str(config.get("attribute", "")), offset_days=offset, at=at_time,
                   yearly=bool(config.get("yearly", True)))


@lru_cache(maxsize=1024)
def zone_named(name: str | None) -> ZoneInfo:
    """The customer's timezone (an unknown name is UTC, as `customer_zone` reads it)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _as_date(value: object) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _anniversary(anchor: date, year: int) -> date:
    if (anchor.month, anchor.day) == (2, 29):
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)  # celebrate Feb 29 on Feb 28 in common years
    return date(year, anchor.month, anchor.day)


def occurrence_date(value: object, *, rule: DateRule, from_date: date) -> date | None:
    """The customer's local date of the first occurrence on or after `from_date`, or None (no
    valid date, or a one-off date that has passed)."""
    anchor = _as_date(value)
    if anchor is None:
        return None
    offset = timedelta(days=rule.offset_days)
    try:
        if not rule.yearly:
            local = anchor + offset
            return local if local >= from_date else None
        first = (from_date - offset).year
        for year in range(max(anchor.year + 1, first - 1), first + 3):
            local = _anniversary(anchor, year) + offset
            if local >= from_date:
                return local
    except (OverflowError, ValueError):
        return None
    return None


def occurrence_next(value: object, *, rule: DateRule, zone: ZoneInfo, from_date: date) -> tuple[date, datetime, datetime] | None:
    """The first occurrence on or after the local date `from_date`: (local date, due_at UTC,
    expires_at UTC), or None (no valid date, or a one-off date that has passed)."""
    local = occurrence_date(value, rule=rule, from_date=from_date)
    if local is None:
        return None
    try:
        due = datetime.combine(local, rule.at, tzinfo=zone).astimezone(UTC)
        ends = datetime.combine(local + timedelta(days=1), time(0, 0), tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return local, due, ends


@dataclass(slots=True)
class DateVersion:
    version: CompiledVersion
    rule: DateRule
    routing: tuple[int, int, bool] | None


def date_versions(routed: list[tuple[int, tuple[int, int, bool] | None]]) -> dict[int, DateVersion]:
    """The live date triggers; one whose stored settings cannot be read (saved before they were
    checked) is left out with an error in the log, and the others still fire."""
    out = {}
    for vid, routing in routed:
        version = load_version(vid)
        try:
            rule = DateRule.of(version.trigger_config)
        except ValueError as exc:
            logger.error("date trigger of workflow version %s is not run: trigger_config %s", vid, exc)
            continue
        out[vid] = DateVersion(version=version, rule=rule, routing=routing)
    return out



# --------------------------------------------------------------------------- keeping the moments current


def dates_prepare(*, versions: dict[int, DateVersion], now: datetime) -> int:
    """Queue every customer with the trait of a version that just started taking entries, and
    drop the rows of versions that stopped. Returns how many versions were prepared."""
    prepared = 0
    known = dict(TriggerState.objects.filter(version_id__in=list(versions)).values_list("version_id", "prepared_at"))
    for vid, dv in versions.items():
        if known.get(vid) is not None:
            continue
        with transaction.atomic():
            state, _ = TriggerState.objects.select_for_update().get_or_create(version_id=vid)
            if state.prepared_at is not None:
                continue
            _queue_all_with(dv.rule.attribute)
            state.prepared_at = now
            state.save(update_fields=["prepared_at"])
            prepared += 1
    gone = TriggerState.objects.filter(prepared_at__isnull=False, version__trigger_kind=TriggerKind.DATE_ATTRIBUTE).exclude(
        version_id__in=list(versions))
    for vid in gone.values_list("version_id", flat=True):
        with transaction.atomic():
            DateTriggerDue.objects.filter(version_id=vid)._raw_delete(connection.alias)
            TriggerState.objects.filter(version_id=vid).update(prepared_at=None)
    return prepared


def _queue_all_with(attribute: str) -> None:
    query = Customer.objects.filter(merged_into__isnull=True, traits__has_key=attribute).values("pk").query
    sql, params = query.sql_with_params()
    table = DateTriggerStale._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"INSERT INTO {table} (customer_id) {sql} ON CONFLICT DO NOTHING", params)
        else:
            cursor.execute(f"INSERT OR IGNORE INTO {table} (customer_id) {sql}", params)


def _profiles(ids: list[int], attributes: list[str]) -> list[dict]:
    """id, timezone, merge state and the watched traits of these customers, one query."""
    if connection.vendor != "postgresql":
        names = {f"a{i}": KeyTransform(attr, "traits") for i, attr in enumerate(attributes)}
        rows = Customer.objects.filter(pk__in=ids).annotate(**names).values_list(
            "pk", "timezone", "merged_into_id", *names)
    else:
        where, params = ids_in("id", ids)
        picks = "".join(", traits ->> %s" for _ in attributes)  # text: only strings can hold a date
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, timezone, merged_into_id{picks} FROM journeys_customer WHERE {where}",
                           [*attributes, *params])
            rows = cursor.fetchall()
    return [{"pk": row[0], "timezone": row[1], "merged_into_id": row[2], "traits": dict(zip(attributes, row[3:]))}
            for row in rows]


@lru_cache(maxsize=8192)
def _moments(local: date, at: time, zone_name: str) -> tuple[str, str]:
    """(due, end of that local day) in UTC, as the ISO text the bulk insert sends: most customers
    share a few zones and dates."""
    zone = zone_named(zone_name)
    due = datetime.combine(local, at, tzinfo=zone).astimezone(UTC)
    return due.isoformat(), datetime.combine(local + timedelta(days=1), time(0, 0), tzinfo=zone).astimezone(UTC).isoformat()


def _due_rows(profiles: list[dict], versions: dict[int, DateVersion], now: datetime,
              after: dict[tuple[int, int], date] | None = None) -> list[dict]:
    out = []
    today: dict[str, date] = {}
    for profile in profiles:
        if profile["merged_into_id"] is not None:
            continue
        name = profile["timezone"] or "UTC"
        if name not in today:
            today[name] = now.astimezone(zone_named(name)).date()
        for vid, dv in versions.items():
            value = profile["traits"].get(dv.rule.attribute)
            if value is None:
                continue
            start = today[name]
            if after is not None and (vid, profile["pk"]) in after:
                start = max(start, after[(vid, profile["pk"])] + timedelta(days=1))
            local = occurrence_date(value, rule=dv.rule, from_date=start)
            if local is None:
                continue
            try:
                due, ends = _moments(local, dv.rule.at, name)
            except (OverflowError, ValueError):
                continue
            out.append({"version_id": vid, "customer_id": profile["pk"], "occurs_on": local.isoformat(),
                        "due_at": due, "expires_at": ends})
    return out


def _claim_stale(limit: int) -> list[int]:
    """Take (delete) up to `limit` queued customers; SKIP LOCKED, so two ticks take different ones."""
    table = DateTriggerStale._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # = ANY(ARRAY(...)): the page is picked once (an InitPlan) and deleted through the primary key.
            # `customer_id IN (subquery ... FOR UPDATE)` was planned as a rescan of the subquery per row
            # (minutes for 100,000 queued rows), a join as a scan of the whole queue per page.
            cursor.execute(f"DELETE FROM {table} WHERE customer_id = ANY(ARRAY(SELECT customer_id FROM {table} "
                           f"ORDER BY customer_id LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING customer_id", [limit])
            return sorted(row[0] for row in cursor.fetchall())
        cursor.execute(f"SELECT customer_id FROM {table} ORDER BY customer_id LIMIT %s", [limit])
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            where, params = ids_in("customer_id", ids)
            cursor.execute(f"DELETE FROM {table} WHERE {where}", params)
        return ids


def _drop_due(column: str, ids: list[int]) -> None:
    where, params = ids_in(column, ids)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {DateTriggerDue._meta.db_table} WHERE {where}", params)


def dates_refresh_stale(*, versions: dict[int, DateVersion], now: datetime, deadline: float | None = None) -> int:
    """Recompute the due rows of queued customers, page by page; returns how many customers."""
    attributes = sorted({dv.rule.attribute for dv in versions.values()})
    done = 0
    while True:
        with transaction.atomic():
            ids = _claim_stale(STALE_PAGE)
            if not ids:
                return done
            _drop_due("customer_id", ids)
            if versions:
                rows_insert(DateTriggerDue, _due_rows(_profiles(ids, attributes), versions, now))
        done += len(ids)
        if len(ids) < STALE_PAGE or (deadline is not None and monotonic.monotonic() > deadline):
            return done


# --------------------------------------------------------------------------- firing what is due


def dates_fire_due(*, versions: dict[int, DateVersion], now: datetime, deadline: float | None = None) -> EnrolmentResult:
    """Enrol every customer whose occurrence is due (SKIP LOCKED pages), then move each fired or
    missed row to its next occurrence (or remove it)."""
    result = EnrolmentResult()
    attributes = sorted({dv.rule.attribute for dv in versions.values()})
    while True:
        with transaction.atomic():
            rows = list(DateTriggerDue.objects.select_for_update(**skip_locked()).filter(due_at__lte=now)
                        .order_by("due_at").values_list("pk", "version_id", "customer_id", "occurs_on", "expires_at")
                        [:FIRE_PAGE])
            if not rows:
                return result
            profiles = {p["pk"]: p for p in _profiles(sorted({r[2] for r in rows}), attributes)} if versions else {}
            groups: dict[tuple[int, date], list[Candidate]] = defaultdict(list)
            for _pk, vid, customer_id, occurs_on, expires_at in rows:
                profile = profiles.get(customer_id)
                if vid in versions and expires_at > now and profile is not None and profile["merged_into_id"] is None:
                    groups[(vid, occurs_on)].append(Candidate(customer_id=customer_id, trigger_key=f"date:{occurs_on.isoformat()}"))
            for (vid, _), candidates in sorted(groups.items()):
                dv = versions[vid]
                result.add(enroll_candidates(version=dv.version, candidates=candidates, now=now, routing=dv.routing))
            _drop_due("id", [r[0] for r in rows])
            after = {(vid, customer_id): occurs_on for _pk, vid, customer_id, occurs_on, _ in rows if vid in versions}
            if after:
                moved = _due_rows([profiles[c] for c in sorted({c for _, c in after}) if c in profiles],
                                  {vid: versions[vid] for vid, _ in after}, now, after)
                rows_insert(DateTriggerDue, [row for row in moved if (row["version_id"], row["customer_id"]) in after])
        if len(rows) < FIRE_PAGE or (deadline is not None and monotonic.monotonic() > deadline):
            return result
