"""Lifecycle stages: one shared answer to "where does this customer stand?"."""

from __future__ import annotations

import time
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from journeys.models import Customer
from journeys.models.catalog import LifecycleStage, StageTransition

_stages: dict = {"at": 0.0, "rows": []}


def _rule_stages() -> list[tuple[str, str]]:
    if time.monotonic() - _stages["at"] > 5.0:
        _stages["rows"] = list(LifecycleStage.objects.exclude(rule="").order_by("order", "key").values_list("key", "rule"))
        _stages["at"] = time.monotonic()
    return _stages["rows"]


def stages_reset() -> None:
    _stages["at"] = 0.0


@transaction.atomic
def customer_set_stage(*, customer: Customer, stage: str, reason: str, at: datetime | None = None) -> bool:
    """Move a customer to a stage; records the transition and `Stage Left`/`Stage Entered` events.

    Returns False when they are already there (nothing recorded).
    """
    from journeys.services.internal_events import event_record_internal

    if not LifecycleStage.objects.filter(key=stage).exists():
        raise ValueError(f"unknown lifecycle stage {stage!r}")
    at = at or timezone.now()
    fresh = Customer.objects.select_for_update().get(pk=customer.pk)
    previous = fresh.stage
    if previous == stage:
        return False
    Customer.objects.filter(pk=customer.pk).update(stage=stage)
    customer.stage = stage
    transition = StageTransition.objects.create(customer=customer, from_stage=previous, to_stage=stage, reason=reason[:255], at=at)
    if previous:
        event_record_internal(customer=customer, name="Stage Left", properties={"stage": previous, "to": stage},
                              at=at, message_id=f"stage-left:{transition.pk}")
    event_record_internal(customer=customer, name="Stage Entered", properties={"stage": stage, "from": previous},
                          at=at, message_id=f"stage-entered:{transition.pk}")
    return True


def customer_evaluate_stage(*, customer: Customer, now: datetime, rule_ctx=None) -> str | None:
    """Apply rule-defined stages: the first stage (by order) whose rule is true wins.

    Stages without a rule belong to workflow steps (`set_stage`): once a step put a
    customer there, only another step moves them.
    """
    from journeys.engine.runtime import profile_dict
    from journeys.rules import RuleContext, compile_rule

    stages = _rule_stages()
    if not stages:
        return None
    if customer.stage and customer.stage not in {key for key, _ in stages}:
        return None  # a stage without a rule is managed by workflow steps; rules do not override it
    ctx = rule_ctx or RuleContext(profile=profile_dict(customer, now), now=now)
    for key, rule in stages:
        if compile_rule(rule).evaluate(ctx).value:
            if key != customer.stage:
                customer_set_stage(customer=customer, stage=key, reason=f"rule: {rule}"[:255], at=now)
            return key
    return None
