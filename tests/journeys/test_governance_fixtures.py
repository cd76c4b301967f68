"""Shared fixtures of the governance tests: the roles, one user per role, two business units."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit
from journeys.services.governance import (
    ROLE_AGENTS,
    ROLE_ANALYSTS,
    ROLE_APPROVERS,
    ROLE_OPS,
    business_unit_grant_editor,
    roles_setup,
)
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import UserFactory

PASSWORD = "pw"


def steps(*items):
    return [dict(zip(("key", "kind", "config"), item)) for item in items]


def edges(*items):
    return [dict(zip(("from", "outcome", "to"), item)) for item in items]


SIGNUP = {
    "trigger_event": "Signed Up",
    "reentry_policy": "always",
    "allow_concurrent_runs": True,
    "steps": steps(
        ("check", "condition", {"rule": "profile.plan == 'pro'"}),
        ("vip", "update_profile", {"traits": {"segment": "vip"}}),
        ("std", "update_profile", {"traits": {"segment": "standard"}}),
    ),
    "edges": edges(("check", "yes", "vip"), ("check", "no", "std")),
}


@pytest.fixture(autouse=True)
def fresh_engine():
    reset_caches()
    yield
    reset_caches()


@pytest.fixture
def units(db):
    return {
        "retention": BusinessUnit.objects.create(name="Retention", slug="retention"),
        "support": BusinessUnit.objects.create(name="Support", slug="support"),
    }


@pytest.fixture
def people(db, units):
    """One staff user per role (password 'pw'); the editor edits Retention only."""
    roles_setup()

    def make(name, group=None, **extra):
        user = UserFactory(username=name, is_staff=True, **extra)
        if group:
            user.groups.add(Group.objects.get(name=group))
        return user

    users = {
        "ops": make("ops", ROLE_OPS),
        "editor": make("editor"),
        "other_editor": make("other_editor"),
        "approver": make("approver", ROLE_APPROVERS),
        "approver2": make("approver2", ROLE_APPROVERS),
        "agent": make("agent", ROLE_AGENTS),
        "analyst": make("analyst", ROLE_ANALYSTS),
        "nobody": make("nobody"),
    }
    business_unit_grant_editor(unit=units["retention"], user=users["editor"])
    business_unit_grant_editor(unit=units["support"], user=users["other_editor"])
    return users


@pytest.fixture
def live_workflow(units):
    """A Retention workflow whose v1 is live (published by the system)."""
    workflow = workflow_create(name="Signup", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition=SIGNUP)
    version_publish(version=version, reason="first version")
    workflow.refresh_from_db()
    return workflow


@pytest.fixture
def support_workflow(units):
    workflow = workflow_create(name="Support follow-up", business_unit=units["support"])
    version_publish(version=version_build(workflow=workflow, definition=SIGNUP), reason="first version")
    workflow.refresh_from_db()
    return workflow


def login(client, user):
    assert client.login(username=user.username, password=PASSWORD)
    return client


def draft_of(workflow, actor=None, **changes):
    """A new draft copied from the live version, with changed settings or steps."""
    from journeys.services.workflows import version_definition

    definition = {**version_definition(version=workflow.live_version), **changes, "reason": "test draft"}
    return version_build(workflow=workflow, definition=definition, actor=actor)
