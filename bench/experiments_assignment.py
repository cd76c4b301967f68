"""Assignment and analysis cost: customers/s through assignment_decide (sticky lookup, hash,
weights, recorded row) vs. a baseline of the bare minimum (hash + insert the same row) in the
same run; the same through the engine batch's path (AssignmentBatch, pages of 1,000 customers:
what event batches, wake-ups and broadcasts use); and the time to analyse the experiment
(per-arm stats, SRM, daily series, mSPRT).

    .venv/bin/python bench/experiments_assignment.py [--customers 3000]

Uses DATABASE_URL when set (give it a scratch database: it is migrated and written to),
else a temporary SQLite file. Last stdout line:
{"bench": "experiments_assignment", "per_s": ..., "baseline_per_s": ..., "ratio": ..., "batch_per_s": ...,
 "batch_ratio": ..., "analyze_s": ...}  (ratio: baseline / one at a time; batch_ratio: batch / baseline)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=3000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    if not os.environ.get("DATABASE_URL"):
        os.environ["SQLITE_PATH"] = str(Path(tmp) / "bench.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from experiments.models import Assignment
    from experiments.services.analysis import experiment_analyze
    from experiments.services.assignment import (
        AssignmentBatch,
        assignment_decide,
        assignment_weights,
        hash_unit,
        pick_by_weight,
    )
    from experiments.services.experiments import experiment_create, experiment_start
    from journeys.engine.batch import EngineBatch
    from journeys.models import Customer

    run = str(int(time.time() * 1000))
    n = args.customers
    Customer.objects.bulk_create([Customer(external_id=f"bench-{run}-{i}") for i in range(3 * n)])
    customers = list(Customer.objects.filter(external_id__startswith=f"bench-{run}-").order_by("id"))
    arms = [{"name": "control", "control": True}, {"name": "b"}, {"name": "c"}]
    base = experiment_start(experiment=experiment_create(key=f"base-{run}", name="baseline", arms=arms))
    real = experiment_start(experiment=experiment_create(key=f"real-{run}", name="real", arms=arms, holdout_share=0.1))
    batched = experiment_start(experiment=experiment_create(key=f"batch-{run}", name="batch", arms=arms,
                                                            holdout_share=0.1))
    now = timezone.now()

    weights = assignment_weights(experiment=base)
    by_name = {a.name: a for a in base.arms.all()}
    started = time.perf_counter()
    for c in customers[:n]:
        name = pick_by_weight(weights, hash_unit(base.salt, "arm", c.pk))
        Assignment.objects.create(
            experiment=base,
            customer=c,
            arm=by_name[name],
            bucket=0.0,
            weights=weights,
            assigned_at=now,
        )
    baseline_s = time.perf_counter() - started

    started = time.perf_counter()
    for c in customers[n:2 * n]:
        assignment_decide(experiment=real, customer=c, now=now)
    real_s = time.perf_counter() - started

    started = time.perf_counter()
    rest = customers[2 * n:]
    for i in range(0, n, 1000):
        page = rest[i:i + 1000]
        batch = EngineBatch(customer_ids=[c.pk for c in page], now=now)
        with batch.active():
            assign = AssignmentBatch.current()
            experiment = assign.experiment(batched.key)
            for c in page:
                assign.decide(experiment=experiment, customer=c, now=now, arm_names=None, run_id=None, version_id=None)
            batch.flush()
    batch_s = time.perf_counter() - started
    assert Assignment.objects.filter(experiment=batched).count() == n

    started = time.perf_counter()
    experiment_analyze(experiment=real)
    analyze_s = time.perf_counter() - started

    per_s, baseline_per_s, batch_per_s = n / real_s, n / baseline_s, n / batch_s
    print(
        f"assignment_decide: {per_s:,.0f}/s; baseline hash+insert: {baseline_per_s:,.0f}/s; "
        f"engine batch: {batch_per_s:,.0f}/s; "
        f"analysis of {n} exposures: {analyze_s:.3f}s"
    )
    print(
        json.dumps(
            {
                "bench": "experiments_assignment",
                "per_s": round(per_s, 1),
                "baseline_per_s": round(baseline_per_s, 1),
                "ratio": round(baseline_per_s / per_s, 2),
                "batch_per_s": round(batch_per_s, 1),
                "batch_ratio": round(batch_per_s / baseline_per_s, 2),
                "analyze_s": round(analyze_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
