"""Shared vocabulary: the event catalog under each policy, lifecycle stages, cross-journey moves."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from journeys.engine.compiled import reset_caches
from journeys.models import (
    BusinessUnit,
    Customer,
    Event,
    EventDefinition,
    JourneyRun,
    LifecycleStage,
    QuarantinedEvent,
    StageTransition,
)
from journeys.services.catalog import catalog_report, catalog_reset
from journeys.engine.listeners import stages_reset
from journeys.services.workflows import version_build, version_publish, workflow_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh():
    reset_caches()
    catalog_reset()
    stages_reset()
    yield
    reset_caches()
    catalog_reset()
    stages_reset()


@pytest.fixture
def order_schema(db):
    return EventDefinition.objects.create(
        name="Order Completed", owner="checkout team",
        schema={"type": "object", "required": ["total"],
                "properties": {"total": {"type": "number", "minimum": 0}, "currency": {"type": "string"}}},
    )


def send(api, capture, kind="track", **body):
    with capture(execute=True):
        return api.post(kind, body)


@pytest.mark.parametrize("policy", ["accept", "flag", "reject"])
def test_catalog_policies(api, source, order_schema, policy, django_capture_on_commit_callbacks):
    source.schema_policy = policy
    source.save()

    good = send(api, django_capture_on_commit_callbacks, userId="u", event="Order Completed", properties={"total": 10})
    bad = send(api, django_capture_on_commit_callbacks, userId="u", event="Order Completed", properties={"total": "ten"})

    assert good.status_code == 200
    if policy == "reject":  # quarantined, named in the answer
        assert bad.status_code == 200
        assert [(r["field"], r["code"]) for r in bad.json()["rejected"]] == [("properties.total", "schema")]
        assert Event.objects.filter(name="Order Completed").count() == 1
        assert QuarantinedEvent.objects.get().code == "schema"
    else:
        assert bad.status_code == 200
        flagged = Event.objects.filter(name="Order Completed").exclude(violations=[])
        assert flagged.count() == (1 if policy == "flag" else 0)
        if policy == "flag":
            assert "properties.total" in flagged.get().violations[0]


def test_reject_in_a_strict_batch_names_index_and_property_and_stores_nothing(api, source, order_schema):
    source.schema_policy, source.strict = "reject", True
    source.save()
    batch = [{"type": "track", "userId": "u", "event": "Order Completed", "properties": {"total": 1}},
             {"type": "track", "userId": "u", "event": "Order Completed", "properties": {}}]

    response = api.post("batch", {"batch": batch})

    assert response.status_code == 400
    assert response.json()["field"] == "batch[1].properties"
    assert "total" in response.json()["message"]
    assert Event.objects.count() == 0 and Customer.objects.count() == 0


def test_unknown_and_drifting_events_report(api, source, order_schema, django_capture_on_commit_callbacks):
    for _ in range(3):
        send(api, django_capture_on_commit_callbacks, userId="u", event="Mystery Clicked")
    send(api, django_capture_on_commit_callbacks, userId="u", event="Order Completed", properties={"total": -5})
    send(api, django_capture_on_commit_callbacks, userId="u", event="Order Completed", properties={"total": 5})

    rows = {r.name: r for r in catalog_report(days=7)}

    assert (rows["Mystery Clicked"].count, rows["Mystery Clicked"].known) == (3, False)
    assert (rows["Order Completed"].known, rows["Order Completed"].flagged) == (True, 1)


def test_catalog_admin_rejects_invalid_schema_and_shows_report(admin_client, order_schema):
    response = admin_client.post("/admin/journeys/eventdefinition/add/",
                                 {"name": "X", "schema": '{"type": "nonsense"}', "owner": "", "description": ""})
    assert response.status_code == 200 and b"not a valid JSON Schema" in response.content
    assert admin_client.get("/admin/journeys/eventdefinition/report/").status_code == 200


@pytest.mark.parametrize("days", ["100000", "0", "-3", "seven", "1e3"])
def test_the_report_period_out_of_range_or_not_a_number_is_refused_saying_so(admin_client, days):
    response = admin_client.get(f"/admin/journeys/eventdefinition/report/?days={days}", follow=True)
    assert response.status_code == 200
    said = [str(m) for m in response.context["messages"]]
    assert said == [f"days must be a whole number of days from 1 to 90, not {days!r}: showing the last 7 days instead."]
    assert response.context["days"] == 7 and "last 7 days" in response.context["title"]
    with pytest.raises(ValidationError, match="days"):
        catalog_report(days=int(days) if days.lstrip("-").isdigit() else days)


def test_the_report_covers_any_period_from_a_day_to_ninety(admin_client):
    for days in (1, 90):
        response = admin_client.get(f"/admin/journeys/eventdefinition/report/?days={days}")
        assert response.context["days"] == days and not list(response.context["messages"])


@pytest.fixture
def stages(db):
    LifecycleStage.objects.create(key="vip", name="VIP", order=1, rule="profile.ltv >= 1000")
    LifecycleStage.objects.create(key="active", name="Active", order=2, rule="profile.ltv >= 0")
    LifecycleStage.objects.create(key="at_risk", name="At risk", order=3)


def test_rule_defined_stages_move_with_the_profile_and_keep_history(api, stages, django_capture_on_commit_callbacks):
    send(api, django_capture_on_commit_callbacks, "identify", userId="u", traits={"ltv": 10})
    assert Customer.objects.get(external_id="u").stage == "active"

    send(api, django_capture_on_commit_callbacks, "identify", userId="u", traits={"ltv": 5000})

    customer = Customer.objects.get(external_id="u")
    assert customer.stage == "vip"
    assert list(StageTransition.objects.filter(customer=customer).order_by("id").values_list("from_stage", "to_stage")) == [
        ("", "active"), ("active", "vip")]
    assert list(Event.objects.filter(name__startswith="Stage").order_by("id").values_list("name", "properties__stage")) == [
        ("Stage Entered", "active"), ("Stage Left", "active"), ("Stage Entered", "vip")]


def publish(name, definition):
    unit, _ = BusinessUnit.objects.get_or_create(slug="ops", defaults={"name": "Ops"})
    workflow = workflow_create(name=name, business_unit=unit)
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def test_stage_entered_triggers_a_workflow_and_a_step_moves_between_journeys(api, stages, django_capture_on_commit_callbacks):
    rescue = publish("At-risk rescue", {
        "trigger_event": "Stage Entered", "trigger_config": {"filter": "event.properties.stage == 'at_risk'"},
        "steps": [{"key": "note", "kind": "update_profile", "config": {"traits": {"rescued": True}}}],
    })
    winback = publish("Win-back", {"trigger_event": "Never", "steps": [
        {"key": "wait", "kind": "wait_for_event", "config": {"event": "Came Back", "timeout": "7d"}}]})
    publish("Onboarding", {
        "trigger_event": "Signed Up",
        "steps": [
            {"key": "check", "kind": "condition", "config": {"rule": "event.properties.engaged == false"}},
            {"key": "risk", "kind": "set_stage", "config": {"stage": "at_risk"}},
            {"key": "move", "kind": "start_workflow", "config": {"workflow": "Win-back", "exit_current": True}},
        ],
        "edges": [{"from": "check", "outcome": "yes", "to": "risk"}, {"from": "risk", "outcome": "next", "to": "move"}],
    })

    send(api, django_capture_on_commit_callbacks, userId="u", event="Signed Up", properties={"engaged": False})

    customer = Customer.objects.get(external_id="u")
    onboarding = JourneyRun.objects.get(workflow__name="Onboarding")
    moved = JourneyRun.objects.get(workflow=winback.workflow)
    assert onboarding.status == "exited"
    assert moved.status == "waiting" and moved.trigger_key.startswith("moved:")
    assert customer.stage == "at_risk"
    assert JourneyRun.objects.get(workflow=rescue.workflow).status == "completed"
    assert customer.traits["rescued"] is True
    assert onboarding.executions.count() == 3  # history of the old journey is kept


def test_rules_reading_properties_the_catalog_does_not_declare_are_flagged(order_schema):
    from journeys.services.workflows import version_validate

    unit, _ = BusinessUnit.objects.get_or_create(slug="ops", defaults={"name": "Ops"})
    workflow = workflow_create(name="Typo", business_unit=unit)
    version = version_build(workflow=workflow, definition={
        "trigger_event": "Order Completed", "trigger_config": {"filter": "event.properties.totl > 10"},
        "steps": [{"key": "c", "kind": "condition", "config": {"rule": "event.properties.total > 5"}}],
    })

    warnings = " ".join(version_validate(version=version).warnings)

    assert "event.properties.totl is not in the event catalog" in warnings
    assert "event.properties.total is not" not in warnings


def test_version_form_offers_catalog_event_names(admin_client, order_schema):
    unit, _ = BusinessUnit.objects.get_or_create(slug="ops", defaults={"name": "Ops"})
    version = version_build(workflow=workflow_create(name="Form", business_unit=unit), definition={
        "trigger_event": "Order Completed", "steps": [{"key": "g", "kind": "goal", "config": {}}]})

    page = admin_client.get(f"/admin/journeys/workflowversion/{version.pk}/change/")

    assert page.status_code == 200
    assert b'<datalist id="catalog-trigger_event"><option value="Order Completed">' in page.content
