"""Two people acting on one workflow at the same instant, on PostgreSQL with each on its own
connection: an edit of a version while it is published, two new drafts of one workflow, two
steps with the same key added to one draft. No deadlock and no server error: the loser is
told what happened (or both get what they asked for)."""

from __future__ import annotations

import threading

from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from journeys.models import Step, Workflow, WorkflowVersion
from journeys.services.workflows import step_save, version_approve, version_publish, version_submit
from tests.factories import in_a_thread, lock_waiters, row_held
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import draft_of, login
from tests.marks import on_postgres

pytestmark = on_postgres("two sessions holding rows of one workflow at the same time")


def test_a_step_edit_committing_while_the_version_is_published_is_no_deadlock(people, live_workflow):
    # given an approved version
    draft = draft_of(live_workflow, actor=people["editor"])
    version_submit(version=draft, actor=people["editor"], summary="a change")
    version_approve(version=draft, actor=people["approver"], comment="fine")
    step = Step.objects.get(version=draft, key="vip")
    at_lock, edited, commit = threading.Event(), threading.Event(), threading.Event()

    def publish():
        def pause_at_the_workflow_lock(execute, sql, params, many, context):
            if not at_lock.is_set() and 'FROM "journeys_workflow"' in sql and "FOR UPDATE" in sql:
                at_lock.set()
                assert edited.wait(20)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(pause_at_the_workflow_lock):
            return version_publish(version=draft, actor=people["approver"], reason="go")

    def edit():
        with transaction.atomic():
            step_save(version=draft, step=step, key="vip", kind="update_profile", name="",
                      config={"traits": {"segment": "gold"}}, actor=people["editor"], reason="gold, not vip")
            edited.set()
            assert commit.wait(20)
        return "edited"

    # when the approver clicks Publish (checked, about to lock the workflow), an editor saves one
    # of its steps meanwhile, the publish then waits for the editor's rows and the edit commits
    publishing, publish_answers = in_a_thread(publish)
    assert at_lock.wait(20)
    editing, edit_answers = in_a_thread(edit)
    assert edited.wait(20)
    assert lock_waiters(1)
    commit.set()
    editing.join(60)
    publishing.join(60)

    # then the edit is saved and the publish refused, saying why: no deadlock, no server error,
    # and what was approved never went live with the unreviewed change
    assert edit_answers == ["edited"]
    assert len(publish_answers) == 1 and isinstance(publish_answers[0], ValidationError), publish_answers
    assert "only approved versions can go live" in str(publish_answers[0])
    draft.refresh_from_db()
    assert draft.state == "in_review"
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == live_workflow.live_version_id


def test_two_new_drafts_of_one_workflow_at_the_same_instant_both_get_a_draft(people, live_workflow):
    # given two editors on the versions list, both asking for a new draft of the live version
    v1 = live_workflow.live_version
    url = reverse("admin:journeys_workflowversion_changelist")
    data = {"action": "new_draft", "_selected_action": [v1.pk], "reason": "a change"}
    clients = [login(Client(), people["editor"]), login(Client(), people["ops"])]

    # when both post while another session holds the workflow (so that both are under way together)
    with row_held(Workflow, live_workflow.pk):
        threads = [in_a_thread(lambda c=c: c.post(url, data, follow=True)) for c in clients]
        assert lock_waiters(2)
    for thread, _ in threads:
        thread.join(60)

    # then both get a draft of their own, numbered one after the other, and are told which
    answers = [answers[0] for _, answers in threads]
    assert all(not isinstance(a, Exception) and a.status_code == 200 for a in answers), answers
    said = sorted(m.message for a in answers for m in get_messages(a.wsgi_request))
    numbers = sorted(WorkflowVersion.objects.filter(workflow=live_workflow, state="draft").values_list("number",
                                                                                                        flat=True))
    assert numbers == [v1.number + 1, v1.number + 2]
    assert said == [f"Signup v{v1.number}: created draft v{n}" for n in numbers]


def test_two_steps_with_one_key_added_at_the_same_instant_the_second_is_told_on_its_form(people, live_workflow):
    # given a draft, and two people on its "Add a step" form (goal), both typing the key g1
    draft = draft_of(live_workflow, actor=people["editor"])
    url = f"{reverse('admin:journeys_step_add')}?version={draft.pk}&kind=goal"
    clients = [login(Client(), people["editor"]), login(Client(), people["ops"])]
    for client in clients:
        assert client.get(url).status_code == 200
    data = {"key": "g1", "goal": "bought", "change_reason": "count purchases", "_save": "Save"}

    # when both post while another session holds the workflow (both past the form's own check)
    with row_held(Workflow, live_workflow.pk):
        threads = [in_a_thread(lambda c=c: c.post(url, data)) for c in clients]
        assert lock_waiters(2)
    for thread, _ in threads:
        thread.join(60)

    # then one step g1 is saved, and the other person sees the form again saying why: no server error
    answers = sorted((a for _, (a,) in threads), key=lambda a: getattr(a, "status_code", 0))
    assert not any(isinstance(a, Exception) for a in answers), answers
    assert [a.status_code for a in answers] == [200, 302]
    assert "this version already has a step &#x27;g1&#x27;" in answers[0].content.decode()
    assert Step.objects.filter(version=draft, key="g1").count() == 1


def test_two_changes_from_one_base_published_at_the_same_instant_only_one_goes_live(people, live_workflow):
    # given two changes proposed from the live version and both approved
    v1 = live_workflow.live_version
    drafts = []
    for author, segment in (("editor", "gold"), ("ops", "silver")):
        draft = draft_of(live_workflow, actor=people[author])
        Step.objects.filter(version=draft, key="vip").update(config={"traits": {"segment": segment}})
        version_submit(version=draft, actor=people[author], summary=segment)
        version_approve(version=draft, actor=people["approver"], comment="fine")
        drafts.append(draft)

    # when two approvers publish them at the same instant (both past the first checks)
    with row_held(Workflow, live_workflow.pk):
        threads = [in_a_thread(lambda d=d, who=who: version_publish(version=d, actor=people[who], reason="go"))
                   for d, who in zip(drafts, ("approver", "approver2"))]
        assert lock_waiters(2)
    for thread, _ in threads:
        thread.join(60)

    # then one goes live; the other is refused (its base is no longer live), nothing reverted unseen
    answers = [answers[0] for _, answers in threads]
    published = [a for a in answers if isinstance(a, WorkflowVersion)]
    refused = [a for a in answers if isinstance(a, ValidationError)]
    assert len(published) == 1 and len(refused) == 1, answers
    assert f"approved as a change to v{v1.number}, but v{published[0].number} is live now" in str(refused[0])
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == published[0].pk
