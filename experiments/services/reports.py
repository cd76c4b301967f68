"""Reports over an experiment: cohorts x arm, the funnel per workflow version, and attribution.

Attribution model (last touch within the window): a conversion at time T by a
customer assigned at A is credited to the last message (Delivery) the customer
was sent in [max(A, T - window), T], together with the customer's arm. With no
such message the conversion is credited to "(no message)" in that arm (so for holdout
customers: their messages are suppressed while the experiment runs or is stopped, and
conversions count in running time only, up to the conclusion, after which the holdout
follows the winner). Suppressed and failed deliveries never get credit.

Everything is counted by the database (GROUP BY, correlated subqueries, window functions)
over the customers and conversions of `exposures_list`: what comes back to Python is a row
per group and cohort value, step or message, never a row (or an id) per assignment.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.apps import apps
from django.db import NotSupportedError, connection
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    Field,
    Func,
    Min,
    OuterRef,
    Q,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Concat, Length, NullIf, Substr, TruncMonth
from django.utils import timezone

from experiments.choices import HOLDOUT, CohortKind
from experiments.models import Experiment
from experiments.services.analysis import (
    _events_floor,
    _first_conversion,
    converted_assignments,
    daily_counts,
    exposed_assignments,
    group_counts,
    group_of_assignment,
    group_order,
    median_of_middle,
    without_jit,
)
from experiments.stats import wilson_interval
from journeys.models import Edge, JourneyRun, Step, StepExecution, WorkflowVersion
from journeys.models.fields import MAX_DEPTH, json_text_limit_depth

NO_MESSAGE = "(no message)"
FINISHED = ("completed", "exited", "failed")
TOP_COHORTS = 30  # a cohort table shows the values with the most exposures; the rest are one row, OTHER
OTHER = "(other values)"


@dataclass
class Cell:
    n: int = 0
    x: int = 0

    @property
    def rate(self) -> float:
        return self.x / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.x, self.n)


@dataclass
class CohortTable:
    kind: str
    trait: str
    cohorts: list[str]
    groups: list[str]
    cells: dict[tuple[str, str], Cell]

    def cell(self, cohort: str, group: str) -> Cell:
        return self.cells.get((cohort, group), Cell())


class JSONKey(Func):
    """One top-level key of a JSON column as the database has it: its JSON type (`part="type"`:
    jsonb_typeof's words on PostgreSQL, json_type's on SQLite, NULL when the key is absent) or its
    value (`part="value"`: text on PostgreSQL, the SQL value on SQLite, arrays and objects as JSON
    text). Grouped by both, two values stay apart exactly when Python would tell them apart (1,
    1.0, "1" and true); `json_decode` turns a pair back into the value Python would have read."""

    def __init__(self, column: str, key: str, part: str):
        super().__init__(F(column), key=key, part=part,
                         output_field=CharField() if part == "type" else Field())
        self.key, self.part = key, part

    def as_postgresql(self, compiler, connection, **extra):
        column, params = compiler.compile(self.get_source_expressions()[0])
        template = "jsonb_typeof(%s -> %%s)" if self.part == "type" else "(%s ->> %%s)"
        return template % column, (*params, self.key)

    def as_sqlite(self, compiler, connection, **extra):
        column, params = compiler.compile(self.get_source_expressions()[0])
        template = "json_type(%s, %%s)" if self.part == "type" else "json_extract(%s, %%s)"
        return template % column, (*params, "$." + json.dumps(self.key))

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError("JSONKey: PostgreSQL and SQLite only")


def json_columns(name: str, column: str, key: str) -> dict[str, JSONKey]:
    """`{name}_type` and `{name}_value` of `column`'s `key` (see JSONKey), to annotate or group by."""
    return {f"{name}_type": JSONKey(column, key, "type"), f"{name}_value": JSONKey(column, key, "value")}


