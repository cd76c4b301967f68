"""The rule editor's endpoint: the real rule parser's verdict while typing, with the error's
position, and warnings for attributes nobody has (profiles seen, the event catalog's schema)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from journeys.models import EventDefinition, Workflow
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def check(client, rule, **params):
    response = client.get(reverse("console:rule_check"), {"rule": rule, **params})
    assert response.status_code == 200
    return response.json()


def test_a_valid_rule_is_ok_and_lists_what_it_reads(ops):
    data = check(ops, "profile.ltv >= 500 and event.properties.total > 10")
    assert data["ok"] is True
    assert data["references"] == ["event.properties.total", "profile.ltv"]


def test_a_syntax_error_comes_back_with_its_message_and_position(ops):
    data = check(ops, "profile.ltv >= 500 and and")
    assert data["ok"] is False
    assert data["position"] == 23 and data["column"] == 24
    assert "and" in data["error"] and data["message"].endswith("at column 24")
    unknown = check(ops, "profile.ltv >= 5 or explode(1)")
    assert unknown["ok"] is False and "explode" in unknown["error"] and unknown["position"] == 20


def test_unknown_attributes_are_warnings_using_profiles_steps_and_the_catalog(ops):
    version = Workflow.objects.get(name="Cart abandonment").live_version
    EventDefinition.objects.create(name="Checkout Started", schema={
        "type": "object", "properties": {"total": {"type": "number"}}})
    data = check(ops, "profile.ltvv > 1 and profile.ltv > 1 and event.properties.totl > 1 "
                      "and event.properties.total > 1 and journey.discount > 1", version=version.pk)
    assert data["ok"] is True
    warnings = " | ".join(data["warnings"])
    assert "profile.ltvv: no customer has this attribute" in warnings
    assert "event.properties.totl: not in the event catalog's schema for Checkout Started" in warnings
    assert "journey.discount: no step of this version sets it" in warnings
    assert "profile.ltv:" not in warnings and "properties.total:" not in warnings


def test_an_empty_rule_is_not_an_error_yet(ops):
    assert check(ops, "   ") == {"ok": True, "empty": True, "references": [], "warnings": []}


def test_only_staff_may_ask(client, demo):
    UserFactory(username="outsider", is_staff=False)
    client.login(username="outsider", password="pw")
    response = client.get(reverse("console:rule_check"), {"rule": "true"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_step_form_wires_rule_fields_to_the_checker(ops):
    version = Workflow.objects.get(name="Cart abandonment").live_version
    step = version.steps.get(key="valuable")
    page = ops.get(reverse("admin:journeys_step_change", args=[step.pk])).content.decode()
    assert f'data-rule-check="{reverse("console:rule_check")}"' in page
    assert f'data-version="{version.pk}"' in page and 'id="id_rule-feedback"' in page
    assert "console/editor.js" in page


def test_the_versions_entry_rule_and_goal_filter_are_checked_as_typed_too(ops):
    from journeys.services.workflows import version_new_draft

    version = version_new_draft(version=Workflow.objects.get(name="Cart abandonment").live_version)
    page = ops.get(reverse("admin:journeys_workflowversion_change", args=[version.pk])).content.decode()
    assert 'id="id_entry_rule-feedback"' in page and 'id="id_goal_filter-feedback"' in page
    assert 'data-event="Checkout Started"' in page and "console/editor.js" in page


def test_update_profile_values_are_checked_as_rules_when_they_are_rules(ops):
    from journeys.services.workflows import version_new_draft

    draft = version_new_draft(version=Workflow.objects.get(name="Cart abandonment").live_version)
    page = ops.get(f"{reverse('admin:journeys_step_add')}?version={draft.pk}&kind=update_profile").content.decode()
    assert 'data-rule-when="id_as_1"' in page and 'id="id_value_1-feedback"' in page


def test_a_constant_call_that_always_fails_is_an_error_as_typed_as_on_save(ops):
    data = check(ops, "profile.ltv > 1 and profile.signup < date('2024-02-30')")
    assert data["ok"] is False
    assert "date() fails with these constant arguments" in data["error"]
    assert data["position"] == len("profile.ltv > 1 and profile.signup < ")


def test_a_segment_or_stage_rule_is_checked_as_read_from_the_profile_alone(ops):
    rule = "profile.plan == 'pro' and event.properties.total > 10"
    assert check(ops, rule)["ok"] is True  # a filter or entry rule may read the event
    data = check(ops, rule, profile="1")
    assert data["ok"] is False
    assert data["error"].startswith("event.properties.total has no value here") and "only profile.*" in data["error"]
    assert data["position"] == rule.index("event")
    other = "profile.event_count > 1 and context.device == 'ios'"  # the root, not a trait that begins with it
    assert check(ops, other, profile="1")["position"] == other.index("context")


def test_segment_and_stage_inputs_ask_for_the_profile_only_check(ops):
    from journeys.services.workflows import version_new_draft

    draft = version_new_draft(version=Workflow.objects.get(name="Cart abandonment").live_version)
    page = ops.get(reverse("console:canvas_settings", args=[draft.pk])).content.decode()
    for name in ("rule", "segment"):
        assert f'name="{name}"' in page
    assert page.count('data-rule-profile="1"') == 2
    stage_page = ops.get(reverse("admin:journeys_lifecyclestage_add")).content.decode()
    assert 'data-rule-profile="1"' in stage_page and "console/editor.js" in stage_page
