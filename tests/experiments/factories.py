"""Factories for the experiments tests."""

from __future__ import annotations

from datetime import datetime

from django.db.models import Max
from django.utils import timezone

from experiments.models import Experiment
from experiments.services.assignment import AssignmentBatch
from experiments.services.experiments import experiment_create, experiment_start
from journeys.engine.batch import EngineBatch
from journeys.models import Customer, Event
from journeys.services.internal_events import internal_source


def make_experiment(*, key: str = "welcome", arms=None, start: bool = True, **kwargs) -> Experiment:
    arms = arms or [{"name": "control", "control": True}, {"name": "short"}]
    now = kwargs.pop("now", None)
    kwargs.setdefault("salt", f"salt-{key}")  # deterministic tests: the salt places every customer
    experiment = experiment_create(key=key, name=key.title(), arms=arms, **kwargs)
    if start:
        experiment = experiment_start(experiment=experiment, now=now)
    return Experiment.objects.get(pk=experiment.pk)


FIXED_IDS_FROM = 10**9
_next_fixed_id = [FIXED_IDS_FROM]


def fixed_ids_reset() -> None:
    """Called before every test (tests/conftest.py): each test's customers get the same ids on
    every run and both databases."""
    _next_fixed_id[0] = FIXED_IDS_FROM


def make_customers(n: int, *, prefix: str = "c", traits=None, first_seen: datetime | None = None) -> list[Customer]:
    """Many customers at once (bulk insert), for statistical tests. Their ids are fixed per test
    (from 10**9 up, far above what the sequences hand out): experiment arms, holdouts and canary
    sides are hashes of the id, and PostgreSQL's sequences, never rolled back, would otherwise
    give each run other ids and so other groups than the run before."""
    taken = Customer.objects.aggregate(last=Max("pk"))["last"] or 0  # SQLite's ids follow the largest
    first = max(_next_fixed_id[0], taken + 1)
    _next_fixed_id[0] = first + n
    Customer.objects.bulk_create(
        [Customer(pk=first + i, external_id=f"{prefix}{i}", traits=dict(traits or {}), first_seen=first_seen)
         for i in range(n)]
    )
    return list(Customer.objects.filter(external_id__startswith=prefix).order_by("id"))


def make_goal_events(customers, *, name: str, at: datetime | None = None, prefix: str = "goal") -> None:
    """Conversion events for these customers (stored processed: they only feed the analysis)."""
    source = internal_source()
    at = at or timezone.now()
    Event.objects.bulk_create(
        [
            Event(
                source=source,
                message_id=f"{prefix}:{c.pk}",
                type="track",
                name=name,
                customer=c,
                timestamp=at,
                received_at=at,
                status="processed",
            )
            for c in customers
        ]
    )


def steps(*items):
    return [dict(zip(("key", "kind", "config"), item)) for item in items]


def edges(*items):
    return [dict(zip(("from", "outcome", "to"), item)) for item in items]


def split_workflow(key: str = "welcome", arms=("control", "short"), holdout: bool = False) -> dict:
    """Signed Up -> experiment split -> one update_profile step per arm (holdout joins control)."""
    items = [("split", "experiment_split", {"experiment": key})]
    items += [(f"path_{a}", "update_profile", {"traits": {"path": a}}) for a in arms]
    links = [("split", a, f"path_{a}") for a in arms]
    if holdout:
        links.append(("split", "holdout", f"path_{arms[0]}"))
    return {"trigger_event": "Signed Up", "reentry_policy": "always", "steps": steps(*items), "edges": edges(*links)}


def split_then_wait(key: str) -> dict:
    """Signed Up -> experiment split (control / b) -> a day's delay on each side: the runs stay open."""
    return {
        "trigger_event": "Signed Up",
        "reentry_policy": "always",
        "steps": steps(("split", "experiment_split", {"experiment": key}),
                       ("wait_a", "delay", {"duration": "1d"}), ("wait_b", "delay", {"duration": "1d"})),
        "edges": edges(("split", "control", "wait_a"), ("split", "b", "wait_b")),
    }


def assign_batch(experiment, customers, now=None):
    """Assign many customers at once through the engine batch's path (AssignmentBatch: event batches, wake-ups and
    broadcasts), recorded with the batch's flush."""
    now = now or timezone.now()
    batch = EngineBatch(customer_ids=[c.pk for c in customers], now=now)
    with batch.active():
        assign = AssignmentBatch.current()
        experiment = assign.experiment(experiment.key)
        decisions = [assign.decide(experiment=experiment, customer=c, now=now, arm_names=None, run_id=None,
                                   version_id=None) for c in customers]
        batch.flush()
    return decisions
