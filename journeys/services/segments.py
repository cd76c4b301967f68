"""Audiences: which customers a segment rule selects, read page by page.

Used by cron-over-segment and segment triggers, by rule-defined lifecycle stages
and by the management API. Callers walk an audience in ascending id order:

    after = 0
    while ids := segment_customer_ids(rule=rule, now=now, after_id=after):
        ...                      # enrol / update this page
        after = ids[-1]

On PostgreSQL a rule that translates (journeys.rules.sql) is answered by one
statement per page, walking the primary key: a page costs what it returns (plus
the rows it skips), never a read of the whole base into Python. Rows the SQL
cannot decide exactly (see journeys.rules.sql: e.g. dates in unusual ISO forms)
are re-checked here in Python. Anything else is evaluated in Python over pages of
customers. `segment_plan` says which path a rule takes (for the admin, the docs
and the tests).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Max, Min
from django.utils import timezone

from journeys.models import Customer
from journeys.rules import RuleContext, compile_rule
from journeys.rules.sql import (
    INT,
    NULL,
    STR,
    TS,
    Alt,
    Builder,
    NotTranslatable,
    Translation,
    Val,
    translate,
)

logger = logging.getLogger(__name__)

Plan = Literal["sql", "python"]

PAGE = 1000  # customers read per Python page

# What profile_dict reads: loading only these keeps a page small.
PROFILE_FIELDS = (
    "id",
    "external_id",
    "email",
    "phone",
    "timezone",
    "locale",
    "traits",
    "first_seen",
    "created_at",
    "last_seen",
    "last_engaged_at",
    "stage",
)


class CustomerProfile:
    """`profile.*` on `journeys_customer AS c`, exactly as runtime.profile_dict builds it:
    stored traits, overridden by the customer's columns and computed attributes."""

    keys = frozenset(
        {
            "user_id",
            "email",
            "phone",
            "timezone",
            "locale",
            "first_seen",
            "last_seen",
            "last_engaged_at",
            "tenure_days",
            "days_since_last_seen",
            "ltv",
        }
    )

    def traits(self) -> str:
        return "c.traits"

    def event_count(self, name: str, since: str, floor: str | None = None) -> str:
        return f"SELECT count(*) {self._events(name, since, floor)}"

    def event_first(self, name: str, since: str, floor: str | None = None) -> str:
        return f"SELECT min(ev.timestamp) {self._events(name, since, floor)}"

    @staticmethod
    def _events(name: str, since: str, floor: str | None) -> str:
        """The row's events of that name since then; from the floor id on, when there is one (the
        partitions of older events skipped: journeys.services.event_storage.events_id_floor)."""
        from journeys.models import Event

        return (f"FROM {Event._meta.db_table} AS ev WHERE ev.customer_id = c.id AND ev.name = {name}"
                f" AND ev.timestamp >= {since}" + (f" AND ev.id >= {floor}" if floor else ""))

    def attribute(self, key: str, tr: Builder) -> Val:
        if key == "user_id":
            return Val((Alt(STR, None, "c.external_id"),))
        if key in ("email", "phone"):  # the column, else the trait
            return tr.jsonb(
                f"(CASE WHEN c.{key} <> '' THEN to_jsonb(c.{key}) ELSE c.traits -> '{key}' END)"
            )
        if key in ("timezone", "locale"):
            return Val((Alt(STR, None, f"c.{key}"),))
        if key == "first_seen":
            return Val((Alt(TS, None, "COALESCE(c.first_seen, c.created_at)"),))
        if key in ("last_seen", "last_engaged_at"):
            return _nullable(TS, f"c.{key}", f"c.{key}")
        if key in DAY_COUNTS:
            days = f"floor({self.elapsed(key, tr)})"
            return Val((Alt(INT, None, days),)) if key == "tenure_days" else _nullable(INT, "c.last_seen", days)
        if (
            key == "ltv"
        ):  # profile.setdefault("ltv", traits.get("ltv", traits.get("lifetime_value", 0)))
            return tr.jsonb(
                "(CASE WHEN c.traits ? 'ltv' THEN c.traits -> 'ltv'"
                " WHEN c.traits ? 'lifetime_value' THEN c.traits -> 'lifetime_value' ELSE '0'::jsonb END)"
            )
        name = tr.param(key, "text")
        return tr.jsonb(f"(c.traits -> {name})", f"(c.traits ->> {name})")


    def elapsed(self, key: str, tr: Builder) -> str:
        """The days (with fraction) a whole-day attribute counts, before rounding down (timedelta.days)."""
        moment = DAY_COUNTS[key]
        return f"((extract(epoch FROM {tr.now_sql()}) - extract(epoch FROM {moment})) / 86400)"


