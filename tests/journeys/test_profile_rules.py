"""Rules read from each customer's profile alone, with no event (cron segments, segment-entry rules,
lifecycle stages, API segments): a path under event, context or journey has no value there, so it is
refused where the rule is written (admin form, version validation, management API), naming the path.
A call whose constant arguments always fail (date('2024-02-30')) is refused in any rule."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.admin.base import REASON_FIELD
from journeys.models import BusinessUnit, LifecycleStage
from journeys.services.workflows import version_build, version_validate, workflow_create

pytestmark = pytest.mark.django_db

NEVER = ["event.properties.total > 5", "context.device == 'ios'", "journey.x == 1",
         "profile.plan == 'pro' or context.x == 1", "'k' in event"]
ALLOWED = "only profile.* paths can be used"


@pytest.fixture
def workflow():
    return workflow_create(name="audience", business_unit=BusinessUnit.objects.create(name="Ops", slug="ops"))


def definition(kind: str, rule: str) -> dict:
    config = {"cron": "0 9 * * 1", "segment": rule} if kind == "schedule" else {"rule": rule}
    return {"trigger_kind": kind, "trigger_config": config, "steps": [{"key": "done", "kind": "goal", "config": {}}]}


@pytest.mark.parametrize("kind", ["schedule", "segment_entry"])
@pytest.mark.parametrize("rule", NEVER)
def test_a_segment_or_segment_entry_rule_reading_an_event_context_or_journey_is_refused(workflow, kind, rule):
    # when a version is built with such a segment
    with pytest.raises(ValidationError) as refused:
        version_build(workflow=workflow, definition=definition(kind, rule))
    # then the trigger's settings are refused, naming the path and what may be read instead
    message = refused.value.message_dict["trigger_config"][0]
    setting = "segment" if kind == "schedule" else "rule"
    path = rule.split(" or ")[-1].split()[0].strip("'") if "'k'" not in rule else "event"
    assert message.startswith(f"{setting}: {path} has no value here"), message
    assert ALLOWED in message


def test_a_version_saved_as_is_reports_the_segment_when_validated(workflow):
    # given a draft kept as written (an import or a partial edit), with a context path in its cron segment
    version = version_build(workflow=workflow, definition=definition("schedule", "context.device == 'ios'"),
                            lenient=True)
    # then its validation (shown on its page, checked before review and publishing) names the path
    errors = version_validate(version=version).errors
    assert any("context.device has no value here" in e and ALLOWED in e for e in errors), errors


def test_profile_segments_are_still_accepted(workflow):
    rule = "profile.plan == 'pro' and days_since(profile.last_seen) > 3 and events_in_last('Buy', days=7) > 0"
    version = version_build(workflow=workflow, definition=definition("segment_entry", rule))
    assert version_validate(version=version).ok


@pytest.mark.parametrize("rule", NEVER)
def test_the_admin_refuses_a_stage_rule_reading_an_event_context_or_journey(admin_client, rule):
    # when a stage is added with such a rule
    response = admin_client.post(reverse("admin:journeys_lifecyclestage_add"),
                                 {"key": "never", "name": "Never", "order": 1, "rule": rule, "description": "",
                                  REASON_FIELD: "try"})
    # then the form shows the error on the rule field and no stage is stored
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["rule"]
    assert "has no value here" in errors[0] and ALLOWED in errors[0], errors
    assert not LifecycleStage.objects.exists()


def test_the_admin_still_adds_a_profile_stage_rule(admin_client):
    response = admin_client.post(reverse("admin:journeys_lifecyclestage_add"),
                                 {"key": "lapsed", "name": "Lapsed", "order": 1,
                                  "rule": "profile.days_since_last_seen > 30", "description": "",
                                  REASON_FIELD: "lapsed customers"})
    assert response.status_code == 302
    assert LifecycleStage.objects.get().rule == "profile.days_since_last_seen > 30"


ALWAYS_FAILING = ["profile.signup > date('2024-02-30')", "days_since('yesterday') > 1",
                  "events_in_last('Order Completed', days='3') > 1", "profile.plan == 'pro' or int('abc') > 1"]


@pytest.mark.parametrize("rule", ALWAYS_FAILING)
def test_a_call_whose_constant_arguments_always_fail_is_refused_where_rules_are_written(workflow, admin_client, rule):
    # when such a rule is a segment-entry rule, an entry rule, a condition step's rule or a stage rule
    with pytest.raises(ValidationError) as refused:
        version_build(workflow=workflow, definition=definition("segment_entry", rule))
    with pytest.raises(ValidationError) as entry:
        version_build(workflow=workflow, definition={**definition("segment_entry", "profile.plan == 'pro'"),
                                                     "entry_rule": rule})
    with pytest.raises(ValidationError) as step:
        version_build(workflow=workflow, definition={
            **definition("segment_entry", "profile.plan == 'pro'"),
            "steps": [{"key": "check", "kind": "condition", "config": {"rule": rule}},
                      {"key": "done", "kind": "goal", "config": {}}],
            "edges": [{"from": "check", "outcome": "yes", "to": "done"}]})
    response = admin_client.post(reverse("admin:journeys_lifecyclestage_add"),
                                 {"key": "never", "name": "Never", "order": 1, "rule": rule, "description": "",
                                  REASON_FIELD: "try"})
    # then each says which call fails with which value, and where
    name = rule.split("(")[0].split()[-1]
    for message in (refused.value.message_dict["trigger_config"][0], str(entry.value), str(step.value),
                    response.context["adminform"].form.errors["rule"][0]):
        assert f"{name}() fails with these constant arguments" in message and "at column" in message, message
    assert not LifecycleStage.objects.exists()


def test_constant_calls_that_work_are_accepted(workflow):
    rule = "date(profile.signup) > date('2024-02-29') and days_since('2024-01-01') > 1 and int('3') == 3"
    assert version_validate(version=version_build(workflow=workflow, definition=definition("segment_entry", rule))).ok