def json_decode(row: dict, name: str):
    """The Python value of a key read with `json_columns` (None when absent), as it reads in the
    whole document (nested no deeper than the JSON fields allow)."""
    kind, value = row[f"{name}_type"], row[f"{name}_value"]
    if kind in (None, "null"):
        return None
    if kind in ("string", "text", "integer", "real"):  # PostgreSQL's text; SQLite's own scalars
        return value
    if kind in ("true", "false"):
        return kind == "true"
    if kind == "boolean":
        return value == "true"
    return json.loads(json_text_limit_depth(value, max_depth=MAX_DEPTH - 1))  # a number's text, array, object


def _json_falsy(name: str) -> Q:
    """A key read with `json_columns` (annotated as `name`) whose value Python finds false: absent,
    null, false, 0, "", [] or {}."""
    kind, value = f"{name}_type", f"{name}_value"
    empty = Q(**{f"{kind}__isnull": True}) | Q(**{kind: "null"}) | Q(**{kind: "array", value: "[]"}) | Q(
        **{kind: "object", value: "{}"})
    if connection.vendor == "postgresql":
        return empty | Q(**{kind: "boolean", value: "false"}) | Q(**{kind: "string", value: ""}) | Q(
            **{kind: "number", f"{value}__regex": r"^-?0+(\.0*)?$"})
    return empty | Q(**{kind: "false"}) | Q(**{kind: "text", value: ""}) | Q(
        **{f"{kind}__in": ("integer", "real"), value: 0})


def _json_string() -> str:
    return "string" if connection.vendor == "postgresql" else "text"


def _signup_columns() -> tuple[dict, dict]:
    """(aliases, columns): the signup month as the database reads it from the profile: the first
    seven characters of the `signup_date` trait (or, when that is false, `signed_up_at`) when it is
    text that long, else the month (UTC) the customer was first seen, or created."""
    string = _json_string()
    aliases = {**json_columns("sd", "customer__traits", "signup_date"),
               **json_columns("sua", "customer__traits", "signed_up_at")}
    aliases |= {"sd_len": Length("sd_value"), "sua_len": Length("sua_value")}
    head = Case(
        When(Q(sd_type=string) & ~Q(sd_value=""),
             then=Case(When(sd_len__gte=7, then=Substr("sd_value", 1, 7)), default=Value(None))),
        When(~_json_falsy("sd"), then=Value(None)),
        When(Q(sua_type=string, sua_len__gte=7), then=Substr("sua_value", 1, 7)),
        default=Value(None), output_field=CharField(),
    )
    month = TruncMonth(Coalesce("customer__first_seen", "customer__created_at"), tzinfo=UTC)
    return aliases, {"label": Coalesce(head, Substr(Cast(month, CharField()), 1, 7), Value("(unknown)"))}


def _trait_label(row: dict) -> str:
    value = json_decode(row, "trait")
    return "(none)" if value in (None, "") else str(value)


def _first_channel(experiment: Experiment) -> Subquery | Value:
    """The channel kind of the first message (any status) sent to the customer in the window of
    their assignment; NULL when none."""
    try:
        Delivery = apps.get_model("channels_app", "Delivery")
    except LookupError:
        return Value(None, output_field=CharField())
    window = timedelta(seconds=experiment.window_s)
    first = (Delivery.objects.filter(customer_id=OuterRef("customer_id"), created_at__gte=OuterRef("assigned_at"))
             .filter(created_at__lte=OuterRef("assigned_at") + window).order_by("created_at", "id"))
    return Subquery(first.values("channel__kind")[:1])


