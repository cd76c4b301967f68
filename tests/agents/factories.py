"""factory-boy factories for the agents tests."""

from __future__ import annotations

import factory

from agents.models import Agent, AgentSkill, ReplyTemplate, Team
from agents.services.cases import agent_save, team_save
from tests.factories import UserFactory


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.Sequence(lambda n: f"team-{n}")
    categories = factory.LazyFunction(list)
    is_fallback = False

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return team_save(team=model_class(*args, **kwargs))


class AgentFactory(factory.django.DjangoModelFactory):
    """An online agent; `skills={"billing": 4}` adds category skills."""

    class Meta:
        model = Agent

    user = factory.SubFactory(UserFactory)
    team = factory.SubFactory(TeamFactory)
    languages = factory.LazyFunction(lambda: ["en"])
    capacity = 3
    status = "online"

    @classmethod
    def _create(cls, model_class, *args, skills=None, **kwargs):
        agent = agent_save(agent=model_class(*args, **kwargs))
        for category, level in (skills or {}).items():
            AgentSkill.objects.create(agent=agent, category=category, level=level)
        return agent


class ReplyTemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ReplyTemplate

    name = factory.Sequence(lambda n: f"reply-{n}")
    category = ""
    intent = ""
    language = "en"
    body = "Hi {{ profile.first_name|default:'there' }}, we are on it."
