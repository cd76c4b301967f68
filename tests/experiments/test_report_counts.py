"""The experiment report is counted by the database: its cohorts (entry week, signup month, a
trait, channel), secondary metrics, funnel and attribution are those the per-customer exposures
(`exposures_list`) give, on a mixed data set (traits of every JSON type, messages in and out of
the window, suppressed and failed ones, cases, revisited steps, runs of other experiments, a
merged profile); a trait with more values than a table shows is cut to the top values and the
rest; and the page and its CSV cost the same number of queries at 50 and at 500 assignments,
none of them with a list of ids as parameters."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.choices import HOLDOUT
from experiments.models import Assignment, Experiment
from experiments.services.analysis import (
    experiment_analyze,
    exposures_list,
    group_counts,
    group_order,
)
from experiments.services.report_export import report_rows
from experiments.services.reports import (
    NO_MESSAGE,
    OTHER,
    TOP_COHORTS,
    Cell,
    experiment_attribution,
    experiment_cohorts,
    version_funnel,
)
from journeys.models import Customer, Event, JourneyRun, StepExecution
from journeys.services.internal_events import internal_source
from tests.experiments.factories import make_customers, make_experiment, split_then_wait

pytestmark = pytest.mark.django_db

ARMS = [{"name": "control", "control": True}, {"name": "b"}]
WINDOW = timedelta(days=2)
METRICS = ["open_rate", "click_rate", "completion", "resolution_time"]
TRAITS = [  # plan: the trait cohorts; signup_date / signed_up_at: the signup months
    {"plan": "pro", "signup_date": "2025-11-03"},
    {"plan": "free", "signed_up_at": "2025-10-30T10:00:00Z"},
    {"plan": 1, "signup_date": "2025-1"},  # too short: the month first seen
    {"plan": "1", "signup_date": "", "signed_up_at": "2025-09-01"},  # false: signed_up_at
    {"plan": 1.0, "signup_date": 0, "signed_up_at": "2025-08-15"},
    {"plan": True, "signup_date": 5, "signed_up_at": "2025-08-15"},  # true but not text: first seen
    {"plan": "True", "signup_date": [], "signed_up_at": "2024-12"},
    {"plan": None, "signup_date": {}, "signed_up_at": 20250101},
    {"plan": "", "signup_date": False, "signed_up_at": "2025-07-04"},
    {"plan": [1, "a"], "signup_date": None, "signed_up_at": "short"},
    {"plan": {"tier": 2}, "signup_date": 0.0, "signed_up_at": "2025-06-30"},
    {"plan": 0, "signup_date": "2025-05-05T00:00", "signed_up_at": "x"},
    {"plan": False, "signup_date": [0]},
    {},
    {"plan": "é-plan", "signup_date": "Ünïcödé-date"},
    {"plan": 2.5, "signup_date": -0.0, "signed_up_at": "2023-03-03"},
]


def mixed_experiment(publish, n: int, *, key: str = "mix", traits=None) -> tuple[Experiment, datetime]:
    """An experiment (control / b, a fifth held out, a goal event, a 2-day window, every secondary
    metric) with `n` customers assigned over nine days, and their runs, steps, goal events,
    messages and cases, bulk-written. Returns (experiment, now)."""
    from agents.models import Case
    from channels_app.models import Channel, Delivery, MessageTemplate

    experiment = make_experiment(key=key, arms=ARMS, goal_event="Buy", window_s=int(WINDOW.total_seconds()),
                                 holdout_share=0.2, secondary_metrics=METRICS)
    version = publish(split_then_wait(key))
    arms = {a.name: a for a in experiment.arms.all()}
    customers = make_customers(n, prefix=f"{key}-", first_seen=datetime(2025, 3, 9, 23, 30, tzinfo=UTC))
    traits = traits or TRAITS
    for i, c in enumerate(customers):
        c.traits = traits[i % len(traits)]
        c.first_seen = None if i % 10 == 7 else datetime(2025, 1 + i % 12, 28, 23, 30, tzinfo=UTC)
    Customer.objects.bulk_update(customers, ["traits", "first_seen"])
    now = timezone.now()
    at = {c.pk: now - timedelta(days=i % 9, hours=(i * 7) % 24, minutes=i) for i, c in enumerate(customers)}
    runs = []
    for i, c in enumerate(customers):
        holdout, arm = i % 5 == 0, ["control", "b"][i % 2]
        variables = {"experiment": experiment.pk, "experiment_arm": arm, "holdout": holdout}
        if i % 13 == 4:
            variables = {"experiment": experiment.pk + 1000, "experiment_arm": "other"}
        elif i % 13 == 9:
            variables = {}
        runs.append(JourneyRun(workflow=version.workflow, version=version, customer=c, trigger_key=f"t{i}",
                               status=["completed", "exited", "active", "failed"][i // 2 % 4], variables=variables,
                               converted_at=at[c.pk] + timedelta(hours=5) if i % 3 == 0 else None))
    JourneyRun.objects.bulk_create(runs)
    executions = []
    for i, (c, run) in enumerate(zip(customers, runs)):
        t = at[c.pk]
        wait = "wait_a" if i % 2 == 0 else "wait_b"
        steps = [("split", t), (wait, t + timedelta(minutes=i % 7, seconds=i % 3))]
        if i % 6 == 2:  # both waits at the same moment: the first one written is visited first
            steps.append(("wait_b" if wait == "wait_a" else "wait_a", steps[-1][1]))
        if i % 5 == 1:  # back to the split (a revisit: still the first visit counts)
            steps.append(("split", t + timedelta(hours=1)))
        if i % 11 == 3:  # a step no longer in the version
            steps.append(("gone", t + timedelta(hours=2, microseconds=i)))
        if i % 17 == 5:
            continue  # a run that never got to a step
        visits = Counter()
        for key_, started in steps:
            visits[key_] += 1
            executions.append(StepExecution(run=run, step_key=key_, step_kind="delay", visit=visits[key_],
                                            started_at=started))
    StepExecution.objects.bulk_create(executions)
    Assignment.objects.bulk_create([
        Assignment(experiment=experiment, customer=c, arm=arms[["control", "b"][i % 2]], holdout=i % 5 == 0,
                   bucket=(i % 100) / 100, weights={"control": 0.4, "b": 0.4, HOLDOUT: 0.2}, run_id=run.pk,
                   version_id=version.pk, assigned_at=at[c.pk])
        for i, (c, run) in enumerate(zip(customers, runs))
    ])
    source = internal_source()
    goals = []
    for i, c in enumerate(customers):
        offsets = {0: [timedelta(hours=20)], 1: [timedelta(hours=3), timedelta(hours=30)],
                   2: [WINDOW + timedelta(hours=1)], 3: [-timedelta(hours=1)], 4: [], 5: [timedelta(days=1)]}[i % 6]
        for k, offset in enumerate(offsets):
            goals.append(Event(source=source, message_id=f"{key}-buy-{k}-{c.pk}", type="track", name="Buy",
                               customer=c, timestamp=at[c.pk] + offset, received_at=at[c.pk] + offset,
                               status="processed"))
    Event.objects.bulk_create(goals)
    email = Channel.objects.get_or_create(name="email", defaults={"kind": "email"})[0]
    sms = Channel.objects.get_or_create(name="sms", defaults={"kind": "sms"})[0]
    welcome = MessageTemplate.objects.get_or_create(name="welcome", defaults={"subject": "hi", "body": "hi"})[0]
    reminder = MessageTemplate.objects.get_or_create(name="reminder", defaults={"subject": "psst", "body": "p"})[0]
    messages = []  # (delivery, sent at)
    for i, c in enumerate(customers):
        t = at[c.pk]
        if i % 7 == 6:
            continue  # never sent anything
        if i % 5 == 0:  # held out: suppressed
            messages.append((Delivery(customer=c, channel=email, template=welcome, status="suppressed"),
                             t + timedelta(hours=1)))
            continue
        messages.append((Delivery(customer=c, channel=email, template=welcome, status="sent",
                                  opened_at=t if i // 2 % 2 else None), t + timedelta(hours=1)))
        messages.append((Delivery(customer=c, channel=sms, template=reminder,
                                  status=["sent", "clicked", "suppressed", "failed"][i // 2 % 4]), t + timedelta(hours=19)))
        if i % 3 == 0:  # no template: the step's name, or "message"
            messages.append((Delivery(customer=c, channel=sms, step_key="nudge" if i % 4 == 2 else "", status="opened"),
                             t + timedelta(hours=19, minutes=30)))
        messages.append((Delivery(customer=c, channel=email, template=welcome, status="sent"), t + WINDOW * 2))
        if i % 8 == 3:  # before the assignment
            messages.append((Delivery(customer=c, channel=sms, template=reminder, status="sent"),
                             t - timedelta(hours=1)))
    for k, (delivery, _) in enumerate(messages):
        delivery.idempotency_key = f"{key}-{k}"
    Delivery.objects.bulk_create([d for d, _ in messages])
    for delivery, sent in messages:
        Delivery.objects.filter(pk=delivery.pk).update(created_at=sent, sent_at=sent)
    cases = []
    for i, c in enumerate(customers):
        if i % 3:
            continue
        opened = at[c.pk] + (WINDOW + timedelta(hours=3) if i % 8 == 3 else timedelta(hours=2))
        resolved = None if i % 12 == 6 else opened + timedelta(hours=i % 13, minutes=i)
        cases.append((Case.objects.create(customer=c), opened, resolved))
    for case, opened, resolved in cases:
        Case.objects.filter(pk=case.pk).update(created_at=opened, resolved_at=resolved)
    if n > 12:
        Customer.objects.filter(pk=customers[11].pk).update(merged_into=customers[12])  # left out
    return Experiment.objects.get(pk=experiment.pk), now


# The report as computed from the per-customer exposures before it was counted in SQL.

def reference_cohorts(experiment, kind, trait, now) -> tuple[list[str], list[str], dict]:
    from channels_app.models import Delivery

    exposures = exposures_list(experiment=experiment, now=now)
    customers = {c.pk: c for c in Customer.objects.filter(pk__in=[e.customer_id for e in exposures])}
    first = {e.customer_id: e for e in exposures}
    channel_of = {}
    for cid, at, channel in (Delivery.objects.filter(customer_id__in=list(first)).order_by("created_at", "id")
                             .values_list("customer_id", "created_at", "channel__kind")):
        e = first[cid]
        if cid not in channel_of and e.assigned_at <= at <= e.assigned_at + WINDOW:
            channel_of[cid] = channel
    cells = defaultdict(Cell)
    for e in exposures:
        traits = customers[e.customer_id].traits or {}
        if kind == "entry_week":
            year, week, _ = e.assigned_at.isocalendar()
            label = f"{year}-W{week:02d}"
        elif kind == "signup_month":
            raw = traits.get("signup_date") or traits.get("signed_up_at")
            moment = customers[e.customer_id].first_seen or customers[e.customer_id].created_at
            label = raw[:7] if isinstance(raw, str) and len(raw) >= 7 else moment.strftime("%Y-%m")
        elif kind == "trait":
            value = traits.get(trait)
            label = "(none)" if value in (None, "") else str(value)
        else:
            label = channel_of.get(e.customer_id, NO_MESSAGE)
        cells[(label, e.group)].n += 1
        cells[(label, e.group)].x += e.converted_at is not None
    return sorted({c for c, _ in cells}), group_order(experiment, {g for _, g in cells}), dict(cells)


def reference_secondary(experiment, now) -> dict[str, dict]:
    from agents.models import Case
    from channels_app.models import Delivery

    exposures = {e.customer_id: e for e in exposures_list(experiment=experiment, now=now)}
    sent, opened, clicked = Counter(), Counter(), Counter()
    for d in Delivery.objects.filter(customer_id__in=list(exposures)).exclude(status__in=["suppressed", "failed"]):
        e = exposures[d.customer_id]
        if e.assigned_at <= d.created_at <= e.assigned_at + WINDOW:
            sent[e.group] += 1
            opened[e.group] += d.status in ("opened", "clicked") or d.opened_at is not None or d.clicked_at is not None
            clicked[e.group] += d.status == "clicked" or d.clicked_at is not None
    runs = dict(JourneyRun.objects.values_list("pk", "status"))
    done, total = Counter(), Counter()
    for e in exposures.values():
        if e.run_id in runs:
            total[e.group] += 1
            done[e.group] += runs[e.run_id] == "completed"
    hours = defaultdict(list)
    for case in Case.objects.filter(customer_id__in=list(exposures), resolved_at__isnull=False):
        e = exposures[case.customer_id]
        if e.assigned_at <= case.created_at <= e.assigned_at + WINDOW:
            hours[e.group].append((case.resolved_at - case.created_at).total_seconds() / 3600)
    out = {}
    for g in {e.group for e in exposures.values()}:
        out[g] = {"open_rate": (opened[g], sent[g]), "click_rate": (clicked[g], sent[g]), "messages": sent[g],
                  "completion": (done[g], total[g]),
                  "resolution_time_h": statistics.median(hours[g]) if hours[g] else None}
    return out


def reference_funnel(version, experiment) -> dict:
    runs = {pk: (status, converted, variables) for pk, status, converted, variables in
            JourneyRun.objects.filter(version=version).values_list("pk", "status", "converted_at", "variables")}

    def group_of(variables):
        if (variables or {}).get("experiment") != experiment.pk:
            return None
        return HOLDOUT if variables.get("holdout") else variables.get("experiment_arm")

    first_at = defaultdict(dict)
    for run_id, key, started in (StepExecution.objects.filter(run__version=version)
                                 .order_by("run_id", "started_at", "id").values_list("run_id", "step_key", "started_at")):
        first_at[run_id].setdefault(key, started)
    rows = {s.key: {"reached": 0, "dropped": 0, "by_group": Counter()} for s in version.steps.all()}
    gaps = defaultdict(list)
    entered_by, converted_by = Counter(), Counter()
    for run_id, (status, converted, variables) in runs.items():
        group = group_of(variables)
        if group:
            entered_by[group] += 1
            converted_by[group] += converted is not None
        visited = sorted(first_at.get(run_id, {}).items(), key=lambda kv: kv[1])
        for i, (key, at) in enumerate(visited):
            row = rows.setdefault(key, {"reached": 0, "dropped": 0, "by_group": Counter()})
            row["reached"] += 1
            if group:
                row["by_group"][group] += 1
            if i:
                gaps[key].append((at - visited[i - 1][1]).total_seconds())
        if visited and status in ("completed", "exited", "failed") and converted is None:
            rows[visited[-1][0]]["dropped"] += 1
    return {
        "entered": len(runs), "converted": sum(1 for r in runs.values() if r[1] is not None),
        "in_progress": sum(1 for r in runs.values() if r[0] not in ("completed", "exited", "failed")),
        "steps": {k: (r["reached"], r["dropped"], statistics.median(gaps[k]) if gaps[k] else None, dict(r["by_group"]))
                  for k, r in rows.items()},
        "entered_by_group": dict(entered_by), "converted_by_group": dict(converted_by),
    }


def reference_attribution(experiment, now) -> dict[tuple[str, str, str], int]:
    from channels_app.models import Delivery

    exposures = [e for e in exposures_list(experiment=experiment, now=now) if e.converted_at]
    touches = defaultdict(list)
    for d in (Delivery.objects.filter(customer_id__in=[e.customer_id for e in exposures])
              .exclude(status__in=["suppressed", "failed"]).order_by("created_at", "id").select_related("template",
                                                                                                      "channel")):
        touches[d.customer_id].append((d.created_at, (d.template.name if d.template else "") or d.step_key or "message",
                                       d.channel.kind))
    credits = Counter()
    for e in exposures:
        start = max(e.assigned_at, e.converted_at - WINDOW)
        mine = [t for t in touches[e.customer_id] if start <= t[0] <= e.converted_at]
        credits[(e.group, mine[-1][1], mine[-1][2]) if mine else (e.group, NO_MESSAGE, "")] += 1
    return dict(credits)


@pytest.fixture
def mixed(publish):
    return mixed_experiment(publish, 90)


@pytest.mark.parametrize("kind", ["entry_week", "signup_month", "trait", "channel"])
def test_cohorts_are_those_of_the_exposures(mixed, kind):
    experiment, now = mixed
    trait = "plan" if kind == "trait" else ""

    with timezone.override("Pacific/Kiritimati"):  # UTC+14: weeks and months are UTC ones whatever the zone
        table = experiment_cohorts(experiment=experiment, kind=kind, trait=trait, now=now)

    cohorts, groups, cells = reference_cohorts(experiment, kind, trait, now)
    assert (table.cohorts, table.groups, table.cells) == (cohorts, groups, cells)
    assert len(cohorts) > 1 and sum(c.x for c in cells.values()) > 5
    if kind == "trait":  # 1, 1.0, "1", True, "True", [], {}, nested: apart as Python tells them apart
        assert {"1", "1.0", "True", "[1, 'a']", "{'tier': 2}", "0", "False", "(none)", "é-plan"} <= set(cohorts)


def test_secondary_metrics_are_those_of_the_exposures(mixed):
    experiment, now = mixed

    analysis = experiment_analyze(experiment=experiment, now=now)

    expected = reference_secondary(experiment, now)
    got = {}
    for g in analysis.groups:
        s = g.secondary
        got[g.name] = {"open_rate": (s["open_rate"]["x"], s["open_rate"]["n"]),
                       "click_rate": (s["click_rate"]["x"], s["click_rate"]["n"]), "messages": s["messages"],
                       "completion": (s["completion"]["x"], s["completion"]["n"]),
                       "resolution_time_h": s["resolution_time_h"]}
    assert got == expected
    assert got[HOLDOUT]["messages"] == 0  # its messages were suppressed
    assert all(v["resolution_time_h"] is not None and v["completion"][0] for v in got.values())
    assert all(got[arm]["messages"] and got[arm]["open_rate"][0] and got[arm]["click_rate"][0] for arm in ("control", "b"))


def test_funnel_is_that_of_the_runs_and_steps(mixed):
    experiment, _ = mixed
    version = JourneyRun.objects.first().version

    funnel = version_funnel(version=version, experiment=experiment)

    expected = reference_funnel(version, experiment)
    got = {"entered": funnel.entered, "converted": funnel.converted, "in_progress": funnel.in_progress,
           "steps": {r.step: (r.reached, r.dropped, r.median_from_previous_s, r.by_group) for r in funnel.rows},
           "entered_by_group": funnel.entered_by_group, "converted_by_group": funnel.converted_by_group}
    assert got == expected
    assert [r.step for r in funnel.rows] == ["split", "wait_a", "wait_b", "gone"]
    assert funnel.groups == ["control", "b", HOLDOUT]
    assert sum(r.dropped for r in funnel.rows) > 10 and funnel.rows[-1].kind == "?"


def test_attribution_is_that_of_the_exposures(mixed):
    experiment, now = mixed

    credits = experiment_attribution(experiment=experiment, now=now)

    assert {(c.group, c.message, c.channel): c.conversions for c in credits} == reference_attribution(experiment, now)
    assert {c.message for c in credits} >= {"welcome", "reminder", "nudge", "message", NO_MESSAGE}
    order = {g: i for i, g in enumerate(group_order(experiment, {c.group for c in credits}))}
    ranks = [(order[c.group], -c.conversions) for c in credits]
    assert ranks == sorted(ranks)  # by arm, the most credited first


def test_a_trait_with_more_values_than_a_table_shows_keeps_the_top_ones_and_the_rest(publish):
    """Given a trait with a value per customer (an email) but for a few shared ones, when the
    cohort table is made, then it shows the shared values first and every other as one row, and
    its cells still add up to each group's exposures and conversions."""
    traits = [{"email": f"u{i}@example.com"} for i in range(97)] + [{"email": "shared@example.com"}] * 3
    experiment, now = mixed_experiment(publish, 200, key="emails", traits=traits)

    table = experiment_cohorts(experiment=experiment, kind="trait", trait="email", now=now)

    assert len(table.cohorts) == TOP_COHORTS + 1 and table.cohorts[-1] == OTHER
    assert "shared@example.com" in table.cohorts
    assert sum(table.cell("shared@example.com", g).n for g in table.groups) == 6
    counts = group_counts(experiment=experiment, now=now)
    for group, (n, x) in counts.items():
        assert sum(table.cell(c, group).n for c in table.cohorts) == n
        assert sum(table.cell(c, group).x for c in table.cohorts) == x


