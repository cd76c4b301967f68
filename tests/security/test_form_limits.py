"""Form posts over Django's limits on a request body (DATA_UPLOAD_MAX_MEMORY_SIZE, ..._NUMBER_FIELDS):
a 413 page that says the limit, in the agent console and the admin, as the event API answers; any
other 400 stays Django's own."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import Team
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent_case(client, django_capture_on_commit_callbacks):
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})
    case = open_case(capture=django_capture_on_commit_callbacks)
    assert case.assigned_agent == agent
    client.force_login(agent.user)
    return client, case


def test_an_agent_note_over_the_size_limit_is_a_413_saying_the_limit(agent_case):
    client, case = agent_case

    response = client.post(reverse("agents:note", args=[case.pk]), {"body": "x" * 3_000_000})

    assert response.status_code == 413
    page = response.content.decode()
    assert "over the limit of 2,621,440 bytes (2.5 MB)" in page and "Nothing was saved" in page
    assert not case.entries.filter(kind="note").exists()


def test_a_form_with_too_many_fields_is_a_413_saying_the_limit(agent_case):
    client, case = agent_case

    response = client.post(reverse("agents:note", args=[case.pk]), {**{f"f{i}": "1" for i in range(1200)}, "body": "x"})

    assert response.status_code == 413 and "more than 1,000 fields" in response.content.decode()


def test_an_admin_form_over_the_size_limit_is_a_413(admin_client):
    response = admin_client.post(reverse("admin:agents_team_add"), {"name": "x" * 3_000_000})

    assert response.status_code == 413 and "2,621,440 bytes" in response.content.decode()
    assert not Team.objects.exists()


def test_other_bad_requests_keep_djangos_400(client):
    response = client.get(reverse("agents:login"), HTTP_HOST="evil.example")

    assert response.status_code == 400 and "Bad Request" in response.content.decode()