@without_jit()
def experiment_cohorts(
    *, experiment: Experiment, kind: str, trait: str = "", now: datetime | None = None,
    daily: dict[str, Counter] | None = None,
) -> CohortTable:
    """Conversion by cohort (entry week, signup month, a trait, channel) x arm, counted by the
    database per cohort value and group. Signup months, traits and channels show the TOP_COHORTS
    values with the most exposures, the others together as OTHER (a trait such as an email
    address has as many values as customers). Entry weeks are read from `daily` (`daily_counts`,
    e.g. the analysis' own) when given."""
    if kind not in CohortKind.values:
        raise ValueError(f"unknown cohort kind {kind!r}")
    if kind == CohortKind.TRAIT and not trait:
        raise ValueError("a trait cohort needs the trait name")
    now = now or timezone.now()
    if kind == CohortKind.ENTRY_WEEK:
        cells = _entry_week_cells(daily if daily is not None else daily_counts(experiment=experiment, now=now))
    elif kind == CohortKind.SIGNUP_MONTH:
        aliases, columns = _signup_columns()
        cells = _cohort_cells(experiment, now, columns, lambda row: row["label"], aliases=aliases)
    elif kind == CohortKind.TRAIT:
        cells = _cohort_cells(experiment, now, json_columns("trait", "customer__traits", trait), _trait_label,
                              many_values=True)
    else:
        channel = {"channel": _first_channel(experiment)}
        cells = _cohort_cells(experiment, now, channel, lambda row: NO_MESSAGE if row["channel"] is None
                              else row["channel"])
    groups = group_order(experiment, {g for _, g in cells})
    labels = {c for c, _ in cells}
    cohorts = sorted(labels - {OTHER}) + ([OTHER] if OTHER in labels else [])
    return CohortTable(kind=kind, trait=trait, cohorts=cohorts, groups=groups, cells=dict(cells))


def _entry_week_cells(daily: dict[str, Counter]) -> dict[tuple[str, str], Cell]:
    """The ISO week (UTC) of each day of the daily counts."""
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for group, counts in daily.items():
        for (assigned_day, converted_day), n in counts.items():
            year, week, _ = assigned_day.isocalendar()
            cell = cells[(f"{year}-W{week:02d}", group)]
            cell.n += n
            cell.x += n if converted_day is not None else 0
    return cells


def _cohort_cells(experiment: Experiment, now: datetime, columns: dict, label: Callable[[dict], str], *,
                  aliases: dict | None = None, many_values: bool = False) -> dict[tuple[str, str], Cell]:
    """One statement: a row per value of `columns` (the TOP_COHORTS + 1 with the most exposures)
    with the exposures of each group as columns; a second one: the conversions per value the same
    way, over `converted_assignments` (a semi-join, not a conversion looked up per assignment),
    for the values shown only when the column may have `many_values` (a trait: as many as
    customers); then `label` names each value. When there were more values, OTHER holds what the
    group totals (`group_counts`, a third statement) leave."""
    names = [a.name for a in experiment.arms.all()]
    names += [] if HOLDOUT in names else [HOLDOUT]
    per_group = {}
    for i, name in enumerate(names):
        member = Q(holdout=False, arm__name=name)
        if name == HOLDOUT:
            member |= Q(holdout=True)
        per_group[f"n{i}"] = Count("pk", filter=member)
    exposed = exposed_assignments(experiment=experiment, now=now).alias(**(aliases or {}))
    rows = list(exposed.annotate(**columns).values(*columns).annotate(total=Count("pk"), **per_group)
                .order_by("-total", *columns)[:TOP_COHORTS + 1])
    top = rows[:TOP_COHORTS]
    converted = converted_assignments(experiment=experiment, now=now).alias(**(aliases or {})).annotate(**columns)
    if many_values:
        converted = converted.filter(_values_in(top, list(columns)))
    converted = converted.values(*columns).annotate(**per_group).order_by()
    hits = {tuple(row[c] for c in columns): row for row in converted} if top else {}
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for row in top:
        cohort, hit = label(row), hits.get(tuple(row[c] for c in columns), {})
        for i, name in enumerate(names):
            if row[f"n{i}"]:
                cells[(cohort, name)].n += row[f"n{i}"]
                cells[(cohort, name)].x += min(hit.get(f"n{i}", 0), row[f"n{i}"])
    if len(rows) > TOP_COHORTS:
        totals = group_counts(experiment=experiment, now=now)
        for name in names:
            n = totals.get(name, (0, 0))[0] - sum(c.n for (_, g), c in cells.items() if g == name)
            if n:
                x = totals[name][1] - sum(c.x for (_, g), c in cells.items() if g == name)
                cells[(OTHER, name)] = Cell(n, max(0, min(x, n)))
    return cells