def report_queries(client, experiment) -> tuple[list[int], int]:
    """(the queries of each page and CSV of the report, the most parameters one of them had)."""
    page = reverse("admin:experiments_experiment_report", args=[experiment.pk])
    export = reverse("admin:experiments_experiment_csv", args=[experiment.pk])
    calls = [(page, {}), (page, {"kind": "trait", "trait": "plan"}), (page, {"kind": "signup_month"}),
             (page, {"kind": "channel"})]
    calls += [(export, {"section": s, "kind": "trait", "trait": "plan"})
              for s in ("arms", "timeseries", "cohorts", "funnel", "attribution")]
    params: list[int] = []

    def counted(execute, sql, params_, many, context):
        params.append(len(params_ or ()))
        return execute(sql, params_, many, context)

    counts = []
    with connection.execute_wrapper(counted):
        for url, query in calls:
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url, query)
            assert response.status_code == 200, (url, query)
            counts.append(len(queries))
    return counts, max(params)


def test_the_report_costs_the_same_queries_at_50_and_500_assignments_and_no_list_of_ids(publish, admin_client):
    small, _ = mixed_experiment(publish, 50, key="small")
    big, _ = mixed_experiment(publish, 500, key="big")

    small_queries, small_params = report_queries(admin_client, small)
    big_queries, big_params = report_queries(admin_client, big)

    assert big_queries == small_queries
    assert max(small_params, big_params) <= 100
    rows = report_rows(experiment=big, section="cohorts", kind="trait", trait="plan")
    assert 1 < len(rows) <= (TOP_COHORTS + 1) * 3 + 1  # a row per cohort and group
