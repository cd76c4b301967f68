"""Shared set-up for the operations console: the demo data plus real traffic through the API."""

from __future__ import annotations

import pytest

from journeys.models import BusinessUnit
from journeys.services.workflows import version_build, version_publish, workflow_create

# A small journey with a wait, a goal and a branch: enough to see every count on the graph.
ONBOARDING = {
    "trigger_event": "Signed Up",
    "goal_event": "Activated",
    "steps": [
        {"key": "welcome", "kind": "update_profile", "config": {"traits": {"welcomed": True}}},
        {"key": "wait", "kind": "wait_for_event", "config": {"event": "Activated", "timeout": "1d"}},
        {"key": "yay", "kind": "goal", "config": {"name": "activated"}},
        {"key": "nudge", "kind": "update_profile", "config": {"traits": {"nudged": True}}},
    ],
    "edges": [
        {"from": "welcome", "outcome": "next", "to": "wait"},
        {"from": "wait", "outcome": "event", "to": "yay"},
        {"from": "wait", "outcome": "timeout", "to": "nudge"},
    ],
}


@pytest.fixture
def demo(db):
    from config.demo import demo_load

    demo_load()


@pytest.fixture
def onboarding(demo):
    unit = BusinessUnit.objects.get(slug="retention")
    workflow = workflow_create(name="Onboarding", business_unit=unit)
    return version_publish(version=version_build(workflow=workflow, definition=ONBOARDING), reason="test")


@pytest.fixture
def traffic(onboarding, send):
    """Three sign-ups (one activates), one angry support message from a valuable customer."""
    for user in ("u-ada", "u-grace", "u-new"):
        send(userId=user, event="Signed Up")
    send(userId="u-ada", event="Activated")
    send(userId="u-alan", event="Support Message",
         properties={"text": "This is terrible, I was charged twice and nobody answers. Awful service!"})
    return onboarding


@pytest.fixture
def ops(client, demo):
    """The demo's ops admin (role group, not a superuser), signed in."""
    client.login(username="ops", password="ops")
    return client


@pytest.fixture
def editor(client, demo):
    """The demo's business-unit editor (edits Retention's workflows), signed in."""
    client.login(username="editor", password="editor")
    return client


@pytest.fixture
def empty_draft(demo):
    """A new Retention workflow with an empty draft, as the admin's "add version" leaves it."""
    from journeys.models import WorkflowVersion

    workflow = workflow_create(name="Canvas", business_unit=BusinessUnit.objects.get(slug="retention"))
    return WorkflowVersion.objects.create(workflow=workflow, number=1, trigger_event="Checkout Started")