def _values_in(rows: list[dict], columns: list[str]) -> Q:
    """The rows whose `columns` hold the values of one of `rows` (NULL matching NULL), written as
    IN lists under the leading columns' values, so that each column's expression is written out
    (with its parameters) once per distinct leading value, not once per row."""
    if not rows:
        return Q(pk__in=[])
    head, last = columns[:-1], columns[-1]
    groups: dict[tuple, list] = defaultdict(list)
    for row in rows:
        groups[tuple(row[c] for c in head)].append(row[last])
    match = Q(pk__in=[])
    for key, values in groups.items():
        lead = Q(*(Q(**{f"{c}__isnull": True}) if v is None else Q(**{c: v}) for c, v in zip(head, key)))
        present = [v for v in values if v is not None]
        last_q = (Q(**{f"{last}__in": present}) if present else Q(pk__in=[])) | (
            Q(**{f"{last}__isnull": True}) if len(present) < len(values) else Q(pk__in=[]))
        match |= lead & last_q
    return match


@dataclass
class FunnelRow:
    step: str
    kind: str
    reached: int = 0
    dropped: int = 0
    median_from_previous_s: float | None = None
    by_group: dict[str, int] = field(default_factory=dict)


@dataclass
class Funnel:
    version: WorkflowVersion
    entered: int
    converted: int
    in_progress: int
    rows: list[FunnelRow]
    groups: list[str]
    entered_by_group: dict[str, int]
    converted_by_group: dict[str, int]

    @property
    def goal(self) -> str:
        """What `converted` counts, in words: runs that reached the version's own goal while open
        (not the experiment's metric, which also counts conversions after a run has ended)."""
        event = self.version.goal_event
        return (f"its goal event {event!r} arrived while the run was open, or it passed a goal step" if event
                else "it passed a goal step (the version has no goal event)")

    @property
    def group_summary(self) -> list[tuple[str, int, int]]:
        """(group, entered, converted) in arm order, for templates."""
        return [(g, self.entered_by_group.get(g, 0), self.converted_by_group.get(g, 0)) for g in self.groups]

    @property
    def group_table(self) -> list[tuple[FunnelRow, list[int]]]:
        """Each row with its reached counts per group, aligned with `groups`."""
        return [(r, [r.by_group.get(g, 0) for g in self.groups]) for r in self.rows]


def _step_order(version: WorkflowVersion) -> list[Step]:
    """Steps in breadth-first order from the entry step (then any unreachable ones)."""
    steps = {s.key: s for s in version.steps.all()}
    graph: dict[str, list[str]] = defaultdict(list)
    for source, target in Edge.objects.filter(version=version).order_by("id").values_list("source__key", "target__key"):
        graph[source].append(target)
    order, queue, seen = [], [version.entry_step], {version.entry_step}
    while queue:
        key = queue.pop(0)
        if key in steps:
            order.append(steps[key])
        for nxt in graph[key]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return order + [s for k, s in steps.items() if k not in seen]


def _run_columns(prefix: str = "") -> dict[str, JSONKey]:
    """The run variables an experiment split records (see `_run_group`)."""
    return {**json_columns("exp", f"{prefix}variables", "experiment"),
            **json_columns("hold", f"{prefix}variables", "holdout"),
            **json_columns("arm", f"{prefix}variables", "experiment_arm")}


def _run_group(row: dict, experiment: Experiment | None) -> str | None:
    """The group of the runs of a row read with `_run_columns`: None unless split in `experiment`."""
    if experiment is None or json_decode(row, "exp") != experiment.pk:
        return None
    return HOLDOUT if json_decode(row, "hold") else json_decode(row, "arm")


