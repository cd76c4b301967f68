"""Benchmark: segment selection in SQL against the Python evaluator, and the stage refresh.

N customers (default 100,000; `--customers 1000000` works) are loaded into a private
PostgreSQL with one INSERT ... SELECT FROM generate_series. For a handful of typical
segment rules, the whole audience is walked with segment_customer_ids (SQL, pages of
5,000; two of them count each customer's orders with events_in_last, over 1.5 orders a
customer) and, in the same run, with the Python fallback (pages of customers evaluated by
the compiled rule; at more than 200,000 customers on the first 200,000 only, reported
per customer). Then lifecycle stages with rules on the last visit: the first refresh moves
everyone; a walk of every customer with nothing to change (what each hourly refresh cost before
the rechecks, and what one costs after the rules change) against the next hours' refreshes
(only the customers due: the ratio), then a day later (the customers whose day came), checked
against the previous per-customer Python refresh at that moment (`--no-baseline` skips it).
The same for a live segment-entry trigger on lapsed buyers: a walk of everyone against the next
hours' refreshes, and a day later the customers who lapsed that day enter.

    .venv/bin/python bench/segments.py [--customers 100000] [--no-baseline]

Last stdout line: {"bench": "segments", "sql_vs_python": ..., "stages_walk_vs_hour": ..., "entry_walk_vs_hour": ..., ...}
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import django_in_process, exit_on_sigterm, log, postgres, report  # noqa: E402

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

RULES = {
    "plan": "profile.plan == 'pro'",
    "value_country": "profile.ltv >= 1500 and profile.country in ['DE', 'FR']",
    "signup_year": "days_since(profile.signup_at) > 1095",
    "vip_recent": "'vip' in profile.tags and profile.days_since_last_seen <= 30",
    "city_email": "profile.address.city == 'Berlin' and ends_with(lower(profile.email), '7@example.com')",
    "recent_buyers": "events_in_last('Order Completed', days=90) >= 1",
    "lapsed_buyers": "events_in_last('Order Completed', days=60) == 0 and events_in_last('Order Completed', days=365) > 0",
    # the same count read twice: one probe a customer
    "some_orders": "events_in_last('Order Completed', days=365) >= 1 and events_in_last('Order Completed', days=365) <= 2",
}

STAGES = [
    ("vip", 1, "profile.ltv >= 1900"),
    ("active", 2, "profile.days_since_last_seen <= 30"),
    ("at_risk", 3, "profile.days_since_last_seen > 30 and profile.days_since_last_seen <= 60"),
    ("lapsed", 4, "profile.days_since_last_seen > 60"),
]

LOAD = """
INSERT INTO journeys_customer (external_id, email, phone, timezone, locale, traits, first_seen, last_seen,
                               last_engaged_at, stage, merged_into_id, created_at, updated_at)
SELECT 'u-' || g, 'U' || g || '@Example.com', '', 'UTC', '',
       jsonb_build_object(
           'plan', CASE WHEN g %% 10 = 0 THEN 'pro' ELSE 'free' END,
           'ltv', (g::bigint * 7919) %% 2000,
           'country', (ARRAY['DE', 'FR', 'US', 'GB', 'ES'])[1 + g %% 5],
           'signup_at', to_char(timestamp '2021-01-01' + (g %% 1800) * interval '1 day',
                                'YYYY-MM-DD"T"HH24:MI:SS"+00:00"'),
           'tags', CASE WHEN g %% 7 = 0 THEN '["vip", "beta"]'::jsonb ELSE '[]'::jsonb END,
           'address', jsonb_build_object('city', (ARRAY['Berlin', 'Paris', 'Rome'])[1 + g %% 3])),
       %(now)s - (g %% 400) * interval '1 day', %(now)s - (g %% 90) * interval '1 day', NULL, '', NULL,
       %(now)s, %(now)s
FROM generate_series(1, %(n)s) AS g
"""

# Two orders for three customers in four, 0-400 days ago (the events_in_last rules).
ORDERS = """
INSERT INTO journeys_event (source_id, message_id, type, name, user_id, anonymous_id, previous_id, group_id,
                            category, channel, version, customer_id, properties, traits, context, integrations,
                            metadata, other, violations, changes, timestamp, received_at, status, attempts,
                            processed_at, error)
