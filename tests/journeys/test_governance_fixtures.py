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


def admin_form_data(response, **changes) -> dict:
    """What a browser would post back from an admin change page, untouched, plus `changes`:
    the main form's and every inline formset's current values (hidden management fields included)."""
    from django.forms import CheckboxInput, MultiWidget

    def add(form, data):
        for name, field in form.fields.items():
            key = form.add_prefix(name)
            value = form[name].value()
            if isinstance(field.widget, MultiWidget):
                parts = field.widget.decompress(value) if not isinstance(value, list) else value
                for i, part in enumerate(parts):
                    data[f"{key}_{i}"] = "" if part is None else part
            elif isinstance(field.widget, CheckboxInput):
                if value:
                    data[key] = "on"
            elif isinstance(value, (list, tuple)):
                data[key] = list(value)
            else:
                data[key] = "" if value is None else value

    data: dict = {}
    add(response.context["adminform"].form, data)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        add(formset.management_form, data)
        for form in formset.initial_forms:
            add(form, data)
        data[formset.management_form.add_prefix("TOTAL_FORMS")] = len(formset.initial_forms)
    data.update(changes)
    return data


def assert_change_needs_a_reason(client, user, obj, changes: dict, reason: str = "quarterly policy review"):
    """Through the admin change form of `obj`: saving without a reason is refused with a message
    saying what to fix (nothing stored); with a reason, the history row has the user and the reason,
    and the history page shows who, when and why. Returns the saved object."""
    from django.urls import reverse

    from journeys.admin.base import REASON_MISSING

    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    page = client.get(url)
    assert page.status_code == 200 and b'name="change_reason"' in page.content
    rows_before = obj.history.count()

    refused = client.post(url, admin_form_data(page, **changes))
    assert refused.status_code == 200, refused.status_code
    assert REASON_MISSING in refused.content.decode()
    assert obj.history.count() == rows_before

    saved = client.post(url, admin_form_data(page, **changes, change_reason=reason))
    assert saved.status_code == 302, saved.context["adminform"].form.errors if saved.context else saved
    row = obj.history.latest("history_date")
    assert (row.history_user, row.history_change_reason, row.history_type) == (user, reason, "~")
    history = client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[obj.pk])).content.decode()
    assert reason in history and user.get_username() in history
    return type(obj).objects.get(pk=obj.pk)
