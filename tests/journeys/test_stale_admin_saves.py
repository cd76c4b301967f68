"""Saves from admin pages opened before someone else's save (QA change #1, #4): a step's page and
a workflow's page are refused, saying who changed it and when, instead of writing what the page
showed back over the other person's change (a lost update)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from journeys.models import AuditEntry, Step, Workflow
from journeys.services.governance import business_unit_grant_editor
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, draft_of, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def colleague(people, units):
    """A second editor of Retention."""
    user = UserFactory(username="colleague", is_staff=True)
    business_unit_grant_editor(unit=units["retention"], user=user)
    return user


def step_page_data(page, **changes) -> dict:
    """What a browser posts back from a step's page: the kind's fields, the hidden `loaded`, changes."""
    data = {}
    for form in (page.context["form"], page.context["reason_form"]):
        for name in form.fields:
            value = form[name].value()
            data[form.add_prefix(name)] = "" if value is None else value
    return {**data, "_save": "Save", **changes}


def test_a_step_page_opened_before_another_editors_save_is_refused(people, colleague, live_workflow):
    # given a draft's condition step whose page two editors opened
    draft = draft_of(live_workflow, actor=people["editor"])
    step = draft.steps.get(key="check")
    url = reverse("admin:journeys_step_change", args=[step.pk])
    first, second = login(Client(), people["editor"]), login(Client(), colleague)
    first_page, second_page = first.get(url), second.get(url)

    # when the first changes the rule and saves, then the second renames the step from the older page
    saved = first.post(url, step_page_data(first_page, rule="profile.plan == 'business'",
                                           change_reason="business plan"))
    refused = second.post(url, step_page_data(second_page, name="Plan check", change_reason="a name"))

    # then the first change stands; the second page comes back with its text, saying who changed
    # the step, when, and to reload
    assert saved.status_code == 302, saved.content[:2000]
    assert refused.status_code == 200
    said = " ".join(refused.context["form"].non_field_errors())
    assert "step check was changed by editor at " in said and "since you opened this page" in said
    assert "Reload the page" in said and "nothing was saved" in said
    assert refused.context["form"]["name"].value() == "Plan check"
    step.refresh_from_db()
    assert (step.config, step.name) == ({"rule": "profile.plan == 'business'"}, "")
    assert [e.reason for e in AuditEntry.objects.filter(version=draft, action="version_edited")
            if e.actor == colleague] == []

    # and once reloaded, the second editor's save goes through over the first one's change
    again = second.post(url, step_page_data(second.get(url), name="Plan check", change_reason="a name"))
    assert again.status_code == 302
    step.refresh_from_db()
    assert (step.config, step.name) == ({"rule": "profile.plan == 'business'"}, "Plan check")


def test_a_step_page_of_a_step_deleted_meanwhile_or_without_its_token_saves_nothing(people, live_workflow):
    # given a draft's step page opened by the editor
    draft = draft_of(live_workflow, actor=people["editor"])
    step = draft.steps.get(key="check")
    url = reverse("admin:journeys_step_change", args=[step.pk])
    client = login(Client(), people["editor"])
    data = step_page_data(client.get(url), rule="profile.ltv > 1", change_reason="r")

    # when the page is posted without saying which state of the step it shows
    response = client.post(url, {k: v for k, v in data.items() if k != "loaded"})

    # then nothing is saved and the page says to reload
    assert response.status_code == 200
    assert "does not say which state of the step it shows" in response.content.decode()
    assert Step.objects.get(pk=step.pk).config == {"rule": "profile.plan == 'pro'"}


def test_a_workflow_page_opened_before_a_rename_is_refused(people, colleague, live_workflow):
    # given the workflow's page, opened by two editors
    url = reverse("admin:journeys_workflow_change", args=[live_workflow.pk])
    first, second = login(Client(), people["editor"]), login(Client(), colleague)
    first_page, second_page = first.get(url), second.get(url)

    # when the first renames it, and the second changes the description on the older page
    saved = first.post(url, admin_form_data(first_page, name="Signup v2", change_reason="rename"))
    refused = second.post(url, admin_form_data(second_page, description="desc by B", change_reason="describe"))

    # then the rename stands and the second save is refused, naming who and to reload
    assert saved.status_code == 302, saved.content[:2000]
    assert refused.status_code == 200
    said = " ".join(refused.context["adminform"].form.non_field_errors())
    assert "Signup v2 was changed by editor at " in said and "Reload the page" in said
    live_workflow.refresh_from_db()
    assert (live_workflow.name, live_workflow.description) == ("Signup v2", "")


def test_a_pause_does_not_refuse_a_workflow_page_and_stays(people, live_workflow):
    # given the workflow's page opened by the editor, then ops pauses the workflow
    from journeys.services.governance import workflow_pause_set

    url = reverse("admin:journeys_workflow_change", args=[live_workflow.pk])
    client = login(Client(), people["editor"])
    page = client.get(url)
    workflow_pause_set(workflow=live_workflow, paused=True, actor=people["ops"], reason="outage")

    # when the editor saves a new description from the page opened before the pause
    saved = client.post(url, admin_form_data(page, description="described", change_reason="describe"))

    # then the description is saved (the pause is not a field of the page) and the pause stays
    assert saved.status_code == 302, saved.content[:2000]
    workflow = Workflow.objects.get(pk=live_workflow.pk)
    assert (workflow.description, workflow.status) == ("described", "paused")


def test_a_workflow_page_posted_without_its_token_says_to_reload(people, live_workflow):
    url = reverse("admin:journeys_workflow_change", args=[live_workflow.pk])
    client = login(Client(), people["editor"])
    data = admin_form_data(client.get(url), description="described", change_reason="describe")

    response = client.post(url, {k: v for k, v in data.items() if k != "loaded"})

    assert response.status_code == 200
    said = " ".join(response.context["adminform"].form.non_field_errors())
    assert "this page does not say which state of the workflow it shows: reload it" in said
    assert Workflow.objects.get(pk=live_workflow.pk).description == ""
