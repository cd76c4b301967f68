"""Workflows named by start_workflow steps (QA builder report, defect 2): the steps find their
workflows by name at run time, so renaming one that a live version starts or ends is refused,
naming the versions and steps; a run whose target is gone anyway (renamed or deleted around the
check) fails that step saying so, not with a raw Workflow.DoesNotExist."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Customer, JourneyRun, Workflow
from journeys.services.workflows import version_build, version_publish, workflow_create, workflow_save
from tests.journeys.test_governance_fixtures import admin_form_data

pytestmark = pytest.mark.django_db


@pytest.fixture
def moving(db):
    """'Target' (live), and 'Source' whose live version moves customers to it on 'Go'."""
    reset_caches()
    unit = BusinessUnit.objects.create(slug="growth", name="Growth")
    target = workflow_create(name="Target", business_unit=unit)
    version_publish(version=version_build(workflow=target, definition={
        "trigger_event": "Never", "steps": [{"key": "g", "kind": "goal", "config": {}}]}), reason="test")
    ended = workflow_create(name="Ended", business_unit=unit)
    version_publish(version=version_build(workflow=workflow_create(name="Source", business_unit=unit), definition={
        "trigger_event": "Go", "steps": [{"key": "move", "kind": "start_workflow",
                                          "config": {"workflow": "Target", "exit_workflows": ["Ended"]}}]}), reason="test")
    yield target, ended
    reset_caches()


@pytest.mark.parametrize("which", ["started", "ended"])
def test_renaming_a_workflow_a_live_step_names_is_refused_on_its_page(moving, admin_client, which):
    workflow = moving[0] if which == "started" else moving[1]
    url = reverse("admin:journeys_workflow_change", args=[workflow.pk])
    data = admin_form_data(admin_client.get(url), name="Renamed", change_reason="clearer name")

    response = admin_client.post(url, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["name"]
    assert errors == [f"versions in use name this workflow {workflow.name!r}: Source v1 (live): step move. Renamed, "
                      "they would no longer find it at that step. Publish versions of them that name another "
                      "workflow first, or keep the name"]
    assert Workflow.objects.get(pk=workflow.pk).name == workflow.name


def test_the_service_refuses_the_rename_too_and_other_edits_go_through(moving):
    target = Workflow.objects.get(name="Target")
    target.name = "Renamed"
    with pytest.raises(ValidationError) as refused:
        workflow_save(workflow=target, reason="rename")
    assert "Source v1 (live): step move" in refused.value.message_dict["name"][0]

    target = Workflow.objects.get(name="Target")
    target.description = "the goal"
    assert workflow_save(workflow=target, reason="describe").description == "the goal"
    unnamed = workflow_create(name="Free", business_unit=target.business_unit)
    unnamed.name = "Free 2"
    assert workflow_save(workflow=unnamed, reason="rename").name == "Free 2"


def test_a_run_whose_target_is_gone_fails_that_step_with_a_clear_reason(moving, api, django_capture_on_commit_callbacks):
    Workflow.objects.filter(name="Target").update(name="Renamed behind the check")  # e.g. by SQL
    reset_caches()

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("track", {"userId": "u", "event": "Go"}).status_code == 200

    run = JourneyRun.objects.get(customer=Customer.objects.get(external_id="u"))
    assert run.status == "failed"
    reason = ("workflow: there is no workflow named 'Target' any more (renamed or deleted?); publish a version "
              "of this workflow that names the one to start")
    assert run.error == f"step move: {reason}"
    assert "DoesNotExist" not in run.error
    assert run.executions.get(step_key="move").error == reason