SELECT %(source)s, 'o-' || c.id || '-' || k, 'track', 'Order Completed', c.external_id, '', '', '', '', 'server', '',
       c.id, '{}', '{}', '{}', '{}', '{}', '{}', '[]', '{}', ts, ts, 'processed', 1, ts, ''
FROM journeys_customer c, generate_series(1, 2) AS k,
     LATERAL (SELECT %(now)s - ((c.id * 7919 * k) %% 400) * interval '1 day' AS ts) t
WHERE c.id %% 4 <> 0
"""


def old_stages_refresh(now: datetime) -> int:
    """The refresh as it was: every customer read and evaluated in Python (baseline)."""
    from django.db import transaction

    from journeys.engine.scheduler import _in_chunks
    from journeys.models import Customer
    from journeys.services.lifecycle import customer_evaluate_stage

    moved = 0
    for customer in _in_chunks(Customer.objects.filter(merged_into__isnull=True)):
        before = customer.stage
        with transaction.atomic():
            if customer_evaluate_stage(customer=customer, now=now) not in (None, before):
                moved += 1
    return moved


ENTRY_RULE = "profile.days_since_last_seen > 30 and events_in_last('Order Completed', days=365) > 0"


def segment_entry_refresh_timings() -> dict:
    """A live win-back trigger (segment entry on lapsed buyers): the first refresh (everyone,
    members recorded), a walk of everyone with nothing new (what every hourly refresh cost before
    the rechecks), the next hours (only the customers due), and a day later (those who lapsed
    that day enter)."""
    from journeys.engine.scheduler import segment_entries_refresh
    from journeys.models import BusinessUnit, JourneyRun, SegmentMember, SegmentRecheck, SegmentRules
    from journeys.services.workflows import version_build, version_publish, workflow_create

    unit = BusinessUnit.objects.create(slug="bench", name="Bench")
    workflow = workflow_create(name="win-back", business_unit=unit)
    definition = {"trigger_kind": "segment_entry", "trigger_config": {"rule": ENTRY_RULE}, "reentry_policy": "always",
                  "steps": [{"key": "done", "kind": "goal", "config": {}}]}
    version_publish(version=version_build(workflow=workflow, definition=definition), reason="bench")
    started = time.perf_counter()
    assert segment_entries_refresh(now=NOW) == 0
    first_s = time.perf_counter() - started
    log(f"first segment-entry refresh: {SegmentMember.objects.count():,} members in {first_s:.1f} s"
        f" ({SegmentRecheck.objects.count():,} rechecks)")
    walks = []
    for _ in range(2):
        SegmentRules.objects.all().delete()  # as after a go-live: everyone once
        started = time.perf_counter()
        assert segment_entries_refresh(now=NOW) == 0
        walks.append(time.perf_counter() - started)
    log(f"segment entry, every customer, nothing new: {[round(x, 3) for x in walks]} s")
    idle = []
    for hour in (1, 2, 3):
        started = time.perf_counter()
        assert segment_entries_refresh(now=NOW + timedelta(hours=hour)) == 0
        idle.append(time.perf_counter() - started)
    log(f"segment entry, the next hours: {[round(x, 4) for x in idle]} s")
    started = time.perf_counter()
    entered = segment_entries_refresh(now=NOW + timedelta(days=1))
    day_s = time.perf_counter() - started
    assert entered == JourneyRun.objects.count() > 0
    log(f"segment entry, a day later: {entered:,} entered in {day_s:.2f} s")
    return {"entry_hour_s": round(min(idle), 4), "entry_walk_s": round(min(walks), 3),
            "entry_walk_vs_hour": round(min(walks) / min(idle), 1), "entry_day_s": round(day_s, 3),
            "entry_day_entered": entered, "entry_first_s": round(first_s, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument(
        "--python-sample", type=int, default=200_000, help="customers the Python path walks at most"
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the old per-customer stage refresh"
    )
    args = p.parse_args()
    exit_on_sigterm()
    with postgres() as url:
        django_in_process(url)
        from django.db import connection

        from journeys.models import Customer, LifecycleStage, StageRecheck, StageRules, StageTransition
        from journeys.services import segments
        from journeys.services.internal_events import internal_source
        from journeys.services.lifecycle import customer_stages_refresh

        log(f"loading {args.customers:,} customers")
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(LOAD, {"n": args.customers, "now": NOW})
            cursor.execute(ORDERS, {"source": internal_source().pk, "now": NOW})
            cursor.execute("ANALYZE journeys_customer; ANALYZE journeys_event")
        log(f"loaded in {time.perf_counter() - started:.1f} s")

        results: dict[str, dict] = {}
        sample = min(args.customers, args.python_sample)
        first_id = Customer.objects.order_by("pk").values_list("pk", flat=True).first()
        sample_last = first_id + sample - 1
        base = Customer.objects.filter(merged_into__isnull=True).only(*segments.PROFILE_FIELDS)
        for name, rule in RULES.items():
            assert segments.segment_plan(rule) == "sql", rule
            started = time.perf_counter()
            selected, in_sample, after = 0, 0, 0
            while ids := segments.segment_customer_ids(
                rule=rule, now=NOW, after_id=after, limit=5000
            ):
                selected += len(ids)
                in_sample += sum(1 for i in ids if i <= sample_last)
                after = ids[-1]
            sql_s = time.perf_counter() - started
            started = time.perf_counter()
            python_selected, last = 0, 0
            while page := list(base.filter(pk__gt=last, pk__lte=sample_last).order_by("pk")[:1000]):
                python_selected += len(
                    segments.customers_matching(rule=rule, now=NOW, customers=page)
                )
                last = page[-1].pk
            python_s = time.perf_counter() - started
            assert python_selected == in_sample, (rule, python_selected, in_sample)
            sql_rate, python_rate = args.customers / sql_s, sample / python_s
            results[name] = {
                "selected": selected,
                "sql_s": round(sql_s, 3),
                "python_s": round(python_s, 2),
                "python_customers": sample,
                "ratio": round(sql_rate / python_rate, 1),
            }
            log(f"{name}: {results[name]}")

        for key, order, rule in STAGES:
            LifecycleStage.objects.create(key=key, name=key, order=order, rule=rule)
        started = time.perf_counter()
        moved = customer_stages_refresh(now=NOW)
        first_s = time.perf_counter() - started
        log(f"first stage refresh: {moved:,} moved in {first_s:.1f} s ({StageRecheck.objects.count():,} rechecks)")
        assert StageTransition.objects.count() == moved
        # What every hour cost before the rechecks: every customer evaluated (in SQL), nobody moving.
        walks = []
        for _ in range(2):
            StageRules.objects.all().delete()  # as after a change of the rules: everyone once
            started = time.perf_counter()
            assert customer_stages_refresh(now=NOW) == 0
            walks.append(time.perf_counter() - started)
        walk_s = min(walks)
        log(f"every customer, nothing to change: {[round(x, 3) for x in walks]} s")
        idle = []
        for hour in (1, 2, 3):  # the next hours: only the customers due
            started = time.perf_counter()
            assert customer_stages_refresh(now=NOW + timedelta(hours=hour)) == 0
            idle.append(time.perf_counter() - started)
        idle_s = min(idle)
        log(f"the next hours: {[round(x, 4) for x in idle]} s")
        started = time.perf_counter()
        day_moved = customer_stages_refresh(now=NOW + timedelta(days=1))
        day_s = time.perf_counter() - started
        log(f"a day later: {day_moved:,} moved in {day_s:.2f} s")
        baseline_s = None
        if not args.no_baseline:
            started = time.perf_counter()
            assert old_stages_refresh(NOW + timedelta(days=1)) == 0
            baseline_s = time.perf_counter() - started
            log(f"old per-customer refresh (nothing to do): {baseline_s:.1f} s")
        assert Customer.objects.filter(stage="").count() == 0
        entry = segment_entry_refresh_timings()

    ratios = [r["ratio"] for r in results.values()]
    report(
        "segments",
        sql_vs_python=round(min(ratios), 1),
        stages_hour_s=round(idle_s, 4),
        stages_walk_s=round(walk_s, 3),
        stages_walk_vs_hour=round(walk_s / idle_s, 1),
        stages_day_s=round(day_s, 3),
        stages_day_moved=day_moved,
        stages_old_python_s=round(baseline_s, 2) if baseline_s else None,
        customers=args.customers,
        stages_first_moved=moved,
        stages_first_s=round(first_s, 1),
        **entry,
        rules=results,
        ok=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
