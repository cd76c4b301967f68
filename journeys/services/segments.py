"""Audiences: which customers a segment rule selects, read page by page.

Used by cron-over-segment and segment triggers, by rule-defined lifecycle stages
and by the management API. Callers walk an audience in ascending id order:

    after = 0
    while ids := segment_customer_ids(rule=rule, now=now, after_id=after):
        ...                      # enrol / update this page
        after = ids[-1]

On PostgreSQL a rule that translates (journeys.rules.sql) is answered by one
indexed statement per page; anything else is evaluated in Python over pages of
customers, never the whole table at once. `segment_plan` says which path a rule
takes (for the admin, the docs and the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Literal

from journeys.models import Customer
from journeys.rules import RuleContext, compile_rule

Plan = Literal["sql", "python"]

PAGE = 1000  # customers read per Python page

# What profile_dict reads: loading only these keeps a page small.
PROFILE_FIELDS = (
    "id",
    "external_id",
    "email",
    "phone",
    "timezone",
    "locale",
    "traits",
    "first_seen",
    "created_at",
    "last_seen",
    "last_engaged_at",
    "stage",
)


def segment_plan(rule: str) -> Plan:
    """"sql" when the database answers the rule by itself, "python" when pages are evaluated here.

    An empty rule (everyone) is plain SQL on every database.
    """
    if not rule.strip():
        return "sql"
    compile_rule(rule)  # a broken rule is the caller's error on both paths
    return "python"


def segment_customer_ids(
    *, rule: str, now: datetime, after_id: int = 0, limit: int = 5000
) -> list[int]:
    """Ascending ids (> after_id, at most `limit`) of unmerged customers the rule selects.

    An empty rule selects everyone. A list shorter than `limit` means the audience
    is exhausted. Raises RuleSyntaxError for a rule that does not compile.
    """
    now = _utc(now)
    if limit <= 0:
        return []
    base = Customer.objects.filter(merged_into__isnull=True)
    if not rule.strip():
        return list(
            base.filter(pk__gt=after_id).order_by("pk").values_list("pk", flat=True)[:limit]
        )
    compile_rule(rule)  # refuse a broken rule even when there is nobody to evaluate
    return _python_page(rule=rule, now=now, after_id=after_id, limit=limit)


def customers_matching(
    *, rule: str, now: datetime, customers: Iterable[Customer]
) -> list[Customer]:
    """The given (already loaded) customers the rule selects, evaluated in Python."""
    from journeys.engine.runtime import profile_dict

    compiled = compile_rule(rule)
    page = list(customers)
    counter = _PageEventCounter([c.pk for c in page])
    selected = []
    for customer in page:
        ctx = RuleContext(
            profile=profile_dict(customer, now),
            now=now,
            events_in_last=counter.for_customer(customer.pk),
        )
        if compiled.evaluate(ctx).value:
            selected.append(customer)
    return selected


def _utc(now: datetime) -> datetime:
    """Both paths read naive ISO text in ctx.now's zone: fix that zone to UTC (same instant)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("segment_customer_ids: now must be timezone-aware")
    return now.astimezone(UTC)


def _python_page(*, rule: str, now: datetime, after_id: int, limit: int) -> list[int]:
    selected: list[int] = []
    last = after_id
    base = Customer.objects.filter(merged_into__isnull=True).only(*PROFILE_FIELDS)
    while len(selected) < limit:
        page = list(base.filter(pk__gt=last).order_by("pk")[:PAGE])
        if not page:
            break
        last = page[-1].pk
        for customer in customers_matching(rule=rule, now=now, customers=page):
            selected.append(customer.pk)
            if len(selected) == limit:
                break
    return selected


class _PageEventCounter:
    """events_in_last() for a page of customers: one grouped query per (name, since) asked.

    A rule usually asks the same question of everyone (constant name and window), so the
    first customer's question is answered for the whole page at once.
    """

    def __init__(self, customer_ids: list[int]) -> None:
        self.customer_ids = customer_ids
        self.answers: dict[tuple[str, datetime], dict[int, int]] = {}

    def for_customer(self, customer_id: int) -> Callable[[str, datetime], int]:
        def count(name: str, since: datetime) -> int:
            key = (name, since)
            if key not in self.answers:
                self.answers[key] = self._count(name, since)
            return self.answers[key].get(customer_id, 0)

        return count

    def _count(self, name: str, since: datetime) -> dict[int, int]:
        from django.db.models import Count

        from journeys.models import Event

        rows = (
            Event.objects.filter(customer_id__in=self.customer_ids, name=name, timestamp__gte=since)
            .values("customer_id")
            .annotate(n=Count("id"))
            .values_list("customer_id", "n")
        )
        return dict(rows)
