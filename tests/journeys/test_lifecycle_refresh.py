"""The hourly stage refresh: rule-defined stages follow time, set-based, with every change kept."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from journeys.engine.scheduler import stages_refresh
from journeys.models import Customer, Event, LifecycleStage, StageTransition
from journeys.rules import RuleContext, compile_rule
from journeys.engine.listeners import stages_reset
from journeys.services.segments import segment_plan
from tests.factories import row_held
from tests.journeys.test_segments_sql import NOW, populate

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_stages():
    stages_reset()
    yield
    stages_reset()


@pytest.fixture
def stages(db):
    LifecycleStage.objects.create(key="vip", name="VIP", order=1, rule="profile.ltv >= 1000")
    LifecycleStage.objects.create(
        key="active", name="Active", order=2, rule="profile.days_since_last_seen <= 30"
    )
    LifecycleStage.objects.create(
        key="at_risk",
        name="At risk",
        order=3,
        rule="days_since(coalesce(profile.last_order_at, profile.last_seen)) > 30",
    )
    LifecycleStage.objects.create(
        key="onboarding", name="Onboarding", order=0
    )  # set by workflow steps only


def person(name: str, *, last_seen_days: int | None, stage: str = "", **traits) -> Customer:
    last_seen = None if last_seen_days is None else NOW - dt.timedelta(days=last_seen_days)
    return Customer.objects.create(
        external_id=name, last_seen=last_seen, stage=stage, traits=traits
    )


def stages_of() -> dict[str, str]:
    return dict(Customer.objects.values_list("external_id", "stage"))


def test_refresh_moves_whoever_time_moved_and_records_each_change(
    stages, django_capture_on_commit_callbacks
):
    # given customers in various states, one in a stage that workflow steps own
    person("rich", last_seen_days=60, ltv=5000)
    person("fresh", last_seen_days=2)
    person("lapsed", last_seen_days=45, stage="active")
    person(
        "odd_date", last_seen_days=None, last_order_at="20240401"
    )  # only Python reads this ISO form
    person("manual", last_seen_days=90, stage="onboarding")
    person("unknown", last_seen_days=None)
    for rule in LifecycleStage.objects.exclude(rule="").values_list("rule", flat=True):
        assert segment_plan(rule) == ("sql" if connection.vendor == "postgresql" else "python")
    # when the hourly refresh runs
    with django_capture_on_commit_callbacks(execute=True):
        moved = stages_refresh(now=NOW)
    # then the first true rule wins, steps' stages are left alone, nobody without a true rule moves
    assert moved == 4
    assert stages_of() == {
        "rich": "vip",
        "fresh": "active",
        "lapsed": "at_risk",
        "odd_date": "at_risk",
        "manual": "onboarding",
        "unknown": "",
    }
    transitions = set(
        StageTransition.objects.values_list("customer__external_id", "from_stage", "to_stage")
    )
    assert transitions == {
        ("rich", "", "vip"),
        ("fresh", "", "active"),
        ("lapsed", "active", "at_risk"),
        ("odd_date", "", "at_risk"),
    }
    assert StageTransition.objects.get(customer__external_id="lapsed").reason.startswith(
        "rule: days_since("
    )
    events = list(
        Event.objects.filter(name__startswith="Stage")
        .order_by("id")
        .values_list("customer__external_id", "name", "properties", "status")
    )
    assert ("lapsed", "Stage Left", {"stage": "active", "to": "at_risk"}, "processed") in events
    assert (
        "lapsed",
        "Stage Entered",
        {"stage": "at_risk", "from": "active"},
        "processed",
    ) in events
    assert len(events) == 5 and all(status == "processed" for *_, status in events)


def test_stages_by_recent_orders_follow_time_and_run_in_sql_on_postgresql(db, caplog):
    from journeys.services.internal_events import event_record_internal

    LifecycleStage.objects.create(key="buyer", name="Buyer", order=1,
                                  rule="events_in_last('Order Completed', days=30) >= 1")
    LifecycleStage.objects.create(key="lapsed", name="Lapsed", order=2,
                                  rule="events_in_last('Order Completed', days=365) >= 1")
    recent, old, never = (person(name, last_seen_days=1) for name in ("recent", "old", "never"))
    event_record_internal(customer=recent, name="Order Completed", at=NOW - dt.timedelta(days=5))
    event_record_internal(customer=old, name="Order Completed", at=NOW - dt.timedelta(days=60))
    event_record_internal(customer=never, name="Viewed", at=NOW - dt.timedelta(days=1))
    for rule in LifecycleStage.objects.values_list("rule", flat=True):
        assert segment_plan(rule) == ("sql" if connection.vendor == "postgresql" else "python")

    assert stages_refresh(now=NOW) == 2
    assert stages_of() == {"recent": "buyer", "old": "lapsed", "never": ""}
    assert stages_refresh(now=NOW + dt.timedelta(days=20)) == 0
    assert stages_refresh(now=NOW + dt.timedelta(days=26)) == 1  # 31 days after the order
    assert stages_of() == {"recent": "lapsed", "old": "lapsed", "never": ""}
    assert not [r for r in caplog.records if "SQL failed" in r.getMessage()]  # no fallback to Python


def test_a_second_refresh_with_nothing_due_changes_nothing_and_time_passing_does(stages):
    person("fresh", last_seen_days=20)
    assert stages_refresh(now=NOW) == 1
    # when nothing changed
    assert stages_refresh(now=NOW + dt.timedelta(hours=1)) == 0
    assert StageTransition.objects.count() == 1
    # when ten days pass, the customer has lapsed
    assert stages_refresh(now=NOW + dt.timedelta(days=11)) == 1
    assert stages_of() == {"fresh": "at_risk"}
    assert Event.objects.filter(name="Stage Left", properties__stage="active").count() == 1


def test_refresh_is_set_based_its_statements_do_not_grow_with_the_changes(
    stages, django_assert_max_num_queries
):
    # given 120 customers whose stage must change
    Customer.objects.bulk_create(
        [
            Customer(
                external_id=f"c{i}", last_seen=NOW - dt.timedelta(days=40 + i % 3), stage="active"
            )
            for i in range(120)
        ]
    )
    # when the refresh runs, it takes a bounded number of statements (not one or more per customer;
    # on PostgreSQL with the rechecks: their rules' state, lock and writes)
    with django_assert_max_num_queries(40):
        moved = stages_refresh(now=NOW)
    # then
    assert moved == 120
    assert Customer.objects.filter(stage="at_risk").count() == 120
    assert StageTransition.objects.count() == 120
    assert Event.objects.filter(name__startswith="Stage").count() == 240


def test_refresh_agrees_with_python_on_a_varied_population(db):
    # given stages whose rules read awkward data, and customers with a bit of everything
    rules = [
        ("gold", "profile.ltv >= 1000 or 'vip' in profile.tags"),
        ("pro", "lower(profile.plan) == 'pro'"),
        ("recent", "days_since(profile.signup_at) <= 31"),
        ("seen", "exists(profile.last_seen) and profile.days_since_last_seen < 30"),
    ]
    for order, (key, rule) in enumerate(rules):
        LifecycleStage.objects.create(key=key, name=key, order=order, rule=rule)
    LifecycleStage.objects.create(key="manual", name="manual", order=9)
    customers = populate(150)
    Customer.objects.filter(pk__in=[c.pk for c in customers[::7]]).update(stage="manual")
    Customer.objects.filter(pk__in=[c.pk for c in customers[3::7]]).update(stage="pro")
    customers = list(Customer.objects.order_by("pk"))
    expected = {c.pk: _python_stage(c, rules) for c in customers}
    # when the refresh runs
    stages_refresh(now=NOW)
    # then every customer is where the rules evaluated in Python put them
    assert dict(Customer.objects.values_list("pk", "stage")) == expected
    changed = sum(1 for c in customers if expected[c.pk] != c.stage)
    assert StageTransition.objects.count() == changed > 20


def _python_stage(customer: Customer, rules: list[tuple[str, str]]) -> str:
    from journeys.engine.runtime import profile_dict

    if customer.stage and customer.stage not in dict(rules):
        return customer.stage
    ctx = RuleContext(profile=profile_dict(customer, NOW), now=NOW)
    for key, rule in rules:
        if compile_rule(rule).evaluate(ctx).value:
            return key
    return customer.stage


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks: PostgreSQL")
def test_a_customer_a_worker_holds_is_skipped_and_moved_by_the_next_refresh(stages):
    # given two lapsed customers, one of them locked by a worker busy with their events
    busy = person("busy", last_seen_days=40, stage="active")
    person("idle", last_seen_days=40, stage="active")
    with row_held(Customer, busy.pk):
        # when the refresh runs meanwhile, it does not wait for the worker
        assert stages_refresh(now=NOW) == 1
        assert stages_of() == {"busy": "active", "idle": "at_risk"}
    # then the next refresh catches up, once
    assert stages_refresh(now=NOW) == 1
    assert stages_of() == {"busy": "at_risk", "idle": "at_risk"}
    assert StageTransition.objects.filter(customer=busy).count() == 1
