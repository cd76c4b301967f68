"""Two tabs (or two editors) on the same draft: a change made on a drawing or a side-panel form
loaded before someone else's save is refused with a 409 saying so, nothing is written, and the
other change stays. Driven through the canvas's endpoints, as the script drives them."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from journeys.models import Edge, Step, WorkflowVersion
from tests.console.test_canvas import WHY, command, ok  # the canvas's own command and answer helpers

pytestmark = pytest.mark.django_db


def drawing_token(client, version) -> str:
    """The token of the draft the graph page's drawing shows (what canvas.js sends back)."""
    page = client.get(reverse("console:version_graph", args=[version.pk])).content.decode()
    data = re.search(r'<script id="canvas-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    return json.loads(data)["loaded"]


def panel_token(client, url: str) -> str:
    """The token the side panel's form was opened with."""
    panel = client.get(url).content.decode()
    return re.search(r'name="loaded" value="([0-9a-f]{64})"', panel).group(1)


def other_editor() -> Client:
    other = Client()
    other.login(username="ops", password="ops")
    return other


@pytest.fixture
def condition(editor, empty_draft):
    ok(command(editor, empty_draft, op="add_step", kind="condition", x=100, y=150))
    step = Step.objects.get(version=empty_draft, key="condition_1")
    return step, reverse("console:canvas_step", args=[empty_draft.pk, step.pk])


def test_a_step_form_opened_before_another_tab_saved_it_is_refused(editor, empty_draft, condition):
    # given tab A opens condition_1's form, then tab B opens it and saves a rule
    step, url = condition
    tab_a = panel_token(editor, url)
    tab_b = panel_token(editor, url)
    ok(editor.post(url, {"key": "condition_1", "rule": "profile.ltv > 111", "change_reason": WHY, "loaded": tab_b}))
    history = Step.history.filter(id=step.pk).count()

    # when tab A, opened before B's save, saves another rule
    stale = editor.post(url, {"key": "condition_1", "rule": "profile.ltv > 222", "change_reason": WHY,
                              "loaded": tab_a})

    # then it is refused, saying why, and B's rule stays
    answer = stale.json()
    assert stale.status_code == 409 and answer["field"] == "loaded" and not answer["ok"], answer
    assert answer["message"].startswith("step condition_1 changed since you opened it (in another tab or by "
                                        "another editor): nothing was saved")
    assert "your text is still in the form" in answer["message"] and "panel" not in answer
    step.refresh_from_db()
    assert step.config["rule"] == "profile.ltv > 111"
    assert Step.history.filter(id=step.pk).count() == history


def test_a_step_form_saves_again_after_its_own_save_and_after_moves_and_connections(editor, empty_draft, condition):
    # given a form opened and saved: the panel it answers with carries the new token
    step, url = condition
    saved = ok(editor.post(url, {"key": "condition_1", "rule": "profile.ltv > 1", "change_reason": WHY,
                                 "loaded": panel_token(editor, url)}))
    token = re.search(r'name="loaded" value="([0-9a-f]{64})"', saved["panel"]).group(1)
    # and meanwhile the step is moved and connected (which its form does not edit)
    ok(command(editor, empty_draft, op="add_step", kind="goal", x=100, y=300))
    ok(command(editor, empty_draft, op="place", positions={"condition_1": [140, 160]}))
    ok(command(editor, empty_draft, op="connect", source="condition_1", outcome="yes", target="goal_1"))

    # when the same form is saved again
    again = editor.post(url, {"key": "valuable", "rule": "profile.ltv > 2", "change_reason": WHY, "loaded": token})

    # then it saves, over nobody's change
    assert ok(again)["message"] == "Saved step valuable"
    step.refresh_from_db()
    assert (step.key, step.config["rule"], step.x) == ("valuable", "profile.ltv > 2", 140)


def test_a_step_deleted_while_its_form_was_open_is_said_not_saved(editor, empty_draft, condition):
    step, url = condition
    token = panel_token(editor, url)
    ok(command(editor, empty_draft, op="delete_step", step="condition_1"))

    response = editor.post(url, {"key": "condition_1", "rule": "profile.ltv > 1", "change_reason": WHY,
                                 "loaded": token})

    assert response.status_code == 404 and response.json()["field"] == "step"
    assert "no longer in the draft" in response.json()["message"]
    assert not Step.objects.filter(version=empty_draft).exists()


def test_trigger_settings_opened_before_another_editor_saved_them_are_refused(editor, empty_draft):
    url = reverse("console:canvas_settings", args=[empty_draft.pk])
    settings = {"trigger_kind": "event", "reentry_policy": "once", "change_reason": WHY}
    mine, theirs = panel_token(editor, url), other_editor()
    ok(theirs.post(url, {**settings, "trigger_event": "Order Completed", "loaded": panel_token(theirs, url)}))

    stale = editor.post(url, {**settings, "trigger_event": "Signed Up", "loaded": mine})

    assert stale.status_code == 409 and stale.json()["field"] == "loaded"
    assert stale.json()["message"].startswith("the trigger settings changed since you opened them")
    assert WorkflowVersion.objects.get(pk=empty_draft.pk).trigger_event == "Order Completed"


def test_a_token_that_is_not_one_is_a_400_naming_it(editor, empty_draft, condition):
    step, url = condition

    form = editor.post(url, {"key": "condition_1", "rule": "profile.ltv > 1", "change_reason": WHY, "loaded": "x"})
    drawing = command(editor, empty_draft, op="place", positions={"condition_1": [1, 1]}, loaded=["x"])

    assert form.status_code == 400 and form.json()["field"] == "loaded"
    assert drawing.status_code == 400 and drawing.json()["field"] == "loaded"
    step.refresh_from_db()
    assert (step.config.get("rule"), step.x) == (None, 100)


STALE_COMMANDS = [  # what tab A does on its stale drawing
    {"op": "place", "positions": {"condition_1": [400, 400], "goal_1": [100, 300]}},
    {"op": "connect", "source": "condition_1", "outcome": "no", "target": "goal_1"},
    {"op": "delete_step", "step": "goal_1"},
    {"op": "add_step", "kind": "exit", "x": 300, "y": 300,
     "positions": {"condition_1": [100, 150], "goal_1": [100, 300]}},
    {"op": "relabel", "edge": "EDGE", "outcome": "no"},
    {"op": "disconnect", "edge": "EDGE"},
    {"op": "undo"},
]


@pytest.mark.parametrize("body", STALE_COMMANDS, ids=lambda b: b["op"])
def test_a_command_made_on_a_drawing_older_than_the_draft_is_refused(editor, empty_draft, condition, body):
    # given tab A's drawing of a condition leading to a goal
    ok(command(editor, empty_draft, op="add_step", kind="goal", x=100, y=300, after="condition_1:yes"))
    tab_a = drawing_token(editor, empty_draft)
    edge = Edge.objects.get(version=empty_draft)
    # and tab B (another editor here) moves the goal since
    theirs = other_editor()
    moved = ok(command(theirs, empty_draft, op="place", positions={"goal_1": [250, 320]},
                       loaded=drawing_token(theirs, empty_draft)))
    before = {(s.key, s.x, s.y, json.dumps(s.config)) for s in Step.objects.filter(version=empty_draft)}

    # when tab A changes the draft on its drawing
    body = {k: (edge.pk if v == "EDGE" else v) for k, v in body.items()}
    response = command(editor, empty_draft, loaded=tab_a, **body)

    # then nothing changes, the answer says why and draws the draft as it is now
    answer = response.json()
    assert response.status_code == 409 and answer["field"] == "loaded" and answer["conflict"], answer
    assert answer["message"].startswith("the draft changed since this drawing of it was loaded (in another tab or "
                                        "by another editor): nothing was changed")
    assert answer["graph"] == moved["graph"] and answer["loaded"] == moved["loaded"] != tab_a
    assert {(s.key, s.x, s.y, json.dumps(s.config)) for s in Step.objects.filter(version=empty_draft)} == before
    assert {(e.source.key, e.outcome, e.target.key) for e in Edge.objects.filter(version=empty_draft)} == {
        ("condition_1", "yes", "goal_1")}
    # and the same change on the drawing it answered with goes through
    if body["op"] != "undo":  # (the other editor's move is not this session's to undo)
        ok(command(editor, empty_draft, loaded=answer["loaded"], **body))


def test_each_answer_carries_the_token_of_the_draft_it_draws(editor, empty_draft, condition):
    first = ok(command(editor, empty_draft, op="place", positions={"condition_1": [120, 150]},
                       loaded=drawing_token(editor, empty_draft)))
    second = ok(command(editor, empty_draft, op="place", positions={"condition_1": [140, 150]},
                        loaded=first["loaded"]))
    undone = ok(command(editor, empty_draft, op="undo", loaded=second["loaded"]))

    assert undone["loaded"] == first["loaded"] == drawing_token(editor, empty_draft)
    assert Step.objects.get(version=empty_draft).x == 120
