"""Admin pages for the ops team, demo data, and customer merges carrying cases along."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from agents.demo import agents_demo_load
from agents.models import Agent, Case, Team
from tests.agents.conftest import open_case
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = UserFactory(username="ops", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_demo_agents_load_idempotently():
    agents_demo_load()
    agents_demo_load()
    assert Agent.objects.count() == 3 and Team.objects.filter(is_fallback=True).count() == 1
    assert Agent.objects.get(user__username="agent").user.groups.get() == Team.objects.get(slug="support").group


@pytest.mark.parametrize("model", ["team", "agent", "case", "replytemplate", "triagebot", "conversation"])
def test_admin_pages_open(admin_client, model, django_capture_on_commit_callbacks):
    agents_demo_load()
    open_case(category="billing", capture=django_capture_on_commit_callbacks)
    assert admin_client.get(reverse(f"admin:agents_{model}_changelist")).status_code == 200
    from agents.models import TriageBot

    obj = {"team": Team, "agent": Agent, "case": Case, "triagebot": TriageBot}.get(model)
    if obj is not None:
        pk = obj.objects.first().pk
        assert admin_client.get(reverse(f"admin:agents_{model}_change", args=[pk])).status_code == 200


def test_a_team_created_in_the_admin_gets_its_permission_group(admin_client):
    response = admin_client.post(reverse("admin:agents_team_add"), {
        "name": "Returns", "slug": "returns", "categories": '["returns"]', "change_reason": "returns get a queue"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Team.objects.get(slug="returns").group == Group.objects.get(name="agents-team-returns")


def test_a_blank_category_is_refused_with_what_to_fix(admin_client):
    response = admin_client.post(reverse("admin:agents_team_add"), {
        "name": "Returns", "slug": "returns", "categories": '["returns", ""]', "change_reason": "returns get a queue"})
    assert response.status_code == 200
    assert "a category cannot be blank" in response.content.decode()
    assert not Team.objects.filter(slug="returns").exists()


def test_an_agent_saved_in_the_admin_joins_only_their_teams_group(admin_client):
    agents_demo_load()
    agent = Agent.objects.get(user__username="agent")
    triage = Team.objects.get(slug="triage")
    data = {"user": agent.user.pk, "team": triage.pk, "languages": '["en"]', "capacity": 4, "status": "online",
            "timezone": "UTC", "working_hours": "{}", "change_reason": "moves to triage",
            "skills-TOTAL_FORMS": 0, "skills-INITIAL_FORMS": 0, "skills-MIN_NUM_FORMS": 0, "skills-MAX_NUM_FORMS": 1000}
    response = admin_client.post(reverse("admin:agents_agent_change", args=[agent.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(agent.user.groups.all()) == [triage.group]


def test_merging_customers_moves_their_cases():
    from journeys.services.identity import customer_merge

    anonymous, known = CustomerFactory(), CustomerFactory()
    case = open_case(customer=anonymous)

    customer_merge(target=known, merged=anonymous, reason="identified", actor="test")

    case.refresh_from_db()
    assert case.customer == known


def test_the_admin_refuses_working_hours_that_do_not_parse(admin_client):
    agents_demo_load()
    agent = Agent.objects.get(user__username="agent")
    data = {"user": agent.user.pk, "team": agent.team.pk, "languages": '["en"]', "capacity": 4, "status": "online",
            "timezone": "UTC", "working_hours": '{"monday": "9-5"}',
            "skills-TOTAL_FORMS": 0, "skills-INITIAL_FORMS": 0, "skills-MIN_NUM_FORMS": 0, "skills-MAX_NUM_FORMS": 1000}
    response = admin_client.post(reverse("admin:agents_agent_change", args=[agent.pk]), data)
    assert response.status_code == 200 and "per weekday (mon..sun)" in response.content.decode()


def test_erasing_a_customer_clears_what_their_cases_say_and_resolving_one_records_nothing(
        django_capture_on_commit_callbacks):
    from agents.models import CaseEntry
    from agents.services.cases import case_note_add, case_resolve
    from channels_app.services.privacy import customer_erase
    from journeys.models import Event
    from tests.factories import UserFactory

    customer = CustomerFactory(external_id="parcel-person")
    case = open_case(customer=customer, text="where is my parcel, I live at 1 Main St")
    admin = UserFactory(is_superuser=True, is_staff=True)
    case_note_add(case=case, actor=admin, body="she lives at 1 Main St")

    customer_erase(customer=customer, actor="test", reason="GDPR")

    case.refresh_from_db()
    assert (case.subject, case.text, case.status) == ("(erased)", "", "closed")
    from agents.errors import CaseError

    with pytest.raises(CaseError, match="was erased"):
        case_note_add(case=case, actor=admin, body="a new note about her")
    assert not CaseEntry.objects.filter(case=case).exclude(body="").exists()
    assert not any("Main St" in (h.text + h.subject) for h in case.history.all())
    events = Event.objects.count()
    from journeys.services.internal_events import event_record_internal

    event_record_internal(customer=customer, name="Case Resolved")  # a stale copy of the profile, too
    assert Event.objects.count() == events  # the tombstone gets no new event