def _step_visits(version: WorkflowVersion, experiment: Experiment | None) -> tuple[Counter, dict[str, list[float]],
                                                                             list[dict]]:
    """(runs that left off at each step, the middle gaps of each step, the runs that reached each
    step per the runs' experiment variables), one statement: a run "visits" a step at its first
    execution there (ordered by start, then id), and has reached the step once it has; it left off
    at the step visited last if it finished without converting; a step's gap is the seconds from
    the step visited before, and only the one or two middle gaps (`middle`) of each step come back.
    The reached rows (one per step and group) are counted from the first visits, not by a
    COUNT(DISTINCT run) over every execution."""
    if connection.vendor == "postgresql":
        gap = "(extract(epoch FROM v.started_at - v.previous) * 1000000)::bigint"
    else:
        gap = "django_timestamp_diff(v.started_at, v.previous)"  # Django's SQLite function: microseconds
    runs, executions = JourneyRun._meta.db_table, StepExecution._meta.db_table
    columns = list(_run_columns()) if experiment is not None else []
    groups, group_params = JourneyRun.objects.filter(version=version).values(
        run_pk=F("pk"), **(_run_columns() if experiment is not None else {})).order_by().query.sql_with_params()
    padding = "".join(", NULL" for _ in columns)
    picked = "".join(f", g.{connection.ops.quote_name(c)}" for c in columns)
    sql = f"""
        WITH firsts AS (
            SELECT s.id, s.run_id, s.step_key, s.started_at,
                   row_number() OVER (PARTITION BY s.run_id, s.step_key ORDER BY s.started_at, s.id) AS nth
            FROM {executions} s JOIN {runs} r ON r.id = s.run_id WHERE r.version_id = %s
        ), visits AS (
            SELECT f.run_id, f.step_key, f.started_at,
                   lag(f.started_at) OVER (PARTITION BY f.run_id ORDER BY f.started_at, f.id) AS previous,
                   row_number() OVER (PARTITION BY f.run_id ORDER BY f.started_at DESC, f.id DESC) AS from_end
            FROM firsts f WHERE f.nth = 1
        ), gaps AS (
            SELECT v.step_key, {gap} AS micros FROM visits v WHERE v.previous IS NOT NULL
        ), ranked AS (
            SELECT step_key, micros,
                   2 * row_number() OVER (PARTITION BY step_key ORDER BY micros)
                   - count(*) OVER (PARTITION BY step_key) AS middle
            FROM gaps
        )
        SELECT 'gap', step_key, micros, NULL{padding} FROM ranked WHERE middle BETWEEN 0 AND 2
        UNION ALL
        SELECT 'dropped', v.step_key, NULL, count(*){padding} FROM visits v JOIN {runs} r ON r.id = v.run_id
        WHERE v.from_end = 1 AND r.status IN (%s, %s, %s) AND r.converted_at IS NULL
        GROUP BY v.step_key
        UNION ALL
        SELECT 'reached', v.step_key, NULL, count(*){picked} FROM visits v JOIN ({groups}) g ON g.run_pk = v.run_id
        GROUP BY v.step_key{picked}"""
    dropped: Counter = Counter()
    gaps: dict[str, list[float]] = defaultdict(list)
    reached: list[dict] = []
    with connection.cursor() as cursor:
        cursor.execute(sql, [version.pk, *FINISHED, *group_params])
        for part, key, micros, n, *values in cursor.fetchall():
            if part == "gap":
                gaps[key].append(micros / 10**6)
            elif part == "dropped":
                dropped[key] += n
            else:
                reached.append({"step_key": key, "runs": n, **dict(zip(columns, values))})
    return dropped, gaps, reached


