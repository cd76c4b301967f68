"""Benchmark: the experiment analysis (the report, and auto-retire every 15 minutes) at campaign size.

A running A/B experiment with a 10% holdout and a goal event ("Buy", 7-day window), on a private
PostgreSQL: `--customers` customers assigned over 30 days (INSERT ... SELECT FROM generate_series,
the weights recorded as the engine records them) and a goal event for one in five, some inside
their window and some after it. Timed, best of `--rounds`:

- `experiment_auto_retire` (what the `experiments.refresh` schedule runs for an experiment with
  auto-retire on: the whole analysis with its daily series, SRM and always-valid p-values);
- the baseline: `group_counts`, one aggregate statement over the same assignments and events
  (the bandit's per-arm counts: the least a look at the experiment can cost).

Ratio = analysis / baseline (target: <= 3). Also reported: the Python memory the analysis
allocated at its peak (tracemalloc). Before the analysis was counted in SQL it read every
assignment into Python, with its conversion, three times over.

--broadcast: the shape of a cron broadcast a few minutes after its send (what ops open then): every
assignment made within one minute, ten minutes ago; each assigned customer has a run of a published
workflow version (split -> send_a / send_b, the holdout exits at the split) with its step
executions, a sent message (a Delivery) and its "Message Sent" event, and an identify event from
before the send; a goal event for one in five (at the time of the look). The report then has its
funnel, secondary metrics and attribution over real rows, and the event table holds more than goal
events.

--history-events N: before the experiment, N events of the year before it (received over a month
before its first assignment, a third of them "Buy"), in partitions of --partition-ids ids (the
production default is 10,000,000; a small size stands in for a year of a busy install's events).
The goal queries skip those partitions (events_id_floor); before, each customer's probe went
through every partition. Reported: `partitions`, `history_events`.

The report page (`report_s`, best of `--rounds`: the admin page through Django's test client, as
a superuser: the analysis with the experiment's secondary metrics, the daily series, the entry-week
cohorts, funnels and attribution), the same page broken down by a trait with 1,000 values
(`report_trait_s`: the `ltv` trait; the table shows the top values and the rest) and the five CSV
sections one after the other (`csv_s`). Before they were counted in SQL they read every assignment
into Python several times and sent lists of every customer id as parameters (43.7 s for the page
at 200,000 assignments).

Also timed once: `nba_train` on a trait (`ltv`), the next-best-action model the same refresh retrains
daily for a personalized experiment (`nba_s`, `nba_peak_mb`, `nba_samples`): it learns from at most
NBA_TRAIN_SAMPLES (50,000) exposures, where it read every assignment and customer before.

    .venv/bin/python bench/experiments_analysis.py [--customers 300000] [--rounds 3]

Last stdout line: {"bench": "experiments_analysis", "ratio": ..., "analysis_s": ..., "baseline_s": ..., ...}
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import django_in_process, exit_on_sigterm, log, postgres, report  # noqa: E402

CUSTOMERS = """
INSERT INTO journeys_customer (external_id, email, phone, timezone, locale, traits, first_seen, last_seen,
                               last_engaged_at, stage, merged_into_id, created_at, updated_at)
SELECT 'u-' || g, '', '', 'UTC', '', jsonb_build_object('ltv', g %% 1000), now(), now(), NULL, '', NULL, now(), now()
FROM generate_series(1, %(n)s) AS g
"""

# Arms by the customer's id (control / b, a tenth in the holdout), assigned over the last 30 days.
ASSIGNMENTS = """
INSERT INTO experiments_assignment (experiment_id, customer_id, arm_id, holdout, via, bucket, weights, scores,
                                    run_id, version_id, assigned_at)
SELECT %(experiment)s, c.id, CASE WHEN (c.id / 7) %% 2 = 0 THEN %(control)s ELSE %(b)s END, c.id %% 10 = 0, 'hash',
       (c.id %% 1000) / 1000.0, '{"control": 0.45, "b": 0.45, "holdout": 0.1}', '{}', NULL, NULL,
       now() - (c.id %% 43200) * interval '1 minute'
