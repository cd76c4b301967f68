"""Reports over an experiment: cohorts x arm, the funnel per workflow version, and attribution.

Attribution model (last touch within the window): a conversion at time T by a
customer assigned at A is credited to the last message (Delivery) the customer
was sent in [max(A, T - window), T], together with the customer's arm. With no
such message (always the case for holdout customers) the conversion is credited
to "(no message)" in that arm. Suppressed and failed deliveries never get credit.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.apps import apps
from django.utils import timezone

from experiments.choices import HOLDOUT, CohortKind
from experiments.models import Experiment
from experiments.services.analysis import Exposure, exposures_list, group_order
from experiments.stats import wilson_interval
from journeys.models import Customer, Edge, JourneyRun, Step, StepExecution, WorkflowVersion

NO_MESSAGE = "(no message)"
FINISHED = ("completed", "exited", "failed")


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


def _deliveries(customer_ids: list[int], since: datetime, *, credited_only: bool):
    """(customer_id, at, label, channel kind) of messages, oldest first; empty without the channels app."""
    try:
        Delivery = apps.get_model("channels_app", "Delivery")
    except LookupError:
        return []
    qs = Delivery.objects.filter(customer_id__in=customer_ids, created_at__gte=since)
    if credited_only:
        qs = qs.exclude(status__in=["suppressed", "failed"])
    rows = qs.order_by("created_at", "id").values_list(
        "customer_id", "created_at", "template__name", "step_key", "channel__kind"
    )
    return [(cid, at, template or step or "message", kind) for cid, at, template, step, kind in rows]


def _signup_month(customer: Customer) -> str:
    raw = (customer.traits or {}).get("signup_date") or (customer.traits or {}).get("signed_up_at")
    if isinstance(raw, str) and len(raw) >= 7:
        return raw[:7]
    moment = customer.first_seen or customer.created_at
    return moment.strftime("%Y-%m") if moment else "(unknown)"


def experiment_cohorts(
    *, experiment: Experiment, kind: str, trait: str = "", now: datetime | None = None
) -> CohortTable:
    """Conversion by cohort (entry week, signup month, a trait, channel) x arm."""
    if kind not in CohortKind.values:
        raise ValueError(f"unknown cohort kind {kind!r}")
    if kind == CohortKind.TRAIT and not trait:
        raise ValueError("a trait cohort needs the trait name")
    exposures = exposures_list(experiment=experiment, now=now)
    customers = {c.pk: c for c in Customer.objects.filter(pk__in=[e.customer_id for e in exposures])}
    channel_of: dict[int, str] = {}
    if kind == CohortKind.CHANNEL and exposures:
        window = timedelta(seconds=experiment.window_s)
        first = {e.customer_id: e for e in exposures}
        for cid, at, _label, channel in _deliveries(
            list(first), min(e.assigned_at for e in exposures), credited_only=False
        ):
            e = first[cid]
            if cid not in channel_of and e.assigned_at <= at <= e.assigned_at + window:
                channel_of[cid] = channel
    cells: dict[tuple[str, str], Cell] = defaultdict(Cell)
    for e in exposures:
        if kind == CohortKind.ENTRY_WEEK:
            year, week, _ = e.assigned_at.isocalendar()
            label = f"{year}-W{week:02d}"
        elif kind == CohortKind.SIGNUP_MONTH:
            label = _signup_month(customers[e.customer_id])
        elif kind == CohortKind.TRAIT:
            value = (customers[e.customer_id].traits or {}).get(trait)
            label = "(none)" if value in (None, "") else str(value)
        else:
            label = channel_of.get(e.customer_id, NO_MESSAGE)
        cell = cells[(label, e.group)]
        cell.n += 1
        cell.x += e.converted_at is not None
    groups = group_order(experiment, {g for _, g in cells})
    return CohortTable(kind=kind, trait=trait, cohorts=sorted({c for c, _ in cells}), groups=groups, cells=dict(cells))


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


def version_funnel(*, version: WorkflowVersion, experiment: Experiment | None = None) -> Funnel:
    """Entered, reached each step, converted, dropped out (finished without converting, last seen
    at that step) and the median time from the step reached before, from StepExecution rows.
    With an experiment, counts are also split by the arm stored in the run's variables."""
    runs = {
        pk: (status, converted, variables)
        for pk, status, converted, variables in JourneyRun.objects.filter(version=version).values_list(
            "pk", "status", "converted_at", "variables"
        )
    }

    def group_of(variables: dict) -> str | None:
        if experiment is None or (variables or {}).get("experiment") != experiment.pk:
            return None
        return HOLDOUT if variables.get("holdout") else variables.get("experiment_arm")

    first_at: dict[int, dict[str, datetime]] = defaultdict(dict)
    for run_id, key, started in (
        StepExecution.objects.filter(run__version=version)
        .order_by("run_id", "started_at", "id")
        .values_list("run_id", "step_key", "started_at")
    ):
        first_at[run_id].setdefault(key, started)
    order = _step_order(version)
    rows = {s.key: FunnelRow(step=s.key, kind=s.kind) for s in order}
    gaps: dict[str, list[float]] = defaultdict(list)
    entered_by, converted_by = Counter(), Counter()
    for run_id, (status, converted, variables) in runs.items():
        group = group_of(variables)
        if group:
            entered_by[group] += 1
            converted_by[group] += converted is not None
        visited = sorted(first_at.get(run_id, {}).items(), key=lambda kv: kv[1])
        for i, (key, at) in enumerate(visited):
            row = rows.setdefault(key, FunnelRow(step=key, kind="?"))
            row.reached += 1
            if group:
                row.by_group[group] = row.by_group.get(group, 0) + 1
            if i:
                gaps[key].append((at - visited[i - 1][1]).total_seconds())
        if visited and status in FINISHED and converted is None:
            rows[visited[-1][0]].dropped += 1
    for key, values in gaps.items():
        rows[key].median_from_previous_s = statistics.median(values)
    groups = group_order(experiment, set(entered_by)) if experiment else []
    return Funnel(
        version=version,
        entered=len(runs),
        converted=sum(1 for r in runs.values() if r[1] is not None),
        in_progress=sum(1 for r in runs.values() if r[0] not in FINISHED),
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


def experiment_attribution(*, experiment: Experiment, now: datetime | None = None) -> list[Credit]:
    """Conversions credited by last touch within the window (see the module docstring)."""
    now = now or timezone.now()
    exposures: list[Exposure] = [e for e in exposures_list(experiment=experiment, now=now) if e.converted_at]
    if not exposures:
        return []
    window = timedelta(seconds=experiment.window_s)
    by_customer: dict[int, list[tuple]] = defaultdict(list)
    for cid, at, label, channel in _deliveries(
        [e.customer_id for e in exposures], min(e.assigned_at for e in exposures), credited_only=True
    ):
        by_customer[cid].append((at, label, channel))
    credits: Counter = Counter()
    for e in exposures:
        start = max(e.assigned_at, e.converted_at - window)
        touches = [t for t in by_customer.get(e.customer_id, []) if start <= t[0] <= e.converted_at]
        label, channel = (touches[-1][1], touches[-1][2]) if touches else (NO_MESSAGE, "")
        credits[(e.group, label, channel)] += 1
    order = {g: i for i, g in enumerate(group_order(experiment, {g for g, _, _ in credits}))}
    return [Credit(g, m, c, n) for (g, m, c), n in sorted(credits.items(), key=lambda kv: (order[kv[0][0]], -kv[1]))]
