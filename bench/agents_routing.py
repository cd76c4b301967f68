"""Routing cost: cases/s through case_route (ranked candidates, agent rows locked FOR UPDATE,
load counted under the lock, guardian permissions, timeline entry) vs. a baseline of the bare
minimum (least-loaded agent from an in-memory counter + one UPDATE of the case) in the same run;
and the time to build a prefilled case page's data (summary + suggested replies).

    .venv/bin/python bench/agents_routing.py [--cases 2000] [--agents 50]

Uses DATABASE_URL when set (give it a scratch database: it is migrated and written to),
else a temporary SQLite file. Last stdout line:
{"bench": "agents_routing", "per_s": ..., "baseline_per_s": ..., "ratio": ..., "summary_ms": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=50)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    if not os.environ.get("DATABASE_URL"):
        os.environ["SQLITE_PATH"] = str(Path(tmp) / "bench.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", verbosity=0)
    from agents.models import Agent, AgentSkill, Case, ReplyTemplate, Team
    from agents.selectors import case_suggested_replies, case_summary
    from agents.services.cases import agent_save, team_save
    from agents.services.routing import case_route
    from journeys.models import Customer

    run = str(int(time.time() * 1000))
    n, m = args.cases, args.agents
    categories = ["billing", "hardware", "delivery", "account"]
    team = team_save(team=Team(name=f"bench {run}", slug=f"bench-{run}", categories=categories))
    User = get_user_model()
    agents = []
    for i in range(m):
        user = User.objects.create(username=f"bench-{run}-{i}")
        agent = agent_save(
            agent=Agent(
                user=user,
                team=team,
                capacity=n,
                status="online",
                languages=["en", "de"][: 1 + i % 2],
            )
        )
        AgentSkill.objects.create(agent=agent, category=categories[i % 4], level=1 + i % 5)
        agents.append(agent)
    for i, category in enumerate(categories):
        ReplyTemplate.objects.create(
            name=f"bench-{run}-{i}", category=category, body="Hi {{ profile.first_name }}"
        )
    Customer.objects.bulk_create(
        [Customer(external_id=f"bench-{run}-{i}", traits={"first_name": "B"}) for i in range(n)]
    )
    customers = list(
        Customer.objects.filter(external_id__startswith=f"bench-{run}-").order_by("id")
    )
    now = timezone.now()

    def make_cases(tag: str) -> list[int]:
        Case.objects.bulk_create(
            [
                Case(
                    customer=c,
                    category=categories[i % 4],
                    language="de" if i % 3 else "en",
                    subject=f"{tag} {i}",
                    sla_due_at=now,
                )
                for i, c in enumerate(customers)
            ]
        )
        return list(
            Case.objects.filter(subject__startswith=f"{tag} ", customer__in=customers).values_list(
                "pk", flat=True
            )
        )

    baseline_ids = make_cases(f"base-{run}")
    load: Counter[int] = Counter({a.pk: 0 for a in agents})
    started = time.perf_counter()
    for case_id in baseline_ids:
        agent_id = min(load, key=load.__getitem__)
        load[agent_id] += 1
        Case.objects.filter(pk=case_id).update(
            assigned_agent_id=agent_id, status="assigned", assigned_at=now
        )
    baseline_s = time.perf_counter() - started

    real_ids = make_cases(f"real-{run}")
    started = time.perf_counter()
    for case_id in real_ids:
        case_route(case_id=case_id, now=now)
    real_s = time.perf_counter() - started
    assigned = Case.objects.filter(pk__in=real_ids, status="assigned").count()
    assert assigned == n, f"only {assigned} of {n} cases were assigned"

    sample = list(Case.objects.filter(pk__in=real_ids[:50]).select_related("customer"))
    started = time.perf_counter()
    for case in sample:
        case_summary(case=case)
        case_suggested_replies(case=case)
    summary_ms = (time.perf_counter() - started) * 1000 / len(sample)

    per_s, baseline_per_s = n / real_s, n / baseline_s
    print(
        f"case_route: {per_s:,.0f} cases/s over {m} agents; baseline pick+update: {baseline_per_s:,.0f}/s; "
        f"case page data: {summary_ms:.1f} ms",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                "bench": "agents_routing",
                "per_s": round(per_s, 1),
                "baseline_per_s": round(baseline_per_s, 1),
                "ratio": round(baseline_per_s / per_s, 2),
                "summary_ms": round(summary_ms, 2),
                "cases": n,
                "agents": m,
            }
        )
    )


if __name__ == "__main__":
    main()
