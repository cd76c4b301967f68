"""The version's admin page checks its trigger and entry settings as the canvas's Trigger & entry
panel does (QA builder report, lesser): it saved a cron of 'every monday', an entry step no step
has and a goal filter 'event.x >' with only "changed successfully"."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from journeys.models import WorkflowVersion
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, draft_of

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("changes, field, message", [
    ({"trigger_kind": "schedule", "trigger_event": "", "trigger_config": json.dumps({"cron": "every monday"})},
     "trigger_config", "cron: "),
    ({"entry_step": "no_such_step"}, "entry_step", "this version has no step 'no_such_step'"),
    ({"goal_event": "Order Completed", "goal_filter": "event.x >"}, "goal_filter", "rule error: "),
])
def test_bad_settings_are_refused_on_the_version_page_naming_the_field(admin_client, live_workflow, changes, field,
                                                                       message):
    draft = draft_of(live_workflow)
    before = WorkflowVersion.objects.values().get(pk=draft.pk)
    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    data = admin_form_data(admin_client.get(url), change_reason="settings", **changes)

    response = admin_client.post(url, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors[field]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert WorkflowVersion.objects.values().get(pk=draft.pk) == before


def test_good_settings_are_saved_from_the_version_page(admin_client, live_workflow):
    draft = draft_of(live_workflow)
    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    data = admin_form_data(admin_client.get(url), change_reason="weekly", trigger_kind="schedule", trigger_event="",
                           trigger_config=json.dumps({"cron": "0 9 * * 1"}), goal_event="Order Completed",
                           goal_filter="event.properties.total > 10")

    assert admin_client.post(url, data).status_code == 302
    saved = WorkflowVersion.objects.get(pk=draft.pk)
    assert (saved.trigger_kind, saved.trigger_config, saved.goal_filter) == (
        "schedule", {"cron": "0 9 * * 1"}, "event.properties.total > 10")