FROM journeys_customer c
"""

# A broadcast: everyone assigned within the same minute, ten minutes before the look.
ASSIGNMENTS_BROADCAST = ASSIGNMENTS.replace("now() - (c.id %% 43200) * interval '1 minute'",
                                            "now() - interval '10 minutes' + (c.id %% 60) * interval '1 second'")

# One customer in five buys: most inside the 7-day window, every third of those after it.
GOALS = """
INSERT INTO journeys_event (source_id, message_id, type, name, user_id, anonymous_id, previous_id, group_id,
                            category, channel, version, customer_id, properties, traits, context, integrations,
                            metadata, other, violations, changes, timestamp, received_at, status, attempts,
                            processed_at, error)
SELECT %(source)s, 'buy-' || a.customer_id, 'track', 'Buy', '', '', '', '', '', 'server', '', a.customer_id,
       '{}', '{}', '{}', '{}', '{}', '{}', '[]', '{}', t.ts, t.ts, 'processed', 1, t.ts, ''
FROM experiments_assignment a,
     LATERAL (SELECT least(now(), a.assigned_at + CASE WHEN a.customer_id %% 3 = 0 THEN interval '9 days'
                                                        ELSE interval '2 days' END) AS ts) t
WHERE a.experiment_id = %(experiment)s AND (a.customer_id / 3) %% 5 = 0
"""


# A year of events before the experiment (ended over a month before its first assignment), by customer.
HISTORY = """
INSERT INTO journeys_event (source_id, message_id, type, name, user_id, anonymous_id, previous_id, group_id,
                            category, channel, version, customer_id, properties, traits, context, integrations,
                            metadata, other, violations, changes, timestamp, received_at, status, attempts,
                            processed_at, error)
SELECT %(source)s, 'h-' || g, 'track', (ARRAY['Buy', 'Page Viewed', 'Cart Updated'])[1 + g %% 3], '', '', '', '', '',
       'server', '', 1 + (g * 7919) %% %(customers)s, '{}', '{}', '{}', '{}', '{}', '{}', '[]', '{}', ts, ts,
       'processed', 1, ts, ''
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) g,
     LATERAL (SELECT now() - interval '32 days' - interval '365 days' * (1 - g::float / %(total)s) AS ts) t
