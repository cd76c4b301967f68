"""Two people editing the same draft on its admin page (QA rolesscale #1): the second save, made
from a page opened before the first was saved, is refused on the form (what they typed kept,
"reload"), instead of silently writing the first editor's change back to what the second page
showed. The refusal is the database's: an UPDATE that matches the version only while it is
unchanged since the page was opened."""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction
from django.test import Client
from django.urls import reverse

from journeys.errors import DraftChanged
from journeys.models import AuditEntry, WorkflowVersion
from journeys.services.drafts import version_settings_save
from journeys.services.governance import business_unit_grant_editor
from journeys.services.workflows import version_note_changed, version_save
from tests.factories import UserFactory, lock_waiters
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, draft_of, login
from tests.marks import postgres_test

SAVED_MEANWHILE = "was changed by {who} since you opened this page: nothing was saved"


@pytest.fixture
def colleague(people, units):
    """A second editor of Retention (not a superuser, like the first)."""
    user = UserFactory(username="colleague", is_staff=True)
    business_unit_grant_editor(unit=units["retention"], user=user)
    return user


def _page(client, version):
    url = reverse("admin:journeys_workflowversion_change", args=[version.pk])
    return url, client.get(url)


def _both_opened(people, colleague, workflow):
    """A draft (entry rule ltv >= 4033) whose page the editor and the colleague opened, and the
    changes each makes there: the editor raises the rule, the colleague adds a note."""
    draft = draft_of(workflow, actor=people["editor"], entry_rule="profile.ltv >= 4033")
    first, second = login(Client(), people["editor"]), login(Client(), colleague)
    url, first_page = _page(first, draft)
    _, second_page = _page(second, draft)
    return draft, url, (first, admin_form_data(first_page, entry_rule="profile.ltv >= 999",
                                               change_reason="raise the bar")), \
        (second, admin_form_data(second_page, notes="a note", change_reason="add a note"))


def _form_errors(response) -> list[str]:
    return list(response.context["adminform"].form.non_field_errors())


@pytest.mark.django_db
def test_the_second_of_two_editors_saving_the_same_draft_is_told_and_undoes_nothing(people, colleague,
                                                                                    live_workflow):
    # given a draft both editors opened on its admin page
    draft, url, (first, first_data), (second, second_data) = _both_opened(people, colleague, live_workflow)

    # when the first raises the entry rule and saves, and then the second adds a note and saves
    saved = first.post(url, first_data)
    refused = second.post(url, second_data)

    # then the first save stands; the second page comes back with its text and says who changed
    # the version and to reload; nothing of it is stored or recorded
    assert saved.status_code == 302
    assert refused.status_code == 200
    [said] = _form_errors(refused)
    assert f"v{draft.number} {SAVED_MEANWHILE.format(who='editor')}" in said and "Reload the page" in said
    assert refused.context["adminform"].form["notes"].value() == "a note"
    draft.refresh_from_db()
    assert (draft.entry_rule, draft.notes) == ("profile.ltv >= 999", "")
    edits = AuditEntry.objects.filter(version=draft, action="version_edited")
    assert [(e.actor, e.reason) for e in edits] == [(people["editor"], "raise the bar")]

    # and once reloaded, the second editor's note saves over the first editor's rule, not back to the old one
    url, reloaded = _page(second, draft)
    again = second.post(url, admin_form_data(reloaded, notes="a note", change_reason="add a note"))
    assert again.status_code == 302
    draft.refresh_from_db()
    assert (draft.entry_rule, draft.notes) == ("profile.ltv >= 999", "a note")


@pytest.mark.django_db
def test_a_version_page_opened_before_a_canvas_edit_is_refused_too(people, colleague, live_workflow):
    # given a draft whose admin page the colleague opened
    draft = draft_of(live_workflow, actor=people["editor"])
    client = login(Client(), colleague)
    url, page = _page(client, draft)

    # when the editor changes the trigger settings on the canvas, and then the page is saved
    version_settings_save(version=draft, values={"goal_event": "Order Completed"}, actor=people["editor"],
                          reason="count orders")
    refused = client.post(url, admin_form_data(page, notes="mine", change_reason="note"))

    # then the page's stale goal is not written back
    assert refused.status_code == 200 and SAVED_MEANWHILE.format(who="editor") in _form_errors(refused)[0]
    draft.refresh_from_db()
    assert (draft.goal_event, draft.notes) == ("Order Completed", "")


@pytest.mark.django_db
def test_version_save_writes_only_over_the_version_it_was_loaded_from(people, live_workflow):
    from journeys.services.workflows import version_token

    # given two copies of a draft read at the same time, each with its token
    draft = draft_of(live_workflow, actor=people["editor"])
    mine, theirs = (WorkflowVersion.objects.get(pk=draft.pk) for _ in range(2))
    token = version_token(version=mine)

    # when one is saved with the token, then the other with the same (now stale) token
    mine.entry_rule = "profile.ltv >= 1"
    version_save(version=mine, actor=people["editor"], reason="one", loaded=token)
    theirs.notes = "two"
    with pytest.raises(DraftChanged) as refused:
        version_save(version=theirs, actor=people["editor"], reason="two", loaded=token)

    # then the second is refused and changes nothing; a page with no token of this version at all is refused too
    assert refused.value.code == "changed_meanwhile"
    draft.refresh_from_db()
    assert (draft.entry_rule, draft.notes) == ("profile.ltv >= 1", "")
    with pytest.raises(DraftChanged):
        version_save(version=theirs, actor=people["editor"], reason="two", loaded="not a time")


@pytest.mark.django_db
def test_a_version_page_posted_without_what_it_was_opened_with_is_refused(people, live_workflow):
    draft = draft_of(live_workflow, actor=people["editor"])
    client = login(Client(), people["editor"])
    url, page = _page(client, draft)
    data = admin_form_data(page, entry_rule="profile.ltv >= 5", change_reason="x")
    del data["loaded"]

    refused = client.post(url, data)

    assert refused.status_code == 200 and "reload it" in str(refused.context["adminform"].form.errors)
    draft.refresh_from_db()
    assert draft.entry_rule != "profile.ltv >= 5"


@postgres_test("two saves of one version's page at the same time, each on its own connection")
def test_two_editors_saving_the_same_draft_at_the_same_moment_one_wins_one_is_told(people, colleague,
                                                                                   live_workflow):
    # given a draft both editors opened
    draft, url, (first, first_data), (_, second_data) = _both_opened(people, colleague, live_workflow)

    # when both post at once (the second's transaction holds the version's row first and commits
    # only once the first is waiting for it)
    answers: dict = {}

    def post(name, client, data):
        try:
            answers[name] = client.post(url, data)
        finally:
            connections.close_all()

    with transaction.atomic():
        winner = WorkflowVersion.objects.get(pk=draft.pk)
        winner.notes = second_data["notes"]
        version_save(version=winner, actor=colleague, reason="add a note", loaded=second_data["loaded"])
        version_note_changed(version=winner, actor=colleague, reason="add a note")
        thread = threading.Thread(target=post, args=("first", first, first_data))
        thread.start()
        assert lock_waiters()
    thread.join(60)

    # then the one that waited is refused on its form, and the version is what the winner saved
    response = answers["first"]
    assert response.status_code == 200, response
    assert SAVED_MEANWHILE.format(who="colleague") in _form_errors(response)[0]
    draft.refresh_from_db()
    assert (draft.entry_rule, draft.notes) == ("profile.ltv >= 4033", "a note")
