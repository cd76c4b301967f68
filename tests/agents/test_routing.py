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


def test_an_away_expert_gets_no_case_while_an_online_novice_has_room(team, django_capture_on_commit_callbacks):
    """The QA's loyalty desk: the away agent is the expert (skill 5), the online one a novice (1)."""
    away = AgentFactory(team=team, status="away", capacity=5, skills={"billing": 5})
    online = AgentFactory(team=team, status="online", capacity=5, skills={"billing": 1})

    cases = [open_case(capture=django_capture_on_commit_callbacks) for _ in range(2)]

    assert [c.assigned_agent for c in cases] == [online, online]
    assert not away.cases.exists()


def test_away_and_offline_agents_get_nothing_even_when_nobody_is_online(team, django_capture_on_commit_callbacks):
    AgentFactory(team=team, status="offline", skills={"billing": 5})
    away = AgentFactory(team=team, status="away", skills={"billing": 3})
    online = AgentFactory(team=team, status="online", skills={"billing": 3})

    first = open_case(capture=django_capture_on_commit_callbacks)
    assert first.assigned_agent == online

    online.status = "offline"
    online.save()
    second = open_case(capture=django_capture_on_commit_callbacks)
    # the case waits in the team's queue, where the away agent sees it and may take it
    assert (second.status, second.team, second.assigned_agent) == ("new", team, None)
    assert cases_route_waiting() == 0
    assert case_take(case=second, actor=away.user).assigned_agent == away


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


def test_going_away_hands_back_the_cases_nobody_has_answered_yet(client, team, django_capture_on_commit_callbacks,
                                                                 email_channel):
    from agents.services.cases import case_reply_send

    cap = django_capture_on_commit_callbacks
    agent = AgentFactory(team=team, capacity=3, skills={"billing": 5})
    answered, first, second = (open_case(capture=cap) for _ in range(3))
    case_reply_send(case=answered, actor=agent.user, body="On it", idempotency_key="k")
    colleague = AgentFactory(team=team, capacity=1, skills={"billing": 1})
    client.force_login(agent.user)

    # when the agent sets themself away in the console
    with cap(execute=True):
        response = client.post("/agents/status/", {"status": "away"}, follow=True)

    # then the unanswered cases go to the online colleague (room for one) or back to the team's queue;
    # the case they answered (waiting on the customer) stays theirs
    assert "2 cases you had not answered yet went to an online colleague or back to the queue." in \
        response.content.decode()
    for case in (answered, first, second):
        case.refresh_from_db()
    assert (answered.assigned_agent, answered.status) == (agent, "pending")
    assert (first.assigned_agent, first.status) == (colleague, "assigned")
    assert (second.assigned_agent, second.status, second.team) == (None, "new", team)
    assert "queued in" in second.entries.filter(kind="assignment").last().body
    assert f"#{second.pk}<" in client.get("/agents/").content.decode().split('id="team-queue"')[1]

    # back online, the queue's case comes back to them
    with cap(execute=True):
        client.post("/agents/status/", {"status": "online"})
    second.refresh_from_db()
    assert second.assigned_agent == agent


def test_an_agent_set_offline_in_the_admin_hands_back_their_unanswered_cases(team, django_capture_on_commit_callbacks):
    from agents.services.cases import agent_save

    agent = AgentFactory(team=team, skills={"billing": 5})
    case = open_case(capture=django_capture_on_commit_callbacks)
    assert case.assigned_agent == agent

    agent.status = "offline"
    with django_capture_on_commit_callbacks(execute=True):
        agent_save(agent=agent)

    case.refresh_from_db()
    assert (case.status, case.assigned_agent, case.team) == ("new", None, team)
