"""Workflows and jobs read through the management API: ids, names, live version and trigger,
versions; lists page by id without duplicates or skips while rows are added; scopes apply; the
trigger route on the same path keeps working."""

from __future__ import annotations

import pytest

from journeys.choices import ApiScope, WorkflowStatus
from journeys.models import BusinessUnit, Job, Workflow
from journeys.services.workflows import version_build, workflow_create
from tests.apiclient import Api, make_token
from tests.factories import CustomerFactory, live_workflow

pytestmark = pytest.mark.django_db

GOAL = {"trigger_event": "Signed Up", "steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []}


@pytest.fixture
def api():
    _, key = make_token(ApiScope.WORKFLOWS_READ, name="platform")
    return Api(key)


def draft_workflow(name: str) -> Workflow:
    unit, _ = BusinessUnit.objects.get_or_create(slug="growth", defaults={"name": "Growth"})
    workflow = workflow_create(name=name, business_unit=unit)
    version_build(workflow=workflow, definition=GOAL)
    return workflow


def test_the_list_names_each_workflow_with_its_live_version_and_trigger(api):
    # given a live workflow, a paused one and one never published
    live = live_workflow(name="welcome", definition=GOAL)
    paused = live_workflow(name="winback", definition={**GOAL, "trigger_event": "Churned"})
    Workflow.objects.filter(pk=paused.pk).update(status=WorkflowStatus.PAUSED)
    draft = draft_workflow("someday")

    # when listed
    rows = {row["id"]: row for row in api.pages("workflows")}

    # then each says its state, live version and trigger
    assert rows[live.pk] | {"updated_at": None} == {
        "id": live.pk, "name": "welcome", "status": "active", "paused": False, "live_version": 1,
        "trigger_kind": "event", "trigger_event": "Signed Up", "updated_at": None}
    assert (rows[paused.pk]["paused"], rows[paused.pk]["status"], rows[paused.pk]["trigger_event"]) == (
        True, "paused", "Churned")
    assert (rows[draft.pk]["live_version"], rows[draft.pk]["trigger_kind"]) == (None, None)


def test_a_workflow_shows_its_versions_and_the_trigger_route_still_works(api):
    # given a workflow with a live version 1 and a draft version 2
    workflow = live_workflow(name="welcome", definition=GOAL)
    version_build(workflow=workflow, definition=GOAL)

    # when read
    body = api.get(f"workflows/{workflow.pk}").body

    # then its versions are listed by number with their state and publication time
    assert [(v["number"], v["state"]) for v in body["versions"]] == [(1, "live"), (2, "draft")]
    assert body["versions"][0]["published_at"] and body["versions"][1]["published_at"] is None
    assert (body["live_version"], body["business_unit"]) == (1, "growth")

    # and /workflows/{id}/trigger still triggers, with its own scope
    CustomerFactory(external_id="u1")
    _, trigger_key = make_token(ApiScope.TRIGGER, name="backend")
    triggered = Api(trigger_key).post(f"workflows/{workflow.pk}/trigger",
                                      {"idempotency_key": "k1", "recipients": [{"user_id": "u1"}]})
    assert triggered.status_code == 200, triggered.body
    assert api.post(f"workflows/{workflow.pk}/trigger", {"idempotency_key": "k2", "recipients": [
        {"user_id": "u1"}]}).body["message"] == "this token lacks the 'trigger' scope"


def test_paging_has_no_duplicates_or_skips_while_workflows_are_added(api):
    # given five workflows
    before = [live_workflow(name=f"w{n}", definition=GOAL).pk for n in range(5)]
    added: list[int] = []

    # when a client pages two at a time while a workflow is added before each page
    rows = api.pages("workflows?limit=2", between=lambda: added.append(draft_workflow(f"new{len(added)}").pk))

    # then it saw each workflow once, the new ones after the old, in id order
    assert [row["id"] for row in rows] == before + added and len(added) == 3


@pytest.mark.parametrize("path", ["workflows", "workflows/1", "jobs"])
def test_a_token_without_the_scope_is_refused_naming_it(path):
    _, key = make_token(ApiScope.CUSTOMERS_READ, name="crm")
    response = Api(key).get(path)
    scope = "trigger" if path == "jobs" else "workflows:read"
    assert (response.status_code, response.body["message"]) == (403, f"this token lacks the {scope!r} scope")


@pytest.mark.parametrize(("query", "field"), [("limit=0", "limit"), ("limit=x", "limit"), ("cursor=nope", "cursor")])
def test_bad_paging_is_a_400_naming_the_parameter(api, query, field):
    response = api.get(f"workflows?{query}")
    assert (response.status_code, response.body["field"]) == (400, field)


def test_an_unknown_workflow_is_a_404_naming_the_id(api):
    response = api.get("workflows/424242")
    assert (response.status_code, response.body["message"]) == (404, "no workflow with id 424242")


def test_jobs_list_shows_the_kinds_the_token_starts_and_pages_while_jobs_are_added():
    # given trigger and export jobs made through the API, and one made in the admin (no token)
    token, key = make_token(ApiScope.TRIGGER, name="backend")
    trigger_jobs = [Job.objects.create(kind="trigger", api_token=token).pk for _ in range(3)]
    Job.objects.create(kind="export", api_token=token)
    Job.objects.create(kind="trigger")
    added: list[int] = []

    # when a trigger-scoped token lists jobs, two a page, while jobs are added
    def add():
        added.append(Job.objects.create(kind="trigger", api_token=token).pk)
        Job.objects.create(kind="export", api_token=token)

    rows = Api(key).pages("jobs?limit=2", between=add)

    # then it sees its kind's API jobs once each, in id order, and nothing else
    assert [row["id"] for row in rows] == trigger_jobs + added
    assert {row["kind"] for row in rows} == {"trigger"}
