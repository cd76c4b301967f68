"""Routing rules: category experience, language, online status, free capacity, least loaded, fallback queue."""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

import pytest

from agents.errors import CaseError
from agents.services.routing import case_assign, case_route, case_take, cases_route_waiting
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, TeamFactory
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def team():
    return TeamFactory(slug="support", categories=["billing", "hardware"])


@pytest.fixture
def fallback():
    return TeamFactory(slug="triage", is_fallback=True)


def test_the_most_experienced_agent_in_the_category_gets_the_case(team, django_capture_on_commit_callbacks):
    AgentFactory(team=team, skills={"hardware": 5})
    novice = AgentFactory(team=team, skills={"billing": 1})
    expert = AgentFactory(team=team, skills={"billing": 4})

    case = open_case(category="billing", capture=django_capture_on_commit_callbacks)

    assert case.assigned_agent == expert and case.status == "assigned"
    assert novice.cases.count() == 0


def test_among_equals_the_customers_language_wins(team, django_capture_on_commit_callbacks):
    AgentFactory(team=team, languages=["en"], skills={"billing": 3})
    german = AgentFactory(team=team, languages=["en", "de"], skills={"billing": 3})

    case = open_case(language="de", capture=django_capture_on_commit_callbacks)

    assert case.assigned_agent == german


def test_online_beats_away_and_offline_agents_get_nothing(team, django_capture_on_commit_callbacks):
    AgentFactory(team=team, status="offline", skills={"billing": 5})
    away = AgentFactory(team=team, status="away", skills={"billing": 3})
    online = AgentFactory(team=team, status="online", skills={"billing": 3})

    first = open_case(capture=django_capture_on_commit_callbacks)
    assert first.assigned_agent == online

    online.status = "offline"
    online.save()
    second = open_case(capture=django_capture_on_commit_callbacks)
    assert second.assigned_agent == away


def test_least_loaded_agent_then_free_capacity_spreads_the_work(team, django_capture_on_commit_callbacks):
    a = AgentFactory(team=team, capacity=2, skills={"billing": 3})
    b = AgentFactory(team=team, capacity=2, skills={"billing": 3})

    cases = [open_case(capture=django_capture_on_commit_callbacks) for _ in range(4)]

    assert sorted(c.assigned_agent_id for c in cases) == sorted([a.pk, a.pk, b.pk, b.pk])


def test_full_agents_are_skipped_and_outside_working_hours_too(team, django_capture_on_commit_callbacks):
    full = AgentFactory(team=team, capacity=1, skills={"billing": 5})
    open_case(capture=django_capture_on_commit_callbacks)  # fills `full`
    # Working hours that never include "now": an empty span for every day.
    AgentFactory(team=team, skills={"billing": 4}, working_hours={d: [] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    spare = AgentFactory(team=team, skills={"billing": 1})

    case = open_case(capture=django_capture_on_commit_callbacks)

    assert case.assigned_agent == spare
    assert full.cases.filter(status="assigned").count() == 1


def test_working_hours_are_read_in_the_agents_timezone(team):
    agent = AgentFactory(team=team, timezone="Asia/Tokyo", working_hours={"mon": ["09:00", "17:00"]})
    monday_10_tokyo = datetime(2026, 11, 23, 1, 0, tzinfo=dt_timezone.utc)
    monday_10_utc = datetime(2026, 11, 23, 10, 0, tzinfo=dt_timezone.utc)
    assert agent.is_working(monday_10_tokyo) and not agent.is_working(monday_10_utc)


def test_nobody_fits_so_the_case_waits_in_the_fallback_queue_until_someone_comes_online(
    fallback, django_capture_on_commit_callbacks
):
    other = TeamFactory(categories=["hardware"])
    AgentFactory(team=other, skills={"hardware": 5})
    triage_agent = AgentFactory(team=fallback, status="offline")

    case = open_case(category="gardening", capture=django_capture_on_commit_callbacks)
    assert (case.status, case.team, case.assigned_agent) == ("new", fallback, None)
    assert case.entries.filter(kind="assignment", body__contains="queued in").exists()

    triage_agent.status = "online"
    triage_agent.save()
    assert cases_route_waiting() == 1
    case.refresh_from_db()
    assert case.assigned_agent == triage_agent


def test_busy_category_team_keeps_the_case_in_its_own_queue_and_an_agent_can_take_it(team, fallback, django_capture_on_commit_callbacks):
    agent = AgentFactory(team=team, capacity=1, skills={"billing": 3})
    open_case(capture=django_capture_on_commit_callbacks)
    waiting = open_case(capture=django_capture_on_commit_callbacks)
    assert (waiting.status, waiting.team) == ("new", team)

    with pytest.raises(CaseError) as full:
        case_take(case=waiting, actor=agent.user)
    assert full.value.code == "no_capacity"

    colleague = AgentFactory(team=team, status="offline")
    taken = case_take(case=waiting, actor=colleague.user)
    assert taken.assigned_agent == colleague


def test_routing_twice_is_harmless(team, django_capture_on_commit_callbacks):
    AgentFactory(team=team, skills={"billing": 3})
    case = open_case(capture=django_capture_on_commit_callbacks)
    case_route(case_id=case.pk)
    assert case.entries.filter(kind="assignment").count() == 1


def test_a_supervisor_can_assign_but_not_beyond_capacity(team, django_capture_on_commit_callbacks):
    from django.contrib.auth.models import Permission

    lead = UserFactory()
    lead.user_permissions.add(Permission.objects.get(codename="change_case"))
    busy = AgentFactory(team=team, capacity=1, status="offline")
    case = open_case(capture=django_capture_on_commit_callbacks)
    other = open_case(capture=django_capture_on_commit_callbacks)

    case_assign(case=case, agent=busy, actor=lead)
    with pytest.raises(CaseError):
        case_assign(case=other, agent=busy, actor=lead)
    with pytest.raises(CaseError):
        case_assign(case=other, agent=busy, actor=busy.user)


def test_an_agent_coming_online_picks_up_the_waiting_cases(client, team, django_capture_on_commit_callbacks):
    agent = AgentFactory(team=team, status="offline", skills={"billing": 2})
    case = open_case(capture=django_capture_on_commit_callbacks)
    assert case.status == "new"

    client.force_login(agent.user)
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/agents/status/", {"status": "online"})

    case.refresh_from_db()
    assert case.assigned_agent == agent


def test_a_step_can_name_the_team(team, django_capture_on_commit_callbacks):
    vip = TeamFactory(slug="vip-desk", categories=[])
    AgentFactory(team=team, skills={"billing": 5})
    vip_agent = AgentFactory(team=vip)

    case = open_case(team=vip, capture=django_capture_on_commit_callbacks)

    assert case.assigned_agent == vip_agent


def test_resolving_a_case_hands_the_agent_the_next_waiting_one(team, django_capture_on_commit_callbacks):
    from agents.services.cases import case_resolve

    agent = AgentFactory(team=team, capacity=1, skills={"billing": 2})
    first = open_case(capture=django_capture_on_commit_callbacks)
    waiting = open_case(capture=django_capture_on_commit_callbacks)
    assert waiting.status == "new"

    with django_capture_on_commit_callbacks(execute=True):
        case_resolve(case=first, actor=agent.user, code="fixed")

    waiting.refresh_from_db()
    assert waiting.assigned_agent == agent