DAY_COUNTS = {"tenure_days": "COALESCE(c.first_seen, c.created_at)", "days_since_last_seen": "c.last_seen"}


def _nullable(cat: str, column: str, expr: str) -> Val:
    return Val((Alt(NULL, f"{column} IS NULL"), Alt(cat, f"{column} IS NOT NULL", expr)))


PROFILE = CustomerProfile()


def segment_translation(
    *, rule: str, now: datetime | None = None, prefix: str = "", due: bool = False
) -> Translation | None:
    """The rule as SQL on this database, or None when it is evaluated in Python. `due`: with
    the moment each row's answer may next change with time alone (Translation.due).

    Raises RuleSyntaxError for a rule that does not compile.
    """
    compile_rule(rule)
    if not _sql_capable():
        return None
    try:
        return translate(rule, now=utc(now or timezone.now()), profile=PROFILE, prefix=prefix, due=due)
    except NotTranslatable:
        return None


def segment_plan(rule: str) -> Plan:
    """ "sql" when the database selects the customers, "python" when pages are evaluated here.

    An empty rule (everyone) is plain SQL on every database.
    """
    if not rule.strip():
        return "sql"
    return "sql" if segment_translation(rule=rule) is not None else "python"


def segment_customer_ids(
    *, rule: str, now: datetime, after_id: int = 0, limit: int = 5000
) -> list[int]:
    """Ascending ids (> after_id, at most `limit`) of unmerged customers the rule selects.

    An empty rule selects everyone. A list shorter than `limit` means the audience
    is exhausted. Raises RuleSyntaxError for a rule that does not compile.
    """
    now = utc(now)
    if limit <= 0:
        return []
    if not rule.strip():
        return list(
            Customer.objects.filter(merged_into__isnull=True, erased_at__isnull=True, pk__gt=after_id)
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
    translation = segment_translation(rule=rule, now=now)
    if translation is not None:
        try:
            return _sql_page(translation, now=now, after_id=after_id, limit=limit)
        except DatabaseError:  # a translation bug must not stop a campaign: say so, use Python
            logger.exception("segment SQL failed; evaluating in Python: %s", rule)
    return _python_page(rule=rule, now=now, after_id=after_id, limit=limit)


COUNT_TIMEOUT_MS = 5000  # a count that takes longer is given up (SEGMENT_COUNT_TIMEOUT_MS overrides it)
PYTHON_BUDGET = 20_000  # customers a count evaluates in Python at most; beyond, it samples
MIN_TIMEOUT_MS = 50  # what a statement is given at least, once the time is (almost) spent


def count_timeout_ms() -> int:
    """How long a segment count may take in all (statements and Python together), in milliseconds."""
    return int(getattr(settings, "SEGMENT_COUNT_TIMEOUT_MS", COUNT_TIMEOUT_MS))


@dataclass
class SegmentSize:
    """How many customers a segment rule selects now, as `segment_customer_ids` would walk them.
    `exact` False: estimated from `checked` of `base` customers (a Python-evaluated rule over a
    large base, or more rows than the budget left to Python by the SQL); `stopped`: the time limit
    ended the Python check before its sample did, the estimate is from the `checked` ones (random
    either way); `count` None: the count took longer than the time limit (`timeout_ms`)."""

    rule: str
    count: int | None
    exact: bool
    plan: Plan
    base: int = 0  # unmerged, not erased customers
    checked: int = 0  # customers evaluated in Python
    stopped: bool = False
    timeout_ms: int = COUNT_TIMEOUT_MS


class _Deadline:
    """The time a count has left: statements get what remains (PostgreSQL's statement timeout),
    Python checks stop between pages once it is spent."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.end = time.monotonic() + timeout_ms / 1000

    def left_ms(self) -> int:
        return max(MIN_TIMEOUT_MS, int((self.end - time.monotonic()) * 1000))

    def spent(self) -> bool:
        return time.monotonic() >= self.end


def segment_size(*, rule: str, now: datetime, budget: int | None = None,
                 timeout_ms: int | None = None) -> SegmentSize:
    """Count the audience a segment rule selects now, with the segment code the engine enrols
    with and a bounded cost: on PostgreSQL, a rule that translates is counted by one statement
    (the rows it cannot decide re-checked here, at most `budget` of them picked at random, the rest
    estimated in proportion); anything else is evaluated in Python, over every customer when there
    are at most `budget`, else over a random sample of `budget` (_random_pages) and estimated. The
    whole count takes at most `timeout_ms` (count_timeout_ms()) and about one page more: a random
    check the limit stops is an estimate from the customers checked by then, a full walk it stops
    (not random) gives up. Raises RuleSyntaxError for a rule that does not compile."""
    now = utc(now)
    budget = PYTHON_BUDGET if budget is None else budget
    deadline = _Deadline(count_timeout_ms() if timeout_ms is None else timeout_ms)
    base = Customer.objects.filter(merged_into__isnull=True, erased_at__isnull=True)
    if not rule.strip():
        count = _bounded(lambda: base.count(), deadline)
        return SegmentSize(rule=rule, count=count, exact=count is not None, plan="sql", base=count or 0,
                           timeout_ms=deadline.timeout_ms)
    translation = segment_translation(rule=rule, now=now)
    if translation is not None:
        try:
            return _sql_size(translation, now=now, budget=budget, deadline=deadline)
        except DatabaseError:  # as segment_customer_ids: a translation bug falls back to Python
            logger.exception("segment SQL count failed; evaluating in Python: %s", rule)
    return _python_size(rule=rule, now=now, budget=budget, base=base, deadline=deadline)


def _bounded(count: Callable[[], int], deadline: _Deadline) -> int | None:
    """`count()`, or None when PostgreSQL gives it up after the time left (statement timeout)."""
    if connection.vendor != "postgresql":
        return count()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = %s", [deadline.left_ms()])
            return count()
    except OperationalError as exc:  # QueryCanceled: the timeout
        if "statement timeout" not in str(exc):
            raise
        return None


def _matching_until(*, rule: str, now: datetime, pages: Iterable[list[Customer]],
                    deadline: _Deadline) -> tuple[int, int, bool]:
    """(matched, checked, stopped): the customers of `pages` the rule selects, page by page until
    the pages end or the time is spent (`stopped`)."""
    matched = checked = 0
    for page in pages:
        if deadline.spent():
            return matched, checked, True
        checked += len(page)
        matched += len(customers_matching(rule=rule, now=now, customers=page))
    return matched, checked, False


def _sql_size(translation: Translation, *, now: datetime, budget: int, deadline: _Deadline) -> SegmentSize:
    state, selected = _sql_selected(translation)
    params = {**translation.params, "after": 0}

    def count() -> int:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FILTER (WHERE {state} = 2), count(*) FILTER (WHERE {state} <> 2)"
                           f"{selected}", params)
            return cursor.fetchone()

    counted = _bounded(count, deadline)
    if counted is None:
        return SegmentSize(rule=translation.text, count=None, exact=False, plan="sql", timeout_ms=deadline.timeout_ms)
    sure, unsure = counted
    if not unsure:
        return SegmentSize(rule=translation.text, count=sure, exact=True, plan="sql", timeout_ms=deadline.timeout_ms)

    def ids_at_random():  # the rows the SQL leaves to Python, in a random order: re-checked as _sql_page does
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT c.id{selected} AND {state} <> 2 ORDER BY md5(c.id::text) LIMIT %(limit)s",
                           {**params, "limit": budget})
            return [row[0] for row in cursor.fetchall()]

    ids = _bounded(ids_at_random, deadline)
    if ids is None:
        return SegmentSize(rule=translation.text, count=None, exact=False, plan="sql", timeout_ms=deadline.timeout_ms)
    pages = (list(Customer.objects.filter(pk__in=ids[start:start + PAGE]).only(*PROFILE_FIELDS))
             for start in range(0, len(ids), PAGE))
    matched, checked, stopped = _matching_until(rule=translation.text, now=now, pages=pages, deadline=deadline)
    if ids and not checked:
        return SegmentSize(rule=translation.text, count=None, exact=False, plan="sql", stopped=True,
                           timeout_ms=deadline.timeout_ms)
    estimate = round(matched * unsure / checked) if checked else 0
    return SegmentSize(rule=translation.text, count=sure + estimate, exact=checked == unsure, plan="sql",
                       checked=checked, stopped=stopped, timeout_ms=deadline.timeout_ms)


def _python_size(*, rule: str, now: datetime, budget: int, base, deadline: _Deadline) -> SegmentSize:
    total = _bounded(lambda: base.count(), deadline)
    if total is None:
        return SegmentSize(rule=rule, count=None, exact=False, plan="python", timeout_ms=deadline.timeout_ms)
    walk = total <= budget  # every customer, by id: a walk the time stops is no sample, so it gives up
    pages = _id_pages(base) if walk else _random_pages(base, total=total, budget=budget)
    matched, checked, stopped = _matching_until(rule=rule, now=now, pages=pages, deadline=deadline)
    if stopped and (walk or not checked):
        return SegmentSize(rule=rule, count=None, exact=False, plan="python", base=total, checked=checked,
                           stopped=True, timeout_ms=deadline.timeout_ms)
    exact = checked == total
    count = matched if exact else (round(matched * total / checked) if checked else 0)
    return SegmentSize(rule=rule, count=count, exact=exact, plan="python", base=total, checked=checked,
                       stopped=stopped, timeout_ms=deadline.timeout_ms)


def _id_pages(base) -> Iterator[list[Customer]]:
    last = 0
    while page := list(base.filter(pk__gt=last).order_by("pk").only(*PROFILE_FIELDS)[:PAGE]):
        last = page[-1].pk
        yield page


SAMPLE_DRAWS = 10  # ids drawn at most per customer of the budget (gaps in the ids: merged, erased, deleted)


def _random_pages(base, *, total: int, budget: int) -> Iterator[list[Customer]]:
    """At most `budget` customers of `base`, each as likely as any other: ids drawn at random between the
    lowest and the highest, those that are customers of `base` kept (in the order drawn). One primary-key
    probe per drawn id, so the cost follows the budget, not the base; and data that repeats in step with
    the ids (bulk imports cycling through plans or regions) is sampled as it is. The draw is seeded by
    the base's bounds and size: the same base gives the same estimate on every page load."""
    bounds = base.aggregate(lo=Min("pk"), hi=Max("pk"))
    if bounds["lo"] is None:
        return
    lo, hi = bounds["lo"], bounds["hi"]
    span = hi - lo + 1
    rng = random.Random(f"{lo}:{hi}:{total}")
    drawn = rng.sample(range(lo, hi + 1), min(span, SAMPLE_DRAWS * budget, -(-budget * span * 5 // (4 * total))))
    kept = 0
    for start in range(0, len(drawn), PAGE):
        ids = drawn[start:start + PAGE]
        found = {c.pk: c for c in base.filter(pk__in=ids).only(*PROFILE_FIELDS)}
        page = [found[pk] for pk in ids if pk in found][:budget - kept]
        kept += len(page)
        if page:
            yield page
        if kept >= budget:
            return


def customers_matching(
    *, rule: str, now: datetime, customers: Iterable[Customer]
) -> list[Customer]:
    """The given (already loaded) customers the rule selects, evaluated in Python."""
    compiled = compile_rule(rule)
    return [
        c
        for c, ctx in customer_rule_contexts(customers=customers, now=now)
        if compiled.evaluate(ctx).value
    ]


def customer_rule_contexts(
    *, customers: Iterable[Customer], now: datetime
) -> Iterator[tuple[Customer, RuleContext]]:
    """What a segment rule sees of each customer of a page: the profile, the clock, and
    events_in_last() answered for the whole page at once."""
    from journeys.engine.runtime import profile_dict

    page = list(customers)
    counter = _PageEventCounter([c.pk for c in page])
    for customer in page:
        yield (
            customer,
            RuleContext(
                profile=profile_dict(customer, now),
                now=now,
                events_in_last=counter.for_customer(customer.pk),
            ),
        )


def _sql_selected(translation: Translation) -> tuple[str, str]:
    """(the row's state, FROM ... WHERE ...) of the customers the SQL selects or leaves to Python."""
    state = f"({translation.state})"
    return state, (
        f" FROM {Customer._meta.db_table} AS c {' '.join(translation.joins)}"
        f" WHERE c.merged_into_id IS NULL AND c.erased_at IS NULL AND c.id > %(after)s"
        f" AND {translation.prefilter or 'TRUE'}"
        f" AND ({state} & 2) <> 0"
    )


def _sql_page(translation: Translation, *, now: datetime, after_id: int, limit: int) -> list[int]:
    state, selected = _sql_selected(translation)
    sql = f"SELECT c.id, {state}{selected} ORDER BY c.id LIMIT %(limit)s"
    selected: list[int] = []
    last = after_id
    while len(selected) < limit:
        want = limit - len(selected)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, {**translation.params, "after": last, "limit": want})
            rows = cursor.fetchall()
        if not rows:
            break
        unsure = [pk for pk, state in rows if state != 2]
        confirmed: set[int] = set()
        if unsure:
            customers = Customer.objects.filter(pk__in=unsure).only(*PROFILE_FIELDS)
            confirmed = {
                c.pk
                for c in customers_matching(rule=translation.text, now=now, customers=customers)
            }
        selected += [pk for pk, state in rows if state == 2 or pk in confirmed]
        last = rows[-1][0]
        if len(rows) < want:
            break
    return selected


def _python_page(*, rule: str, now: datetime, after_id: int, limit: int) -> list[int]:
    selected: list[int] = []
    last = after_id
    base = Customer.objects.filter(merged_into__isnull=True, erased_at__isnull=True).only(*PROFILE_FIELDS)
    while len(selected) < limit:
        page = list(base.filter(pk__gt=last).order_by("pk")[:PAGE])
        if not page:
            break
        last = page[-1].pk
        for customer in customers_matching(rule=rule, now=now, customers=page):
            selected.append(customer.pk)
            if len(selected) == limit:
                break
    return selected


def utc(now: datetime) -> datetime:
    """Both paths read naive ISO text in ctx.now's zone: fix that zone to UTC (same instant)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("segment_customer_ids: now must be timezone-aware")
    return now.astimezone(UTC)


_capable: dict[str, bool] = {}


def _sql_capable() -> bool:
    """PostgreSQL with UTF-8 text (the translation counts characters as Python does)."""
    if connection.vendor != "postgresql":
        return False
    key = connection.settings_dict["NAME"]
    if key not in _capable:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_encoding")
            _capable[key] = cursor.fetchone()[0].upper() in ("UTF8", "UTF-8")
    return _capable[key]


class _PageEventCounter:
    """events_in_last() for a page of customers: one grouped query per (name, since) asked.

    A rule usually asks the same question of everyone (constant name and window), so the
    first customer's question is answered for the whole page at once.
    """

    def __init__(self, customer_ids: list[int]) -> None:
        self.customer_ids = customer_ids
        self.answers: dict[tuple[str, datetime], dict[int, int]] = {}

    def for_customer(self, customer_id: int) -> Callable[[str, datetime], int]:
        def count(name: str, since: datetime) -> int:
            key = (name, since)
            if key not in self.answers:
                self.answers[key] = self._count(name, since)
            return self.answers[key].get(customer_id, 0)

        return count

    def _count(self, name: str, since: datetime) -> dict[int, int]:
        from django.db.models import Count

        from journeys.models import Event

        rows = (
            Event.objects.filter(customer_id__in=self.customer_ids, name=name, timestamp__gte=since)
            .values("customer_id")
            .annotate(n=Count("id"))
            .values_list("customer_id", "n")
        )
        return dict(rows)


@dataclass
class TriggerAudience:
    """Who a version's trigger reaches, in a sentence for the pages where a version is reviewed
    and published, with the segment's size now when the trigger has a segment (`size`)."""

    trigger_kind: str
    summary: str
    size: SegmentSize | None = None


def _customers(size: SegmentSize) -> str:
    limit = f"{size.timeout_ms / 1000:g} s"
    if size.count is None:
        checked = f" ({size.checked:,} of {size.base:,} checked by then)" if size.plan == "python" and size.base else ""
        return f"an audience that could not be counted within {limit}{checked}"
    if size.exact:
        return f"{size.count:,} customer{'s' if size.count != 1 else ''}"
    stopped = f", all the {limit} limit allowed" if size.stopped else ""
    if size.plan == "python":
        return (f"about {size.count:,} customers (an estimate from a random sample: {size.checked:,} of the "
                f"{size.base:,} customers were checked{stopped})")
    return (f"about {size.count:,} customers (an estimate: {size.checked:,} customers the database could not "
            f"decide, picked at random, were checked{stopped})")


def trigger_audience(*, version, now: datetime | None = None) -> TriggerAudience:
    """The audience of `version`'s trigger now: for a cron broadcast and a segment entry the
    customers their segment selects (`segment_size`: the engine's segment code, bounded cost);
    for the other triggers, who enters (there is no fixed audience to count)."""
    from journeys.choices import TriggerKind
    from journeys.rules import RuleSyntaxError

    now = now or timezone.now()
    kind, config = version.trigger_kind, version.trigger_config or {}
    if kind in (TriggerKind.SCHEDULE, TriggerKind.SEGMENT_ENTRY):
        rule = str(config.get("segment" if kind == TriggerKind.SCHEDULE else "rule", "") or "")
        try:
            size = segment_size(rule=rule, now=now)
        except RuleSyntaxError as exc:
            return TriggerAudience(kind, f"The segment rule does not compile, so nobody can be counted: {exc}")
        segment = f"the segment {rule}" if rule.strip() else "everyone (no segment rule)"
        if kind == TriggerKind.SCHEDULE:
            text = (f"{_customers(size)} now: {segment}. Each cron moment ({config.get('cron', '')} UTC) enrols "
                    "the segment as it is then, less those the entry rule or the re-entry policy turns away.")
        else:
            text = (f"{_customers(size)} in {segment} now. They do not enter when the version goes live: only "
                    "customers who come into the segment afterwards do.")
        return TriggerAudience(kind, text[0].upper() + text[1:], size)
    if kind in (TriggerKind.EVENT, TriggerKind.INACTIVITY):
        return TriggerAudience(kind, f"Customers enter on each {version.trigger_event!r} event "
                                     "(no fixed audience to count).")
    if kind == TriggerKind.ATTRIBUTE_CHANGE:
        return TriggerAudience(kind, f"Customers enter when profile.{config.get('attribute', '')} changes "
                                     "(no fixed audience to count).")
    return TriggerAudience(kind, f"Customers enter on their {config.get('attribute', '')} date "
                                 "(no fixed audience to count).")
