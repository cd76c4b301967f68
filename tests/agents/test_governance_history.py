"""Agents' routing settings keep who/when/why: teams, agents (capacity, skills), reply templates
and the triage bot ask for a reason in the admin; the routing services re-check the permission
and ask people for a reason too."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from agents.models import AgentSkill, TriageBot, TriageNode
from agents.services.cases import agent_save, team_save
from channels_app.models import Channel
from tests.agents.factories import AgentFactory, ReplyTemplateFactory, TeamFactory
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import admin_form_data, assert_change_needs_a_reason

pytestmark = pytest.mark.django_db


def _bot():
    chat = Channel.objects.create(name="chat", kind="chat", provider="console")
    bot = TriageBot.objects.create(name="Helper", channel=chat)
    TriageNode.objects.create(bot=bot, label="Track my order", text="Here is your tracking link")
    return bot


CASES = {
    "team": (lambda: TeamFactory(categories=["billing"]), {"categories": '["billing", "refunds"]'},
             lambda t: t.categories == ["billing", "refunds"]),
    "agent capacity": (lambda: AgentFactory(capacity=3), {"capacity": 6}, lambda a: a.capacity == 6),
    "reply template": (lambda: ReplyTemplateFactory(), {"body": "Thanks, {{ profile.first_name }}!"},
                       lambda r: r.body.startswith("Thanks")),
    "triage bot": (_bot, {"max_misses": 4}, lambda b: b.max_misses == 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_routing_setting_change_needs_a_reason_and_keeps_who_and_why(admin_client, admin_user, case):
    make, changes, changed = CASES[case]
    saved = assert_change_needs_a_reason(admin_client, admin_user, make(), changes)
    assert changed(saved)


def test_skills_saved_with_their_agent_carry_the_reason(admin_client, admin_user):
    agent = AgentFactory(skills={"billing": 2})
    url = reverse("admin:agents_agent_change", args=[agent.pk])
    data = admin_form_data(admin_client.get(url), change_reason="passed the billing course")
    data["skills-0-level"] = 4

    assert admin_client.post(url, data).status_code == 302

    skill = AgentSkill.objects.get(agent=agent)
    row = skill.history.latest("history_date")
    assert (row.level, row.history_user, row.history_change_reason) == (4, admin_user, "passed the billing course")


def test_routing_services_recheck_permission_and_ask_people_why():
    agent = AgentFactory(capacity=3)
    outsider = UserFactory(username="outsider", is_staff=True)
    agent.capacity = 10
    with pytest.raises(PermissionDenied):
        agent_save(agent=agent, actor=outsider, reason="more cases")
    ops = UserFactory(username="lead", is_superuser=True, is_staff=True)
    with pytest.raises(ValidationError) as exc:
        team_save(team=agent.team, actor=ops, reason=" ")
    assert "reason" in exc.value.message_dict

    agent_save(agent=agent, actor=ops, reason="peak season")

    row = agent.history.latest("history_date")
    assert (row.capacity, row.history_user, row.history_change_reason) == (10, ops, "peak season")