@without_jit()
def version_funnel(*, version: WorkflowVersion, experiment: Experiment | None = None) -> Funnel:
    """Entered, reached each step, converted, dropped out (finished without converting, last seen
    at that step) and the median time from the step reached before, from StepExecution rows,
    counted by the database. With an experiment, counts are also split by the arm stored in the
    run's variables."""
    columns = _run_columns() if experiment is not None else {}
    totals = (JourneyRun.objects.filter(version=version).values(**columns)
              .annotate(n=Count("pk"), converted=Count("pk", filter=Q(converted_at__isnull=False)),
                        open=Count("pk", filter=~Q(status__in=FINISHED)))
              .order_by())
    entered = converted = in_progress = 0
    entered_by, converted_by = Counter(), Counter()
    for row in totals:
        entered, converted, in_progress = entered + row["n"], converted + row["converted"], in_progress + row["open"]
        group = _run_group(row, experiment)
        if group:
            entered_by[group] += row["n"]
            converted_by[group] += row["converted"]
    order = _step_order(version)
    rows = {s.key: FunnelRow(step=s.key, kind=s.kind) for s in order}
    dropped, gaps, reached = _step_visits(version, experiment)
    unknown: dict[str, FunnelRow] = {}
    for r in reached:
        row = rows.get(r["step_key"]) or unknown.setdefault(r["step_key"], FunnelRow(step=r["step_key"], kind="?"))
        row.reached += r["runs"]
        group = _run_group(r, experiment)
        if group:
            row.by_group[group] = row.by_group.get(group, 0) + r["runs"]
    rows |= dict(sorted(unknown.items()))  # steps no longer in the version, after its own
    for key, n in dropped.items():
        rows[key].dropped += n
    for key, values in gaps.items():
        rows[key].median_from_previous_s = median_of_middle(values)
    groups = group_order(experiment, set(entered_by)) if experiment else []
    return Funnel(
        version=version,
        entered=entered,
        converted=converted,
        in_progress=in_progress,
        rows=list(rows.values()),
        groups=groups,
        entered_by_group=dict(entered_by),
        converted_by_group=dict(converted_by),
    )


@dataclass
class Credit:
    group: str
    message: str
    channel: str
    conversions: int


SEPARATOR = "\x1f"  # between a touch's channel kind and its message (no kind has one)


@without_jit()
def experiment_attribution(*, experiment: Experiment, now: datetime | None = None) -> list[Credit]:
    """Conversions credited by last touch within the window (see the module docstring), counted by
    the database per group and (channel, message); in each group the most credited first (ties:
    the one whose first credited customer was assigned first, then by name)."""
    now = now or timezone.now()
    floor = _events_floor(experiment, now) if experiment.goal_event else 0
    converted = converted_assignments(experiment=experiment, now=now, floor=floor).annotate(
        converted_at=_first_conversion(experiment, now, floor))
    try:
        Delivery = apps.get_model("channels_app", "Delivery")
    except LookupError:
        touch = Value(None, output_field=CharField())
    else:
        window = timedelta(seconds=experiment.window_s)
        last = (Delivery.objects.filter(customer_id=OuterRef("customer_id"), created_at__gte=OuterRef("assigned_at"),
                                        created_at__lte=OuterRef("converted_at"))
                .filter(created_at__gte=OuterRef("converted_at") - window)
                .exclude(status__in=["suppressed", "failed"]).order_by("-created_at", "-id"))
        message = Coalesce(NullIf("template__name", Value("")), NullIf("step_key", Value("")), Value("message"))
        touch = Subquery(last.values(touch=Concat("channel__kind", Value(SEPARATOR), message))[:1])
    rows = (converted.values(group=group_of_assignment(), touch=touch)
            .annotate(n=Count("pk"), first=Min("assigned_at")).order_by())
    credits: Counter = Counter()
    first: dict[tuple[str, str, str], datetime] = {}
    for row in rows:
        channel, message = row["touch"].split(SEPARATOR, 1) if row["touch"] is not None else ("", NO_MESSAGE)
        key = (row["group"], message, channel)
        credits[key] += row["n"]
        first[key] = min(first.get(key, row["first"]), row["first"])
    order = {g: i for i, g in enumerate(group_order(experiment, {g for g, _, _ in credits}))}
    ranked = sorted(credits.items(), key=lambda kv: (order[kv[0][0]], -kv[1], first[kv[0]], kv[0][1], kv[0][2]))
    return [Credit(g, m, c, n) for (g, m, c), n in ranked]
