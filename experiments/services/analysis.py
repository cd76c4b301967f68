"""Per-arm analysis: exposures, conversions, intervals, lift, p-values, SRM and the peeking guard.

Primary metric: a customer converts when the experiment's goal event arrives
within `window_s` after their assignment (without a goal event: when the run
they entered with converts within the window). The unit is the customer: one
assignment, at most one conversion. Customers merged into another profile are
left out (their events moved to the survivor). Conversions count in the experiment's
counted time only (`counted_time`): not while it was stopped, not after its conclusion.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.apps import apps
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    DateField,
    DateTimeField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
    Window,
)
from django.db.models.functions import RowNumber, TruncDate
from django.utils import timezone

from experiments.choices import HOLDOUT, AssignmentVia, ExperimentMode, ExperimentStatus, Metric
from experiments.models import Arm, Assignment, Experiment
from experiments.stats import (
    SrmResult,
    diff_interval,
    mantel_haenszel_pvalue,
    msprt_pvalue,
    ratio_interval,
    sample_size_per_arm,
    srm_check,
    two_proportion_ztest,
    wilson_interval,
)
from journeys.models import Event, JourneyRun

MAX_DAYS = 400


@dataclass
class Exposure:
    """One assigned customer and the first qualifying conversion (None if none in the window)."""

    assignment_id: int
    customer_id: int
    group: str
    arm: str
    holdout: bool
    assigned_at: datetime
    converted_at: datetime | None
    run_id: int | None


@contextmanager
def without_jit() -> Iterator[None]:
    """PostgreSQL: no JIT compilation for the statements inside (a context or a decorator). The
    report's statements run a subquery per assignment, so the planner's cost estimate passes
    `jit_above_cost`, and compiling them took ~0.9 s a statement that then ran in 0.1 s."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('jit')")
        (before,) = cursor.fetchone()
        cursor.execute("SET LOCAL jit = off")  # undone with the savepoint if the block fails
        yield
        # inside a longer transaction (or another such block): what it was, for what follows
        cursor.execute("SELECT set_config('jit', %s, true)", [before])


@dataclass(frozen=True)
class CountedTime:
    """When a conversion counts: not while the experiment was stopped (customers assigned an arm
    who entered then followed control: their conversions then are not their arm's effect) and
    not after it was concluded (every entry, the holdout's too, follows the winner since)."""

    paused: tuple[tuple[datetime, datetime | None], ...] = ()  # (stopped, restarted or None: still)
    concluded_at: datetime | None = None

    def q(self, column: str) -> Q:
        """The rows whose `column` (a conversion moment) falls in counted time."""
        counted = Q(**{f"{column}__lte": self.concluded_at}) if self.concluded_at is not None else Q()
        for start, end in self.paused:
            during = Q(**{f"{column}__gte": start}) & (Q(**{f"{column}__lt": end}) if end is not None else Q())
            counted &= ~during
        return counted

    def notes(self) -> list[str]:
        """What the report says about the conversions it leaves out."""
        notes = [
            (f"Stopped from {_when(start)} to {_when(end)}" if end is not None else f"Stopped since {_when(start)}")
            + ": conversions in that time are not counted (while stopped, holdout customers got no messages and "
              "customers of every arm who entered followed control, so their conversions then are not their "
              "arm's effect; one who entered then and converts after the restart still counts for their arm)."
            for start, end in self.paused
        ]
        if self.concluded_at is not None:
            notes.append(f"Concluded at {_when(self.concluded_at)}: conversions after it are not counted (since "
                         "then every entry, the holdout's too, follows the winner).")
        return notes


def paused_periods(experiment: Experiment) -> tuple[tuple[datetime, datetime | None], ...]:
    """The times the experiment was stopped, read from its history (in the order saved): from a
    stop (its `stopped_at`) to the next save that is not stopped (a restart or the conclusion),
    or still stopped (None)."""
    periods: list[tuple[datetime, datetime | None]] = []
    start = None
    rows = experiment.history.order_by("history_id").values_list("status", "stopped_at", "history_date")
    for status, stopped_at, at in rows:
        if status == ExperimentStatus.STOPPED and start is None:
            start = stopped_at or at
        elif status != ExperimentStatus.STOPPED and start is not None:
            if at > start:
                periods.append((start, at))
            start = None
    if start is not None:
        periods.append((start, None))
    return tuple(periods)


def counted_time(experiment: Experiment) -> CountedTime:
    """When the experiment's conversions count (see CountedTime)."""
    concluded = experiment.concluded_at if experiment.status == ExperimentStatus.CONCLUDED else None
    return CountedTime(paused=paused_periods(experiment), concluded_at=concluded)


def exposed_assignments(*, experiment: Experiment, now: datetime) -> QuerySet:
    """The assignments the analysis counts: assigned by `now`, of customers not merged into another
    profile (their events moved to the survivor)."""
    return Assignment.objects.filter(experiment=experiment, customer__merged_into__isnull=True, assigned_at__lte=now)


def exposures_list(*, experiment: Experiment, now: datetime | None = None) -> list[Exposure]:
    """Every assigned customer, in the order assigned, with their conversion: a row per assignment
    in Python, the reference the database counts are checked against (the report counts in SQL)."""
    now = now or timezone.now()
    return _exposures(experiment, exposed_assignments(experiment=experiment, now=now), now, order=("assigned_at", "id"))


