"""The admin, the operations console, the agent console and the event API apply the same rules, and
the services re-check them: whoever a page refuses gets PermissionDenied from the service itself."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.urls import reverse

from agents.services.cases import case_resolve
from journeys.errors import PermissionDenied
from journeys.models import Event
from journeys.selectors import EDIT, VIEW, user_can
from journeys.services.governance import ROLE_AGENTS
from journeys.services.workflows import version_note_changed
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, TeamFactory
from tests.factories import make_source
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import draft_of, login

pytestmark = pytest.mark.django_db

ROLES = ["ops", "editor", "other_editor", "approver", "analyst", "agent", "nobody"]


@pytest.mark.parametrize("role", ROLES)
def test_admin_console_and_service_agree_on_a_workflow_version(client, people, live_workflow, role):
    user = people[role]
    draft = draft_of(live_workflow)
    may_view, may_edit = user_can(user, VIEW, live_workflow), user_can(user, EDIT, live_workflow)
    login(client, user)

    admin_page = client.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk]))
    console_page = client.get(reverse("console:version_graph", args=[draft.pk]))
    if may_view:
        assert admin_page.status_code == 200 and console_page.status_code == 200
        assert (b'name="change_reason"' in admin_page.content) == may_edit
    else:
        assert admin_page.status_code in (302, 403) and console_page.status_code in (302, 403, 404)
        assert draft.workflow.name.encode() not in console_page.content

    try:
        version_note_changed(version=draft, actor=user, reason="same rules everywhere")
    except PermissionDenied:
        allowed_by_service = False
    else:
        allowed_by_service = True
    assert allowed_by_service == may_edit


def test_a_staff_session_is_no_key_to_the_event_api(client, people):
    """The event API trusts write keys only: an ops admin's login does not let a browser post events."""
    login(client, people["ops"])
    body = {"userId": "u1", "event": "Signed Up", "messageId": "m-1"}
    response = client.post("/v1/track", body, content_type="application/json")
    assert response.status_code == 401
    source, key = make_source("web-disabled", enabled=False)
    import base64

    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    refused = client.post("/v1/track", body, content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert refused.status_code in (401, 403)
    assert not Event.objects.exists()


@pytest.fixture
def cases(people, django_capture_on_commit_callbacks):
    """Two agents holding the Agents role in two teams, one billing case routed to the billing agent."""
    billing, hardware = TeamFactory(slug="billing", categories=["billing"]), TeamFactory(slug="hw", categories=["hw"])
    role = Group.objects.get(name=ROLE_AGENTS)
    mine = AgentFactory(team=billing, skills={"billing": 5}, user__username="alice", user__is_staff=True)
    other = AgentFactory(team=hardware, skills={"hw": 5}, user__username="carol", user__is_staff=True)
    for agent in (mine, other):
        agent.user.groups.add(role)
    case = open_case(category="billing", capture=django_capture_on_commit_callbacks)
    assert case.assigned_agent == mine
    return {"mine": mine.user, "other": type(other.user).objects.get(pk=other.user.pk), "case": case}


def test_the_agents_role_does_not_make_every_agent_a_supervisor(client, people, cases):
    case, other = cases["case"], cases["other"]
    client.force_login(other)
    assert client.get(reverse("agents:case", args=[case.pk])).status_code == 404
    assert client.get(reverse("admin:agents_case_change", args=[case.pk])).status_code in (302, 403)
    assert client.get(reverse("admin:agents_case_changelist")).status_code == 403
    with pytest.raises(DjangoPermissionDenied):
        case_resolve(case=case, actor=other, code="fixed")

    client.force_login(cases["mine"])
    assert client.get(reverse("agents:case", args=[case.pk])).status_code == 200
    resolved = case_resolve(case=case, actor=cases["mine"], code="fixed")
    assert resolved.status == "resolved"

    login(client, people["ops"])  # supervisors: ops admins hold the model-wide case permissions
    assert client.get(reverse("admin:agents_case_change", args=[case.pk])).status_code == 200