"""


def _history(total: int, source: int) -> None:
    from django.conf import settings
    from django.db import connection

    from journeys.services.event_storage import events_partitions_ensure

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM journeys_customer")
        customers = cursor.fetchone()[0]
        step = min(500_000, settings.EVENT_API["PARTITION_IDS"])  # the partitions ahead take each step
        for start in range(1, total + 1, step):
            events_partitions_ensure()  # as the housekeeping schedule does while the table grows
            cursor.execute(HISTORY, {"source": source, "customers": customers, "start": start,
                                     "stop": min(total, start + step - 1), "total": total})
            log(f"history: {min(total, start + step - 1):,} of {total:,} events")
        events_partitions_ensure()


def _broadcast_rows(experiment) -> None:
    """The rows a broadcast leaves behind for the report (see --broadcast): a published version,
    a run per assignment with its step executions, a sent message and its event, an identify event."""
    from django.db import connection
    from django.utils import timezone

    from channels_app.models import Channel, Delivery, MessageTemplate
    from experiments.models import Assignment
    from journeys.models import BusinessUnit, Event, JourneyRun, StepExecution
    from journeys.services.internal_events import internal_source
    from journeys.services.workflows import version_build, version_publish, workflow_create

    channel = Channel.objects.create(name="campaign", kind="email", provider="console")
    template = MessageTemplate.objects.create(name="offer", subject="Offer", body="Hello")
    unit = BusinessUnit.objects.get_or_create(slug="bench", defaults={"name": "Bench"})[0]
    workflow = workflow_create(name="Broadcast", business_unit=unit)
    send = {"channel": channel.name, "template": template.name}
    version = version_publish(version=version_build(workflow=workflow, definition={
        "trigger_kind": "schedule", "trigger_config": {"cron": "0 5 * * *", "segment": ""},
        "steps": [{"key": "split", "kind": "experiment_split", "config": {"experiment": experiment.key}},
                  {"key": "send_a", "kind": "send_message", "config": send},
                  {"key": "send_b", "kind": "send_message", "config": send}],
        "edges": [{"from": "split", "outcome": "control", "to": "send_a"},
                  {"from": "split", "outcome": "b", "to": "send_b"}]}), reason="bench")
    source, now = internal_source(), timezone.now()
    rows = list(Assignment.objects.filter(experiment=experiment).values_list(
        "customer_id", "arm__name", "holdout", "assigned_at").order_by("customer_id"))
    for start in range(0, len(rows), 5000):
        page = rows[start:start + 5000]
        runs = JourneyRun.objects.bulk_create([JourneyRun(
            workflow=workflow, version=version, customer_id=cid, trigger_key="schedule:bench",
            status="exited" if holdout else "completed", exclusive=False, finished_at=at,
            variables={"experiment": experiment.pk, "experiment_arm": arm, "holdout": holdout},
            visits={"split": 1} if holdout else {"split": 1, f"send_{'a' if arm == 'control' else 'b'}": 1},
        ) for cid, arm, holdout, at in page])
        executions, deliveries, events = [], [], []
        for run, (cid, arm, holdout, at) in zip(runs, page):
            executions.append(StepExecution(run=run, step_key="split", step_kind="experiment_split",
                                            outcome="holdout" if holdout else arm, started_at=at, finished_at=at))
            events.append(Event(source=source, message_id=f"identify-{cid}", type="identify", customer_id=cid,
                                timestamp=at - timedelta(minutes=15), received_at=at - timedelta(minutes=15),
                                status="processed", processed_at=at))
            if holdout:
                continue
            key = "send_a" if arm == "control" else "send_b"
            executions.append(StepExecution(run=run, step_key=key, step_kind="send_message", outcome="next",
                                            started_at=at, finished_at=at))
            deliveries.append(Delivery(idempotency_key=f"bench:{run.pk}", customer_id=cid, channel=channel,
                                       template=template, run_id=run.pk, step_key=key, to=f"u{cid}@example.com",
                                       status="sent", sent_at=now))
            events.append(Event(source=source, message_id=f"sent-{cid}", type="track", name="Message Sent",
                                customer_id=cid, timestamp=now, received_at=now, status="processed",
                                processed_at=now))
        StepExecution.objects.bulk_create(executions)
        Delivery.objects.bulk_create(deliveries)
        Event.objects.bulk_create(events)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE experiments_assignment a SET run_id = r.id, version_id = r.version_id"
                       " FROM journeys_journeyrun r WHERE r.customer_id = a.customer_id AND r.version_id = %s"
                       " AND a.experiment_id = %s", [version.pk, experiment.pk])
        cursor.execute("ANALYZE journeys_journeyrun; ANALYZE journeys_stepexecution; ANALYZE channels_app_delivery")


def _report_times(experiment, best) -> tuple[float, float, float]:
    """(the report page, the page by the `ltv` trait, the five CSV sections), each the best of the rounds."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("bench", "bench@example.com", "x" * 20))
    page = reverse("admin:experiments_experiment_report", args=[experiment.pk])
    export = reverse("admin:experiments_experiment_csv", args=[experiment.pk])

    def get(url, params) -> None:
        response = client.get(url, params, secure=True)  # production settings redirect to HTTPS
        assert response.status_code == 200, (url, params, response.status_code)

    report_s = best(lambda: get(page, {}))
    report_trait_s = best(lambda: get(page, {"kind": "trait", "trait": "ltv"}))
    sections = ("arms", "timeseries", "cohorts", "funnel", "attribution")
    csv_s = best(lambda: [get(export, {"section": s, "kind": "trait", "trait": "ltv"}) for s in sections])
    return report_s, report_trait_s, csv_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=300_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--broadcast", action="store_true", help="everyone assigned in one minute, with runs and messages")
    p.add_argument("--history-events", type=int, default=0, help="events of the year before the experiment")
    p.add_argument("--partition-ids", type=int, default=0, help="event ids per partition (default: the setting's)")
    args = p.parse_args()
    exit_on_sigterm()
    if args.partition_ids:
        os.environ["EVENT_PARTITION_IDS"] = str(args.partition_ids)
    with postgres() as url:
        django_in_process(url)
        from django.db import connection
        from django.utils import timezone

        from experiments.models import Assignment
        from experiments.services.analysis import experiment_auto_retire, group_counts
        from experiments.services.experiments import experiment_create, experiment_start
        from experiments.services.nba import nba_train
        from journeys.services.internal_events import internal_source

        experiment = experiment_create(key="offer", name="Offer", goal_event="Buy", window_s=7 * 86400,
                                       holdout_share=0.1, auto_retire=True,
                                       secondary_metrics=["open_rate", "click_rate", "completion", "resolution_time"],
                                       arms=[{"name": "control", "control": True}, {"name": "b"}])
        experiment = experiment_start(experiment=experiment)
        arms = dict(experiment.arms.values_list("name", "pk"))
        log(f"loading {args.customers:,} customers, their assignments and goal events")
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(CUSTOMERS, {"n": args.customers})
            cursor.execute(ASSIGNMENTS_BROADCAST if args.broadcast else ASSIGNMENTS,
                           {"experiment": experiment.pk, "control": arms["control"], "b": arms["b"]})
            if args.history_events:  # the year before, in the partitions the ids then move past
                _history(args.history_events, internal_source().pk)
            cursor.execute(GOALS, {"experiment": experiment.pk, "source": internal_source().pk})
        if args.broadcast:
            _broadcast_rows(experiment)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE journeys_customer; ANALYZE journeys_event; ANALYZE experiments_assignment")
        load_s = time.perf_counter() - started
        assignments = Assignment.objects.filter(experiment=experiment).count()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'journeys_event'::regclass")
            partitions = cursor.fetchone()[0]
        now = timezone.now()

        def best(fn) -> float:
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            return min(times)

        baseline_s = best(lambda: group_counts(experiment=experiment, now=now))
        analysis_s = best(lambda: experiment_auto_retire(experiment=experiment, now=now))
        tracemalloc.start()
        experiment_auto_retire(experiment=experiment, now=now)
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        counts = group_counts(experiment=experiment, now=now)
        report_s, report_trait_s, csv_s = _report_times(experiment, best)
        log(f"report page {report_s:.2f} s, by a trait of 1,000 values {report_trait_s:.2f} s, "
            f"the five CSV sections {csv_s:.2f} s")
        import sklearn.linear_model  # noqa: F401  (imported once per worker: not the training's cost)

        started = time.perf_counter()
        model = nba_train(experiment=experiment, features=["ltv"], now=now)
        nba_s = time.perf_counter() - started
        tracemalloc.start()
        nba_train(experiment=experiment, features=["ltv"], now=now)
        nba_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        log(f"nba_train: {nba_s:.2f} s on {model.samples:,} samples, peak Python memory {nba_peak_mb:.1f} MB")
        log(f"{assignments:,} assignments: analysis {analysis_s:.2f} s, group counts {baseline_s:.2f} s, "
            f"peak Python memory {peak_mb:.1f} MB; {counts}")

    report(
        "experiments_analysis",
        ratio=round(analysis_s / baseline_s, 2),
        analysis_s=round(analysis_s, 3),
        baseline_s=round(baseline_s, 3),
        peak_mb=round(peak_mb, 1),
        assignments=assignments,
        conversions=sum(x for _, x in counts.values()),
        load_s=round(load_s, 1),
        report_s=round(report_s, 3),
        report_trait_s=round(report_trait_s, 3),
        csv_s=round(csv_s, 3),
        nba_s=round(nba_s, 2),
        nba_peak_mb=round(nba_peak_mb, 1),
        nba_samples=model.samples,
        broadcast=args.broadcast,
        history_events=args.history_events,
        partitions=partitions,
        ok=analysis_s / baseline_s <= 3,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