def exposures_sample(*, experiment: Experiment, limit: int, now: datetime | None = None) -> list[Exposure]:
    """At most `limit` randomised exposures (hash-assigned, not held out) to learn from, newest
    first: those whose window has closed (their outcome is known) before those still open. Read
    with LIMIT, so a model's retraining costs the sample, not the experiment's whole history."""
    now = now or timezone.now()
    qs = Assignment.objects.filter(experiment=experiment, customer__merged_into__isnull=True, assigned_at__lte=now,
                                   via=AssignmentVia.HASH, holdout=False)
    closed_by = now - timedelta(seconds=experiment.window_s)
    newest = ("-assigned_at", "-id")
    sample = _exposures(experiment, qs.filter(assigned_at__lte=closed_by), now, order=newest, limit=limit)
    if len(sample) < limit:
        sample += _exposures(experiment, qs.filter(assigned_at__gt=closed_by), now, order=newest,
                             limit=limit - len(sample))
    return sample


def _exposures(experiment: Experiment, qs, now: datetime, *, order: tuple[str, ...],
               limit: int | None = None) -> list[Exposure]:
    """These assignments, in this order (the first `limit`), with their first conversion in the window."""
    counted = counted_time(experiment)
    if experiment.goal_event:
        goal = (
            Event.objects.filter(
                counted.q("timestamp"), customer_id=OuterRef("customer_id"), name=experiment.goal_event,
                timestamp__gte=OuterRef("assigned_at"), pk__gte=_events_floor(experiment, now),
            )
            .order_by("timestamp")
            .values("timestamp")[:1]
        )
    else:
        goal = JourneyRun.objects.filter(counted.q("converted_at"), pk=OuterRef("run_id"),
                                         converted_at__gte=OuterRef("assigned_at")).values("converted_at")[:1]
    rows = qs.annotate(goal_at=Subquery(goal)).values_list(
        "id", "customer_id", "arm__name", "holdout", "assigned_at", "goal_at", "run_id").order_by(*order)
    if limit is not None:
        rows = rows[:limit]
    window = timedelta(seconds=experiment.window_s)
    out = []
    for pk, cid, arm, holdout, assigned_at, goal_at, run_id in rows:
        converted = goal_at if goal_at is not None and goal_at <= assigned_at + window and goal_at <= now else None
        out.append(Exposure(pk, cid, HOLDOUT if holdout else arm, arm, holdout, assigned_at, converted, run_id))
    return out


def group_counts(*, experiment: Experiment, now: datetime | None = None,
                 closed_only: bool = False) -> dict[str, tuple[int, int]]:
    """group -> (exposures, conversions), counted by the database in one statement (the same
    customers and conversions as `exposures_list`, without a row per assignment in Python).
    `closed_only`: only the customers whose conversion window has closed by `now`, whose outcome
    is known (what the bandit learns from: see `experiment_bandit_update`)."""
    now = now or timezone.now()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in _with_conversions(experiment, now, "arm__name", "holdout", closed_only=closed_only):
        group = counts[HOLDOUT if row["holdout"] else row["arm__name"]]
        group[0 if row["part"] == EXPOSED_PART else 1] += row["n"]
    return {k: (n, min(x, n)) for k, (n, x) in counts.items()}


@dataclass
class GroupStats:
    name: str
    is_control: bool = False
    holdout: bool = False
    retired: bool = False
    weight: float | None = None
    exposures: int = 0
    conversions: int = 0
    rate: float = 0.0
    ci: tuple[float, float] = (0.0, 1.0)
    diff: tuple[float, float, float] | None = None  # lift vs control: (abs, low, high)
    rel: tuple[float, float, float] | None = None  # relative lift: (rel, low, high)
    z: float | None = None
    p_value: float | None = None
    p_always_valid: float | None = None  # the smaller of the two below
    p_better: float | None = None  # always-valid p over the looks where this group converted better than control
    p_worse: float | None = None  # ... and over those where it converted worse
    p_stratified: float | None = None  # bandit mode: vs control within periods of one allocation (descriptive)
    secondary: dict = field(default_factory=dict)
    alpha: float = 0.05  # the experiment's significance level
    decides: bool = True  # False where the always-valid test is not valid (bandit mode): no direction is claimed

    @property
    def direction(self) -> str | None:
        """"better" or "worse" than control when the always-valid test rejects on that side only (at
        the looks where the difference had that sign), else None: an arm rejected as worse at one
        look is never called better because it leads today, and one rejected on both sides (the
        effect turned) is neither."""
        if not self.decides or self.p_better is None or self.p_worse is None:
            return None
        better, worse = self.p_better < self.alpha, self.p_worse < self.alpha
        return "better" if better and not worse else "worse" if worse and not better else None

    @property
    def significant(self) -> bool:
        """Read with the always-valid p-value at the experiment's alpha: safe however often someone looks."""
        return self.direction is not None

    @property
    def p_claimed(self) -> float | None:
        """The always-valid p-value of the claimed direction."""
        return {"better": self.p_better, "worse": self.p_worse}.get(self.direction or "")


BANDIT_NO_DECISION = (
    "Bandit: the arms are compared pooled over time, but the bandit changed the split as it went, so when the "
    "base rate drifts an arm that got more traffic in a worse period looks worse though it is not (Simpson's "
    "paradox). Neither the z-test nor the always-valid p-value is valid under this adaptive split, so the "
    "report recommends no arm and auto-retire retires none in bandit mode: the bandit itself moves traffic away "
    "from an arm that converts worse (down to its floor). Conclude by hand, or compare the arms in a fixed-weight "
    "experiment."
)

READABLE_SHARE = 0.5  # of the compared arms' exposures whose window must have closed before anything is concluded


