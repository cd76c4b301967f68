"""An editor's admin lists are scoped, and so are their sidebars (QA rolesscale #5 and the unit
filters): a filter lists the workflows and units the viewer may see, never every row of the
related table; and importing a workflow under another unit's workflow name tells nothing about it."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from journeys.services.workflows import workflow_export
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import login

pytestmark = pytest.mark.django_db

LISTS = ["journeys_auditentry", "journeys_workflow", "journeys_workflowversion", "journeys_changerequest",
         "journeys_journeyrun"]


def _page(client, name, query=""):
    response = client.get(reverse(f"admin:{name}_changelist") + query)
    assert response.status_code == 200, (name, response.status_code)
    return response.content.decode()


def test_the_audit_logs_workflow_filter_lists_only_the_editors_workflows(people, live_workflow, support_workflow):
    editor = login(Client(), people["editor"])

    page = _page(editor, "journeys_auditentry")
    asked_for_theirs = _page(editor, "journeys_auditentry", f"?workflow__id__exact={support_workflow.pk}")

    assert f"workflow__id__exact={live_workflow.pk}" in page and ">Signup<" in page
    assert f"workflow__id__exact={support_workflow.pk}" not in page
    for shown in (page, asked_for_theirs):  # (the second echoes the id the editor typed, and nothing else)
        assert "Support follow-up" not in shown
    # ops still see every workflow there
    assert "Support follow-up" in _page(login(Client(), people["ops"]), "journeys_auditentry")


@pytest.mark.parametrize("name", LISTS)
def test_no_list_names_another_units_workflows_or_unit_to_an_editor(people, units, live_workflow,
                                                                     support_workflow, name):
    page = _page(login(Client(), people["editor"]), name)

    assert "Support follow-up" not in page
    assert f"business_unit__id__exact={units['support'].pk}" not in page


def test_the_unit_filters_list_every_unit_for_those_who_see_every_workflow(people, units, live_workflow,
                                                                             support_workflow):
    page = _page(login(Client(), people["approver"]), "journeys_workflowversion")

    assert f"workflow__business_unit__id__exact={units['support'].pk}" in page
    assert f"workflow__business_unit__id__exact={units['retention'].pk}" in page


def test_importing_under_another_units_workflow_name_says_only_that_the_name_is_in_use(people, live_workflow,
                                                                                       support_workflow):
    # given an export of the editor's own workflow, renamed to the other unit's workflow's name
    export = workflow_export(version=live_workflow.live_version)
    export["workflow"]["name"] = "Support follow-up"
    upload = SimpleUploadedFile("flow.json", json.dumps(export).encode(), content_type="application/json")
    editor = login(Client(), people["editor"])

    # when the editor imports it
    response = editor.post(reverse("admin:journeys_workflow_import"), {"file": upload, "name": ""})

    # then the name is refused as in use, as creating a workflow with it would be; nothing says whose
    page = response.content.decode()
    assert response.status_code == 200
    assert "the workflow name &#x27;Support follow-up&#x27; is in use: import under another name" in page
    assert "may not" not in page
    assert support_workflow.versions.count() == 1