@dataclass
class Maturity:
    """How far the compared arms' exposures (active arms, no holdout) are into their conversion
    window. A conversion can arrive until the window closes, so while most windows are open the
    counts are partial: a broadcast assigns everyone in a minute, and minutes later its "planned
    sample" is reached with nobody's window closed. Nothing is concluded (by the report or by
    auto-retire) until `readable`."""

    window: timedelta
    exposures: int = 0
    closed: int = 0  # exposures whose window has closed (their outcome is known)
    closed_by_arm: dict[str, int] = field(default_factory=dict)
    middle_at: datetime | None = None  # the middle one (in assignment order), while not readable
    plan_at: datetime | None = None  # when every arm has its planned sample with closed windows

    @property
    def readable(self) -> bool:
        """Most exposures have had their full window (or there are none to read)."""
        return self.closed >= READABLE_SHARE * self.exposures

    @property
    def readable_at(self) -> datetime | None:
        """When the window of the exposures so far will have closed for most of them."""
        return None if self.readable or self.middle_at is None else self.middle_at + self.window

    @property
    def min_arm_closed(self) -> int:
        return min(self.closed_by_arm.values(), default=0)


def _maturity(experiment: Experiment, now: datetime, exposures: dict[str, int], closed: dict[str, int],
              plan: int) -> Maturity:
    """The compared arms' maturity from their exposures and closed windows (`_daily_and_closed`);
    while most are open, also the middle exposure's moment (when most will have closed) and, when
    every arm has its plan's worth of exposures, when the plan-th of each closes: a LIMIT 1 read
    each, only in those cases."""
    window = timedelta(seconds=experiment.window_s)
    arms = list(exposures)
    maturity = Maturity(window=window, exposures=sum(exposures.values()),
                        closed_by_arm={arm: closed.get(arm, 0) for arm in arms})
    maturity.closed = sum(maturity.closed_by_arm.values())
    compared = exposed_assignments(experiment=experiment, now=now).filter(holdout=False, arm__name__in=arms)
    in_order = ("assigned_at",)  # the assigned_at index can hand the rows over in order
    if not maturity.readable:
        maturity.middle_at = compared.order_by(*in_order).values_list("assigned_at", flat=True)[
            (maturity.exposures - 1) // 2]
    if plan and arms and maturity.min_arm_closed < plan and all(n >= plan for n in exposures.values()):
        maturity.plan_at = max(compared.filter(arm__name=a).order_by(*in_order).values_list(
            "assigned_at", flat=True)[plan - 1] for a in arms) + window
    return maturity


@dataclass
class Analysis:
    experiment: Experiment
    groups: list[GroupStats]
    srm: SrmResult | None
    plan_per_arm: int
    min_arm_exposures: int
    maturity: Maturity
    messaging_effect: GroupStats | None  # control vs holdout
    warnings: list[str]
    recommendation: str
    computed_at: datetime
    series: dict[str, list[dict]] = field(default_factory=dict)  # the daily looks behind the chart
    daily: dict[str, Counter] = field(default_factory=dict)  # `daily_counts`, for the entry-week cohorts

    @property
    def plan_reached(self) -> bool:
        """Every active arm has the planned customers, counting those whose window has closed."""
        return self.maturity.min_arm_closed >= self.plan_per_arm


def _expected_counts(experiment: Experiment, now: datetime) -> tuple[dict[str, int], dict[str, float]]:
    """Observed group sizes and the sizes the recorded weights promised (hash-assigned only),
    counted by the database per (arm, holdout, recorded weights)."""
    rows = exposed_assignments(experiment=experiment, now=now)
    personalized = experiment.mode == ExperimentMode.PERSONALIZED
    if not personalized:  # hash-assigned only (where a model picks arms, only the holdout share is planned)
        rows = rows.filter(via=AssignmentVia.HASH)
    observed: Counter = Counter()
    expected: dict[str, float] = defaultdict(float)
    for row in rows.values("arm__name", "holdout", "weights").annotate(n=Count("pk")).order_by():
        n = row["n"]
        observed[HOLDOUT if row["holdout"] else ("treated" if personalized else row["arm__name"])] += n
        for name, p in (row["weights"] or {}).items():
            expected[name if name == HOLDOUT or not personalized else "treated"] += n * p
    for name in expected:
        observed.setdefault(name, 0)
    return dict(observed), dict(expected)


def _events_floor(experiment: Experiment, now: datetime) -> int:
    """No event received long before the experiment's first assignment can convert it: the goal
    queries start at this event id, so PostgreSQL skips the partitions of older events
    (journeys.services.event_storage.events_id_floor) instead of probing each for every customer."""
    from journeys.services.event_storage import events_id_floor

    return events_id_floor(happened_after=lambda: Assignment.objects.filter(
        experiment=experiment, assigned_at__lte=now).aggregate(first=Min("assigned_at"))["first"])


def _conversions(experiment: Experiment, now: datetime, floor: int | None = None):
    """An assignment's conversions (a subquery on OuterRef), as `exposures_list` counts them: goal
    events (or its run's conversion) from the assignment to the end of the window, not after now,
    in counted time (`counted_time`: not while stopped, not after the conclusion).
    `floor`: `_events_floor`, when the caller has it already."""
    window = timedelta(seconds=experiment.window_s)
    counted = counted_time(experiment)
    if experiment.goal_event:
        return (Event.objects.filter(counted.q("timestamp"), customer_id=OuterRef("customer_id"),
                                     name=experiment.goal_event, timestamp__gte=OuterRef("assigned_at"),
                                     timestamp__lte=now,
                                     pk__gte=_events_floor(experiment, now) if floor is None else floor)
                .filter(timestamp__lte=OuterRef("assigned_at") + window).order_by("timestamp"))
    return (JourneyRun.objects.filter(counted.q("converted_at"), pk=OuterRef("run_id"),
                                      converted_at__gte=OuterRef("assigned_at"), converted_at__lte=now)
            .filter(converted_at__lte=OuterRef("assigned_at") + window))


def goal_events_counted(customer_ids: list[int]) -> list[int]:
    """The goal events that convert these customers' assignments (the first in each window): an
    erasure keeps them, stripped (channels_app.services.privacy.EVENTS_KEPT), so that erasing a
    converted customer does not lower an experiment's conversions after the fact."""
    kept: list[int] = []
    experiments = Experiment.objects.filter(assignments__customer_id__in=customer_ids).exclude(goal_event="").distinct()
    for experiment in experiments:
        # `now` at the end of the longest window still open: goal events stamped ahead of the clock count too
        now = timezone.now() + timedelta(seconds=experiment.window_s)
        first = _conversions(experiment, now).values("pk")[:1]
        kept += (Assignment.objects.filter(experiment=experiment, customer_id__in=customer_ids)
                 .annotate(goal=Subquery(first)).filter(goal__isnull=False).values_list("goal", flat=True))
    return kept


def _first_conversion(experiment: Experiment, now: datetime, floor: int | None = None) -> Subquery:
    """An assignment's conversion moment: the first of `_conversions`, else NULL."""
    column = "timestamp" if experiment.goal_event else "converted_at"
    return Subquery(_conversions(experiment, now, floor).values(column)[:1])


def converted_assignments(*, experiment: Experiment, now: datetime, floor: int | None = None) -> QuerySet:
    """The assignments of `exposed_assignments` with a conversion in their window. The test is a
    semi-join (EXISTS in WHERE, which the database plans as a join: e.g. the goal events, found
    by name, hashed by customer), not a lookup per assignment; annotate `_first_conversion` on it
    and the moment is looked up for the converted rows only. So what it costs follows the
    conversions and one pass over the assignments, however many assignments have none."""
    return exposed_assignments(experiment=experiment, now=now).filter(Exists(_conversions(experiment, now, floor)))


EXPOSED_PART, CONVERTED_PART = "exposed", "converted"


def _with_conversions(experiment: Experiment, now: datetime, *fields: str, converted_at: bool = False,
                      closed_only: bool = False, **expressions) -> QuerySet:
    """One statement (one snapshot): the exposures grouped by `fields` and `expressions`, then
    (UNION ALL) the converted ones grouped the same way, each row with `part` (EXPOSED_PART or
    CONVERTED_PART) and `n`; with `converted_at`, the converted rows also say the day (UTC) of
    their conversion (`converted_day`, NULL on the exposure rows). `closed_only`: only the
    exposures whose conversion window has closed by `now`."""
    def grouped(qs: QuerySet, part: str, day) -> QuerySet:
        columns = {**expressions, "part": Value(part, output_field=CharField())}
        if converted_at:
            columns["converted_day"] = day
        if closed_only:
            qs = qs.filter(assigned_at__lte=now - timedelta(seconds=experiment.window_s))
        return qs.values(*fields, **columns).annotate(n=Count("pk")).order_by()

    exposed = grouped(exposed_assignments(experiment=experiment, now=now), EXPOSED_PART,
                      Value(None, output_field=DateField()))
    floor = _events_floor(experiment, now) if experiment.goal_event else 0
    converted = converted_assignments(experiment=experiment, now=now, floor=floor)
    if converted_at:
        converted = converted.annotate(converted_at=_first_conversion(experiment, now, floor))
    return exposed.union(grouped(converted, CONVERTED_PART, TruncDate("converted_at", tzinfo=UTC)), all=True)


def daily_counts(*, experiment: Experiment, now: datetime) -> dict[str, Counter]:
    """group -> Counter of (day assigned, day converted or None) -> customers, counted by the database
    in one statement (UTC days; the same customers and conversions as `exposures_list`, without a
    row per assignment in Python, nor a lookup per assignment in the database: what the report
    and the 15-minute auto-retire read)."""
    return _daily_and_closed(experiment, now)[0]


@dataclass
class ClosedCounts:
    """What `_daily_and_closed` reads besides the daily counts: per group, the exposures whose
    conversion window has closed by `now` (for `Maturity`), and the closed exposures and their
    conversions by the look that first saw them closed (`looks`: group -> {look day: [n, x]}; the
    look at the end of a UTC day, today's at `now`). An exposure whose window closed is counted
    with every conversion in its window, so each look reads final outcomes only."""

    closed: Counter = field(default_factory=Counter)
    looks: dict[str, dict[date, list[int]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(
        lambda: [0, 0])))


def _daily_and_closed(experiment: Experiment, now: datetime) -> tuple[dict[str, Counter], ClosedCounts]:
    """`daily_counts`, and the closed exposures (`ClosedCounts`), from the same statement."""
    window = timedelta(seconds=experiment.window_s)
    closed_by = now - window
    exposed: dict[tuple, int] = Counter()
    converted: dict[tuple, Counter] = defaultdict(Counter)
    out = ClosedCounts()
    closes_at = ExpressionWrapper(F("assigned_at") + window, output_field=DateTimeField())
    for row in _with_conversions(experiment, now, "arm__name", "holdout", converted_at=True,
                                 assigned_day=TruncDate("assigned_at", tzinfo=UTC),
                                 closes_day=TruncDate(closes_at, tzinfo=UTC),
                                 closed=ExpressionWrapper(Q(assigned_at__lte=closed_by), output_field=BooleanField())):
        group = HOLDOUT if row["holdout"] else row["arm__name"]
        # the first look that sees the window closed: the end of the day it closes, or now for today's
        look = row["closes_day"] if row["closed"] else None
        key = (group, row["assigned_day"], look)
        if row["part"] == EXPOSED_PART:
            exposed[key] += row["n"]
            out.closed[group] += row["n"] if row["closed"] else 0
        else:
            converted[key][row["converted_day"]] += row["n"]
    counts: dict[str, Counter] = defaultdict(Counter)
    for (group, assigned_day, look), n in exposed.items():
        total = n
        for converted_day, x in converted[(group, assigned_day, look)].items():
            counts[group][(assigned_day, converted_day)] += min(x, n)
            n -= min(x, n)
        if n:
            counts[group][(assigned_day, None)] += n
        if look is not None:
            out.looks[group][look][0] += total
            out.looks[group][look][1] += total - n
    return dict(counts), out


def experiment_timeseries(
    *, experiment: Experiment, now: datetime | None = None, counts: dict[str, Counter] | None = None
) -> dict[str, list[dict]]:
    """Per group and day: cumulative exposures, conversions, rate and Wilson interval
    as they would have looked at the end of that day (what a peeking analyst saw)."""
    now = now or timezone.now()
    counts = counts if counts is not None else daily_counts(experiment=experiment, now=now)
    if not counts:
        return {}
    last = now.astimezone(UTC).date()
    first = min(assigned for group in counts.values() for assigned, _ in group)
    first = max(first, last - timedelta(days=MAX_DAYS - 1))  # long experiments: the latest days
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    series: dict[str, list[dict]] = {}
    for group in group_order(experiment, set(counts)):
        assigned, converted = Counter(), Counter()
        for (assigned_day, converted_day), n in counts[group].items():
            assigned[max(assigned_day, first)] += n  # earlier days count from the first one shown
            if converted_day is not None:
                converted[max(converted_day, first)] += n
        points, n, x = [], 0, 0
        for day in days:
            n, x = n + assigned[day], x + converted[day]
            lo, hi = wilson_interval(x, n, alpha=experiment.alpha)
            points.append({"day": day, "n": n, "x": x, "rate": x / n if n else 0.0, "low": lo, "high": hi})
        series[group] = points
    return series


def group_order(experiment: Experiment, present: set[str]) -> list[str]:
    """Arms in their admin order (control first), unknown names next, holdout last."""
    names = [a.name for a in experiment.arms.all()]
    ordered = [n for n in names if n in present] + sorted(present - set(names) - {HOLDOUT})
    return ordered + ([HOLDOUT] if HOLDOUT in present else [])


def _always_valid(looks: dict[str, dict[date, list[int]]], arm: str, control: str,
                  tau: float) -> tuple[float, float] | None:
    """The mSPRT p-value's running minimum over the daily looks, per direction: (over the looks
    where `arm` converted better than `control`, over those where it converted worse). Each look
    counts the customers whose conversion window had closed by then, with their conversions in the
    window (`ClosedCounts.looks`): a look on open windows would read an arm whose customers convert
    later as worse, and that look's p stayed in the minimum after the windows closed. Each
    direction's minimum is at least the minimum over every look, so each is an always-valid
    p-value too, and a claim is made in the direction of the looks that rejected."""
    if arm not in looks or control not in looks:
        return None
    better = worse = 1.0
    n = {arm: [0, 0], control: [0, 0]}
    for day in sorted(set(looks[arm]) | set(looks[control])):
        for group in n:
            n[group][0] += looks[group].get(day, (0, 0))[0]
            n[group][1] += looks[group].get(day, (0, 0))[1]
        (na, xa), (nc, xc) = n[arm], n[control]
        if na > 1 and nc > 1 and xa * nc != xc * na:
            p = msprt_pvalue(xa, na, xc, nc, tau=tau)
            if xa * nc > xc * na:
                better = min(better, p)
            else:
                worse = min(worse, p)
    return better, worse


def _set_always_valid(stats: GroupStats, looks: dict, arm: str, control: str, tau: float) -> None:
    sides = _always_valid(looks, arm, control, tau)
    if sides is not None:
        stats.p_better, stats.p_worse = sides
        stats.p_always_valid = min(sides)


def _within_allocations(experiment: Experiment, now: datetime, arms: list[str], control: str) -> dict[str, float]:
    """Bandit mode: arm -> Mantel-Haenszel p-value vs control, the strata being the recorded weight
    vectors (the customers assigned under one allocation), over the customers whose window has
    closed: one aggregate statement. Descriptive (fixed-horizon, not safe to peek at): what the
    report shows instead of the pooled comparison, which the bandit's changing split biases."""
    cells: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for row in _with_conversions(experiment, now, "arm__name", "holdout", "weights", closed_only=True):
        if row["holdout"]:
            continue
        stratum = tuple(sorted((row["weights"] or {}).items()))
        cells[stratum][row["arm__name"]][0 if row["part"] == EXPOSED_PART else 1] += row["n"]
    out = {}
    for arm in arms:
        strata = [(min(c[arm][1], c[arm][0]), c[arm][0], min(c[control][1], c[control][0]), c[control][0])
                  for c in cells.values()]
        p = mantel_haenszel_pvalue(strata)
        if p is not None:
            out[arm] = p
    return out


def _compare(stats: GroupStats, base: GroupStats, *, alpha: float) -> None:
    x1, n1, x2, n2 = stats.conversions, stats.exposures, base.conversions, base.exposures
    if n1 and n2:
        stats.diff = diff_interval(x1, n1, x2, n2, alpha=alpha)
        stats.rel = ratio_interval(x1, n1, x2, n2, alpha=alpha)
        stats.z, stats.p_value = two_proportion_ztest(x1, n1, x2, n2)


def experiment_analyze(*, experiment: Experiment, now: datetime | None = None, secondary: bool = True) -> Analysis:
    """Everything the report shows for one experiment, computed from the stored rows (counted by
    the database; per-customer rows only for secondary metrics, skipped with `secondary=False`)."""
    now = now or timezone.now()
    daily, closed = _daily_and_closed(experiment, now)
    series = experiment_timeseries(experiment=experiment, now=now, counts=daily)
    arms = list(Arm.objects.filter(experiment=experiment))
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for group, cells in daily.items():
        for (_, converted_day), n in cells.items():
            counts[group][0] += n
            counts[group][1] += n if converted_day is not None else 0
    groups: list[GroupStats] = []
    for arm in arms:
        n, x = counts.get(arm.name, [0, 0])
        groups.append(
            GroupStats(
                name=arm.name,
                is_control=arm.is_control,
                retired=arm.retired_at is not None,
                weight=arm.weight,
                exposures=n,
                conversions=x,
            )
        )
    holdout = None
    if HOLDOUT in counts or experiment.holdout_share > 0:
        n, x = counts.get(HOLDOUT, [0, 0])
        holdout = GroupStats(name=HOLDOUT, holdout=True, weight=experiment.holdout_share, exposures=n, conversions=x)
        groups.append(holdout)
    for g in groups:
        g.alpha = experiment.alpha
        g.rate = g.conversions / g.exposures if g.exposures else 0.0
        g.ci = wilson_interval(g.conversions, g.exposures, alpha=experiment.alpha)
    base = next((g for g in groups if g.is_control), None)
    tau = max(experiment.min_detectable_effect, 1e-4)
    for g in groups:
        if base is not None and g is not base and not g.holdout:
            _compare(g, base, alpha=experiment.alpha)
            _set_always_valid(g, closed.looks, g.name, base.name, tau)
    messaging = None
    if base is not None and holdout is not None and holdout.exposures and base.exposures:
        messaging = GroupStats(
            name=f"{base.name} vs holdout",
            exposures=base.exposures,
            conversions=base.conversions,
            rate=base.rate,
            ci=base.ci,
            alpha=experiment.alpha,
        )
        _compare(messaging, holdout, alpha=experiment.alpha)
        _set_always_valid(messaging, closed.looks, base.name, HOLDOUT, tau)
    metrics = set(experiment.secondary_metrics or []) if secondary else set()
    if metrics:  # the report page's extra columns (not the 15-minute auto-retire)
        secondary_values = secondary_metrics(experiment=experiment, metrics=metrics, now=now, groups=set(counts))
        for g in groups:
            g.secondary = secondary_values.get(g.name, {})

    warnings: list[str] = counted_time(experiment).notes()
    srm = None
    observed, expected = _expected_counts(experiment, now)
    if sum(observed.values()) and len(expected) > 1:
        srm = srm_check(observed, expected)
        if srm.mismatch:
            warnings.append(srm.message)
    plan = sample_size_per_arm(
        baseline=experiment.baseline_rate,
        mde=experiment.min_detectable_effect,
        alpha=experiment.alpha,
        power=experiment.power,
    )
    active = [g for g in groups if not g.holdout and not g.retired]
    min_n = min((g.exposures for g in active), default=0)
    if experiment.mode == ExperimentMode.BANDIT:
        for g in groups:
            g.decides = False
        if messaging is not None:  # the holdout's share is fixed, but control's customers come from every period
            messaging.decides = False
        warnings.append(BANDIT_NO_DECISION)
        compared = [g for g in groups if g.diff is not None and not g.holdout]
        if base is not None and compared:
            within = _within_allocations(experiment, now, [g.name for g in compared], base.name)
            for g in compared:
                g.p_stratified = within.get(g.name)
            warnings.append("Within the bandit's allocations (customers assigned under the same weights, windows "
                            "closed; Mantel-Haenszel, descriptive): " + "; ".join(
                                f"{g.name} vs {base.name} p = {_p_words(g.p_stratified)}" for g in compared) + ".")
    elif experiment.mode != ExperimentMode.FIXED:
        warnings.append(
            f"{experiment.get_mode_display()}: traffic is not split at fixed weights, so the fixed-horizon "
            "z-test is descriptive; read the always-valid p-value."
        )
    maturity = _maturity(experiment, now, {g.name: g.exposures for g in active}, closed.closed, plan)
    recommendation = _recommend(experiment, groups, srm, plan, maturity, now)
    return Analysis(
        experiment=experiment,
        groups=groups,
        srm=srm,
        plan_per_arm=plan,
        min_arm_exposures=min_n,
        maturity=maturity,
        messaging_effect=messaging,
        warnings=warnings,
        recommendation=recommendation,
        computed_at=now,
        series=series,
        daily=daily,
    )


def _p_words(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def duration_words(span: timedelta) -> str:
    """A span as people say it: 40 s, 7 min, 5 h, 2.5 days."""
    seconds = span.total_seconds()
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.1f} days".replace(".0 days", " days")


def _too_early(experiment: Experiment, maturity: Maturity, now: datetime) -> str:
    """What the report says while most compared exposures are inside their conversion window."""
    window = experiment.window_label
    passed = min(now - maturity.middle_at, maturity.window) if maturity.middle_at else timedelta(0)
    text = (f"Too early to conclude: {maturity.closed} of the {maturity.exposures} exposures have had their full "
            f"{window} conversion window, and for the middle one {duration_words(passed)} of it has passed "
            f"({passed / maturity.window:.0%}), so conversions so far are partial. "
            f"The result is readable from {_when(maturity.readable_at)}, when most windows have closed")
    if maturity.plan_at is not None:
        text += f" (the planned sample per arm has its full window from {_when(maturity.plan_at)})"
    return text + "; until then neither conclude nor retire an arm on these numbers."


def _recommend(experiment, groups, srm, plan, maturity: Maturity, now: datetime) -> str:
    if srm is not None and srm.mismatch:
        return "Do not act: the sample ratio is off. Find the assignment or logging bug first."
    if experiment.status == ExperimentStatus.CONCLUDED:
        return f"Concluded: {experiment.winner.name if experiment.winner else '-'} receives every entry."
    if not maturity.readable:
        return _too_early(experiment, maturity, now)
    better = [g for g in groups if g.direction == "better"]
    worse = [g for g in groups if g.direction == "worse" and not g.retired]
    parts = []
    if better:
        best = max(better, key=lambda g: g.diff[0])
        parts.append(f"{best.name} beats control (always-valid p = {best.p_claimed:.3g}): consider concluding.")
    if worse:
        parts.append("Worse than control: " + ", ".join(g.name for g in worse) + " (consider retiring).")
    if not parts:
        closed = maturity.min_arm_closed
        if closed < plan:
            when = f" (from {_when(maturity.plan_at)})" if maturity.plan_at is not None else ""
            parts.append(
                f"Keep running: {closed} of the {plan} customers per arm the fixed-horizon plan needs have had "
                f"their full {experiment.window_label} window{when}; do not act on the z-test p-value before then."
            )
        else:
            parts.append("Planned sample reached without a clear difference.")
    return " ".join(parts)


def experiment_auto_retire(*, experiment: Experiment, actor=None, now: datetime | None = None) -> list[Arm]:
    """Retire arms the always-valid test finds worse than control (safe to run on every look)."""
    return experiment_auto_retire_check(experiment=experiment, actor=actor, now=now)[0]


def experiment_auto_retire_check(*, experiment: Experiment, actor=None,
                                 now: datetime | None = None) -> tuple[list[Arm], str]:
    """Auto-retire, and why it retired nothing when it held back: (arms retired, "" or the
    reason). It holds back where the report concludes nothing: on a sample-ratio mismatch, while
    most exposures are inside their conversion window (an arm whose customers convert later
    would look worse on partial counts), and in bandit mode (BANDIT_NO_DECISION)."""
    from experiments.services.experiments import arm_retire

    if experiment.mode == ExperimentMode.BANDIT:
        return [], "bandit mode: the pooled comparison is not valid under the bandit's changing split"
    analysis = experiment_analyze(experiment=experiment, now=now, secondary=False)
    if analysis.srm is not None and analysis.srm.mismatch:
        return [], "the sample ratio is off"
    if not analysis.maturity.readable:
        return [], (f"too early: {analysis.maturity.closed} of {analysis.maturity.exposures} exposures have had "
                    f"their full {experiment.window_label} window (readable from "
                    f"{_when(analysis.maturity.readable_at)})")
    retired = []
    for g in analysis.groups:
        if g.holdout or g.is_control or g.retired or g.diff is None:
            continue
        if g.direction == "worse":
            arm = Arm.objects.get(experiment=experiment, name=g.name)
            retired.append(
                arm_retire(
                    arm=arm,
                    actor=actor,
                    now=now,
                    reason=f"auto-retired: {g.diff[0]:+.2%} vs control, always-valid p={g.p_claimed:.3g}",
                )
            )
    return retired, ""


def _delivery_flags() -> tuple[Q, Q] | None:
    """Q objects for opened/clicked deliveries, using whatever fields the channels app has."""
    try:
        Delivery = apps.get_model("channels_app", "Delivery")
    except LookupError:
        return None
    names = {f.name for f in Delivery._meta.get_fields()}
    statuses = {c[0] for c in Delivery._meta.get_field("status").choices or []} if "status" in names else set()
    opened, clicked = Q(pk__isnull=True), Q(pk__isnull=True)  # no row: nothing yet
    open_statuses = [s for s in ("opened", "clicked") if s in statuses]
    if open_statuses:
        opened |= Q(status__in=open_statuses)
    if "clicked" in statuses:
        clicked |= Q(status="clicked")
    if "opened_at" in names:
        opened |= Q(opened_at__isnull=False)
    if "clicked_at" in names:
        opened |= Q(clicked_at__isnull=False)
        clicked |= Q(clicked_at__isnull=False)
    return opened, clicked


EXPOSED = "customer__experiment_assignments__"  # from a customer's rows (deliveries, cases) to their assignment


def in_window_of_assignment(experiment: Experiment, now: datetime, *, at: str = "created_at") -> Q:
    """Rows of a customer's (a delivery, a case: `customer` foreign key) whose `at` falls in the
    window of the customer's assignment in this experiment, joined through EXPOSED (the customers
    and assignments of `exposed_assignments`): a join, not a list of customer ids."""
    window = timedelta(seconds=experiment.window_s)
    return Q(**{
        f"{EXPOSED}experiment": experiment, f"{EXPOSED}assigned_at__lte": now, "customer__merged_into__isnull": True,
        f"{at}__gte": F(f"{EXPOSED}assigned_at"), f"{at}__lte": F(f"{EXPOSED}assigned_at") + window,
    })


def group_of_assignment(prefix: str = "") -> Case:
    """The group of an assignment as an expression (HOLDOUT for the held out, else the arm's name)."""
    return Case(When(**{f"{prefix}holdout": True}, then=Value(HOLDOUT)), default=F(f"{prefix}arm__name"),
                output_field=CharField())


def middle_rows(order_by, *, partition_by) -> ExpressionWrapper:
    """0, 1 or 2 for the rows a median is read from (the middle one of an odd count, the two middle
    ones of an even count, in `order_by` order within each partition), other numbers elsewhere:
    filter on it between 0 and 2, and the database hands back two rows per partition at most."""
    rank = Window(RowNumber(), partition_by=partition_by, order_by=order_by)
    return rank * 2 - Window(Count("pk"), partition_by=partition_by)


def median_of_middle(values: list[float]) -> float | None:
    """`statistics.median` of a partition from its middle rows (see `middle_rows`)."""
    values = sorted(values)
    return (values[0] + values[1]) / 2 if len(values) == 2 else (values[0] if values else None)


# The delivery statuses of a message actually sent: channels_app.choices.SENT_STATUSES (a bounced,
# failed, suppressed or still pending one is not), spelled here since experiments does not import
# channels_app; a test keeps the two equal.
SENT_STATUSES = ("sent", "delivered", "opened", "clicked")


@without_jit()
def secondary_metrics(*, experiment: Experiment, metrics: set[str], now: datetime, groups: set[str]) -> dict[str, dict]:
    """group -> {metric: value, ...} for these groups (those with exposures), counted by the
    database per group (the customers of `exposures_list`). Open/click rates are over messages
    actually sent in the window."""
    out: dict[str, dict] = defaultdict(dict)
    if metrics & {Metric.OPEN_RATE, Metric.CLICK_RATE} and groups:
        flags = _delivery_flags()
        if flags is not None:
            Delivery = apps.get_model("channels_app", "Delivery")
            opened_q, clicked_q = flags
            rows = (
                Delivery.objects.filter(in_window_of_assignment(experiment, now))
                .filter(status__in=SENT_STATUSES)
                .values(group=group_of_assignment(EXPOSED))
                .annotate(sent=Count("pk"), opened=Count("pk", filter=opened_q), clicked=Count("pk", filter=clicked_q))
                .order_by()
            )
            sent, opened, clicked = Counter(), Counter(), Counter()
            for row in rows:
                sent[row["group"]] += row["sent"]
                opened[row["group"]] += row["opened"]
                clicked[row["group"]] += row["clicked"]
            for g in groups:
                if Metric.OPEN_RATE in metrics:
                    out[g]["open_rate"] = _ratio(opened[g], sent[g])
                if Metric.CLICK_RATE in metrics:
                    out[g]["click_rate"] = _ratio(clicked[g], sent[g])
                out[g]["messages"] = sent[g]
    if Metric.COMPLETION in metrics:
        # Two semi-joins on the run's id (in one statement), not a lookup of each assignment's run.
        exposed = exposed_assignments(experiment=experiment, now=now)
        runs = JourneyRun.objects.order_by()
        rows = (exposed.filter(run_id__in=runs.values("pk")).values(group=group_of_assignment(), done=Value(False))
                .annotate(n=Count("pk")).order_by()
                .union(exposed.filter(run_id__in=runs.filter(status="completed").values("pk"))
                       .values(group=group_of_assignment(), done=Value(True)).annotate(n=Count("pk")).order_by(),
                       all=True))
        done, total = Counter(), Counter()
        for row in rows:
            (done if row["done"] else total)[row["group"]] += row["n"]
        for g in groups:
            out[g]["completion"] = _ratio(min(done[g], total[g]), total[g])
    if Metric.RESOLUTION in metrics:
        hours = _resolution_hours(experiment, now)
        for g in groups:
            out[g]["resolution_time_h"] = median_of_middle(hours.get(g, []))
    return dict(out)


def _ratio(x: int, n: int) -> dict:
    lo, hi = wilson_interval(x, n)
    return {"x": x, "n": n, "rate": x / n if n else None, "low": lo, "high": hi}


def _resolution_hours(experiment: Experiment, now: datetime) -> dict[str, list[float]]:
    """Per group, the middle values (see `middle_rows`) of the hours from case opening to
    resolution, for cases opened in the window (needs the agents app's Case; optional)."""
    try:
        Cases = apps.get_model("agents", "Case")
    except LookupError:
        return {}
    names = {f.name for f in Cases._meta.get_fields()}
    if not {"customer", "created_at", "resolved_at"} <= names:
        return {}
    took = ExpressionWrapper(F("resolved_at") - F("created_at"), output_field=DurationField())
    rows = (
        Cases.objects.filter(in_window_of_assignment(experiment, now), resolved_at__isnull=False)
        .annotate(group=group_of_assignment(EXPOSED), took=took)
        .annotate(middle=middle_rows(F("took").asc(), partition_by=[F("group")]))
        .filter(middle__gte=0, middle__lte=2)
        .order_by()
        .values_list("group", "took")
    )
    out: dict[str, list[float]] = defaultdict(list)
    for group, took_ in rows:
        out[group].append(took_.total_seconds() / 3600)
    return out


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)
