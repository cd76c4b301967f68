"""The canvas's endpoints: every change of a draft's graph goes through the services the forms
use (permissions, the version lock, history with who and why, validation), bad input is a 400
naming the field, and undo puts the draft back as it was."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from journeys.models import AuditEntry, BusinessUnit, Edge, Step, WorkflowVersion
from journeys.services.workflows import version_publish
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
WHY = "building the cart flow"


@pytest.fixture
def draft(empty_draft):
    return empty_draft


def command(client, version, **body):
    body.setdefault("reason", WHY)
    return client.post(reverse("console:canvas_command", args=[version.pk]), json.dumps(body),
                       content_type="application/json")


def ok(response) -> dict:
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["ok"], answer
    return answer


def steps(version) -> dict[str, Step]:
    return {s.key: s for s in Step.objects.filter(version=version)}


def edges(version) -> set[tuple[str, str, str]]:
    return {(e.source.key, e.outcome, e.target.key) for e in Edge.objects.filter(version=version)}


def test_a_draft_opens_as_a_canvas_with_the_palette(editor, draft):
    page = editor.get(reverse("console:version_graph", args=[draft.pk])).content.decode()

    assert 'id="canvas"' in page and 'id="palette"' in page and "console/canvas.js" in page
    for kind in ("send_message", "wait_for_event", "condition", "goal", "escalate_to_agent", "experiment_split"):
        assert f'data-kind="{kind}"' in page
    assert 'class="start"' in page  # the trigger's start node
    assert "<script>" not in page.replace('<script id="canvas-data" type="application/json">', "")  # CSP: no inline code


def test_live_and_in_review_versions_stay_read_only_with_a_new_draft_button(editor, draft):
    live = WorkflowVersion.objects.get(workflow__name="Cart abandonment", state="live")

    page = editor.get(reverse("console:version_graph", args=[live.pk])).content.decode()
    refused = command(editor, live, op="add_step", kind="goal", x=10, y=10)
    response = editor.post(reverse("console:version_new_draft", args=[live.pk]), {"reason": "change the wait"})

    assert 'id="canvas"' not in page and 'id="new-draft-button"' in page
    assert refused.status_code == 400 and refused.json()["field"] == "version"
    assert "new draft" in refused.json()["message"].lower()
    new = WorkflowVersion.objects.filter(workflow=live.workflow, state="draft").latest("number")
    assert response.status_code == 302 and response["Location"] == reverse("console:version_graph", args=[new.pk])
    assert steps(new).keys() == steps(live).keys()


def test_a_version_in_review_is_read_only_on_the_canvas(editor, draft):
    from journeys.services.workflows import version_submit

    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=150))
    version_submit(version=draft, summary="a goal only")

    page = editor.get(reverse("console:version_graph", args=[draft.pk])).content.decode()
    refused = command(editor, draft, op="place", positions={"goal_1": [1, 1]})

    assert 'id="canvas"' not in page and 'id="new-draft-button"' in page
    assert refused.status_code == 400 and "v1 is in review" in refused.json()["message"]
    assert Step.objects.get(version=draft).x == 100


def test_adding_connecting_and_inserting_steps(editor, draft):
    # given a first step dropped on the empty canvas (it becomes the entry)
    first = ok(command(editor, draft, op="add_step", kind="send_message", x=100, y=150))
    # when a wait is dropped on its free outcome, then a goal on the wait's 'event' outcome
    ok(command(editor, draft, op="add_step", kind="wait_for_event", x=100, y=300, after="send_message_1:next"))
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=450, after="wait_for_event_1:event"))
    # and a condition dropped on the arrow between the message and the wait
    edge = Edge.objects.get(version=draft, source__key="send_message_1")
    ok(command(editor, draft, op="add_step", kind="condition", x=300, y=220, insert=edge.pk))

    # then the steps hang where they were dropped, in order, the first one the entry
    draft.refresh_from_db()
    assert first["focus"] == "send_message_1" and draft.entry_step == "send_message_1"
    assert edges(draft) == {("send_message_1", "next", "condition_1"), ("condition_1", "yes", "wait_for_event_1"),
                            ("wait_for_event_1", "event", "goal_1")}
    assert (steps(draft)["condition_1"].x, steps(draft)["condition_1"].y) == (300, 220)
    assert steps(draft)["goal_1"].config == {"name": "goal"}  # complete from the start


def test_steps_missing_settings_and_free_outcomes_show_on_the_drawing(editor, draft):
    answer = ok(command(editor, draft, op="add_step", kind="send_message", x=100, y=150))

    node = next(n for n in answer["graph"]["nodes"] if n["key"] == "send_message_1")
    messages = [i["message"] for i in node["issues"]]
    assert any("channel" in m and "required" in m for m in messages), messages  # the kind's required setting
    assert any("next" in m and "lead nowhere" in m for m in messages)  # an outcome with no edge
    assert 'class="node entry invalid"' in answer["svg"] and 'class="port free"' in answer["svg"]
    assert 'class="issue-badge error"' in answer["svg"]


def test_unreachable_and_orphaned_steps_are_marked_on_them(editor, draft):
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=150))
    answer = ok(command(editor, draft, op="add_step", kind="exit", x=400, y=150))

    node = next(n for n in answer["graph"]["nodes"] if n["key"] == "exit_1")
    assert [i["message"] for i in node["issues"]] == [
        "cannot be reached from the entry step: no edge leads to it (orphaned)"]


def test_a_rule_error_is_marked_on_its_step(editor, draft):
    ok(command(editor, draft, op="add_step", kind="condition", x=100, y=150))
    Step.objects.filter(version=draft, key="condition_1").update(config={"rule": "profile.ltv >="})

    answer = ok(command(editor, draft, op="place", positions={"condition_1": [120, 150]}))

    node = answer["graph"]["nodes"][0]
    assert any(i["level"] == "error" and "rule" in i["message"] for i in node["issues"]), node["issues"]


def test_moving_connecting_relabelling_and_deleting(editor, draft):
    for kind, y in (("condition", 150), ("goal", 300), ("exit", 300)):
        ok(command(editor, draft, op="add_step", kind=kind, x=100, y=y))

    ok(command(editor, draft, op="place", positions={"goal_1": [40, 320], "exit_1": [300, 320]}))
    ok(command(editor, draft, op="connect", source="condition_1", outcome="yes", target="goal_1"))
    ok(command(editor, draft, op="connect", source="condition_1", outcome="yes", target="exit_1"))  # re-pointed
    edge = Edge.objects.get(version=draft, source__key="condition_1")
    ok(command(editor, draft, op="relabel", edge=edge.pk, outcome="no"))
    ok(command(editor, draft, op="connect", source="condition_1", outcome="yes", target="goal_1"))
    taken = command(editor, draft, op="relabel", edge=edge.pk, outcome="yes")

    assert (steps(draft)["goal_1"].x, steps(draft)["goal_1"].y) == (40, 320)
    assert edges(draft) == {("condition_1", "no", "exit_1"), ("condition_1", "yes", "goal_1")}
    assert taken.status_code == 400 and taken.json()["field"] == "outcome"

    ok(command(editor, draft, op="delete_step", step="condition_1"))
    draft.refresh_from_db()
    assert set(steps(draft)) == {"goal_1", "exit_1"} and edges(draft) == set()
    assert draft.entry_step == "exit_1"  # the deleted entry's first edge led there


def test_every_change_is_recorded_with_who_and_why(editor, draft):
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=150))
    ok(command(editor, draft, op="place", positions={"goal_1": [140, 150]}))
    ok(command(editor, draft, op="delete_step", step="goal_1"))

    history = Step.history.filter(version_id=draft.pk).order_by("history_date")
    assert [h.history_type for h in history] == ["+", "~", "~", "-"]
    assert {h.history_user.username for h in history} == {"editor"}
    assert {h.history_change_reason for h in history} == {WHY}
    assert AuditEntry.objects.filter(version=draft, action="version_edited", reason=WHY).count() == 3


def test_undo_puts_the_draft_back(editor, draft):
    ok(command(editor, draft, op="add_step", kind="condition", x=100, y=150))
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=300, after="condition_1:yes"))
    before = (steps(draft), edges(draft))
    ok(command(editor, draft, op="delete_step", step="condition_1"))

    answer = ok(command(editor, draft, op="undo"))

    draft.refresh_from_db()
    assert answer["message"] == "Undone: deleted condition_1 and its edges"
    assert edges(draft) == before[1] and steps(draft).keys() == before[0].keys()
    assert draft.entry_step == "condition_1"
    ok(command(editor, draft, op="undo"))  # the goal goes again
    assert set(steps(draft)) == {"condition_1"} and edges(draft) == set()


def test_undo_never_overwrites_someone_else_s_later_edit(editor, draft, client):
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=150))
    Step.objects.filter(version=draft, key="goal_1").update(name="edited elsewhere")

    refused = command(editor, draft, op="undo")
    again = command(editor, draft, op="undo")

    assert refused.status_code == 400 and refused.json()["field"] == "undo"
    assert "nothing was undone" in refused.json()["message"]
    assert again.status_code == 400 and again.json()["message"].startswith("nothing to undo")
    assert Step.objects.get(version=draft, key="goal_1").name == "edited elsewhere"


BAD_INPUT = [  # (body, the field the answer names)
    ({"op": "add_step", "kind": "no_such_kind", "x": 1, "y": 1}, "kind"),
    ({"op": "add_step", "kind": "goal", "x": "left", "y": 1}, "x"),
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "after": "nowhere:next"}, "after"),
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "insert": "99999"}, "insert"),
    ({"op": "connect", "source": "missing", "outcome": "next", "target": "missing"}, "target"),
    ({"op": "place", "positions": {"ghost": [1, 2]}}, "positions"),
    ({"op": "place", "positions": {"a": ["x", 2]}}, "positions"),
    ({"op": "relabel", "edge": "1; drop table", "outcome": "yes"}, "edge"),
    ({"op": "explode"}, "op"),
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "reason": ""}, "reason"),
    ({"op": "add_step", "kind": "go\u0000al", "x": 1, "y": 1}, "kind"),
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "reason": "why " * 126}, "reason"),
    ({"op": "place", "positions": {f"s{i}": [1, 1] for i in range(2001)}}, "positions"),
    ({"op": "add_step", "kind": "goal", "x": 1e999, "y": 1}, "x"),
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "note": float("nan")}, "note"),  # NaN is not JSON
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "reason": "why \ud800"}, "reason"),  # no UTF-8 for it
    ({"op": "add_step", "kind": "goal", "x": 1, "y": 1, "after": "a\u0000:next"}, "after"),
]


def test_bad_input_is_a_400_naming_the_field(editor, draft):
    for body, field in BAD_INPUT:  # one draft for all (each case changes nothing)
        response = command(editor, draft, **body)

        assert response.status_code == 400, (body, response.content)
        assert response.json()["field"] == field and response.json()["message"], body
    assert not Step.objects.filter(version=draft).exists()


def test_a_body_that_is_not_json_is_a_400(editor, draft):
    response = editor.post(reverse("console:canvas_command", args=[draft.pk]), "op=undo",
                           content_type="application/json")
    assert response.status_code == 400 and response.json()["field"] == "body"


def test_people_outside_the_unit_cannot_see_or_change_the_draft(client, draft):
    outsider = UserFactory(username="sam", is_staff=True)
    from journeys.services.governance import business_unit_grant_editor

    business_unit_grant_editor(unit=BusinessUnit.objects.get(slug="support"), user=outsider)
    client.force_login(outsider)

    assert client.get(reverse("console:version_graph", args=[draft.pk])).status_code == 404
    assert command(client, draft, op="add_step", kind="goal", x=1, y=1).status_code == 404
    assert not Step.objects.filter(version=draft).exists()


def test_a_reader_sees_the_draft_without_the_canvas(client, draft):
    from django.contrib.auth.models import Permission

    analyst = UserFactory(username="ann", is_staff=True)
    analyst.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client.force_login(analyst)

    page = client.get(reverse("console:version_graph", args=[draft.pk])).content.decode()
    refused = command(client, draft, op="add_step", kind="goal", x=1, y=1)

    assert 'id="canvas"' not in page
    assert refused.status_code == 403 and not Step.objects.filter(version=draft).exists()


def test_commands_need_the_csrf_token(draft, demo):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.login(username="editor", password="editor")

    response = command(browser, draft, op="add_step", kind="goal", x=1, y=1)

    assert response.status_code == 403 and not Step.objects.filter(version=draft).exists()


def test_the_side_panel_saves_a_step_through_its_own_form(editor, draft):
    ok(command(editor, draft, op="add_step", kind="wait_for_event", x=100, y=150))
    step = Step.objects.get(version=draft)
    url = reverse("console:canvas_step", args=[draft.pk, step.pk])

    panel = editor.get(url).content.decode()
    bad = editor.post(url, {"key": "wait", "event": "Order Completed", "timeout": "soon", "change_reason": WHY})
    saved = editor.post(url, {"key": "wait", "event": "Order Completed", "timeout": "24h", "change_reason": WHY})

    assert 'name="event"' in panel and 'name="timeout"' in panel and "data-rule-check" in panel  # the filter's rule editor
    assert 'id="connect-event"' in panel and 'id="connect-timeout"' in panel
    assert bad.status_code == 400 and bad.json()["field"] == "timeout" and "errorlist" in bad.json()["panel"]
    assert ok(saved)["message"] == "Saved step wait"
    step.refresh_from_db()
    assert (step.key, step.config) == ("wait", {"event": "Order Completed", "filter": "", "timeout": 86400})
    draft.refresh_from_db()
    assert draft.entry_step == "wait"  # a renamed entry stays the entry


def test_the_side_panel_shows_the_template_preview_of_a_messaging_step(editor, draft):
    ok(command(editor, draft, op="add_step", kind="send_message", x=100, y=150))
    step = Step.objects.get(version=draft)

    panel = editor.get(reverse("console:canvas_step", args=[draft.pk, step.pk])).content.decode()

    assert 'id="template-preview"' in panel and 'name="preview_customer"' in panel


def test_the_panel_needs_a_reason_it_can_store(editor, draft):
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=150))
    step = Step.objects.get(version=draft)

    for reason in (None, "  ", "why\x00not", "why " * 126):
        body = {"key": "won", "goal": "x", **({"change_reason": reason} if reason is not None else {})}
        response = editor.post(reverse("console:canvas_step", args=[draft.pk, step.pk]), body)

        assert response.status_code == 400 and response.json()["field"] == "reason", reason
    assert Step.objects.get(version=draft).key == "goal_1"


def test_the_start_node_edits_the_trigger_and_entry_settings(editor, draft):
    url = reverse("console:canvas_settings", args=[draft.pk])
    settings = {"trigger_kind": "inactivity", "trigger_event": "Checkout Started", "followed_by": "Order Completed",
                "within": "1h", "reentry_policy": "cooldown", "reentry_cooldown": "1d", "goal_event": "Order Completed",
                "change_reason": WHY}

    bad = editor.post(url, {**settings, "within": "a while"})
    good = editor.post(url, settings)

    assert bad.status_code == 400 and bad.json()["field"] == "within"
    assert ok(good)["message"] == "Saved the trigger settings"
    draft.refresh_from_db()
    assert (draft.trigger_kind, draft.trigger_config, draft.reentry_cooldown_s, draft.goal_event) == (
        "inactivity", {"followed_by": "Order Completed", "within": "1h"}, 86400, "Order Completed")
    assert 'Start · Inactivity' in ok(good)["svg"]


def test_a_setting_another_trigger_kind_reads_is_refused_at_more_settings(editor, draft):
    url = reverse("console:canvas_settings", args=[draft.pk])
    response = editor.post(url, {"trigger_kind": "attribute_change", "attribute": "tier", "reentry_policy": "once",
                                 "more": '{"to": "gold", "within": "1h"}', "change_reason": WHY})

    answer = response.json()
    assert response.status_code == 400 and answer["field"] == "more", answer
    assert answer["message"].startswith("within: is a setting of inactivity triggers")
    assert WorkflowVersion.objects.get(pk=draft.pk).trigger_kind == "event"


@pytest.mark.parametrize("within", ["0s", "0", "0m0s"])
def test_an_inactivity_window_of_no_time_is_refused_at_its_field(editor, draft, within):
    # given the start node's settings of an inactivity trigger; when its window is no time at all
    url = reverse("console:canvas_settings", args=[draft.pk])
    response = editor.post(url, {"trigger_kind": "inactivity", "trigger_event": "Checkout Started",
                                 "followed_by": "Order Completed", "within": within, "reentry_policy": "once",
                                 "change_reason": WHY})

    # then the window says what to fix, and the draft keeps its trigger
    answer = response.json()
    assert response.status_code == 400 and answer["field"] == "within", answer
    assert "is no time at all; give the window in which the event must follow, e.g. 1h" in answer["message"]
    assert WorkflowVersion.objects.get(pk=draft.pk).trigger_kind == "event"


@pytest.mark.parametrize(("after", "message"), [
    ("condition_1", ("'condition_1' lacks the outcome the new step follows: write key:outcome, e.g. condition_1:yes "
                     "(outcomes of condition_1: yes, no)")),
    ("nowhere", "this version has no step 'nowhere'"),
    ("condition_1:maybe", "step condition_1 has no outcome 'maybe'; its outcomes: yes, no"),
])
def test_adding_a_step_after_a_step_without_its_outcome_shows_the_expected_form(editor, draft, after, message):
    # given a draft with a condition
    ok(command(editor, draft, op="add_step", kind="condition", x=100, y=150))

    # when a step is added "after" the condition without saying which outcome
    response = command(editor, draft, op="add_step", kind="goal", x=100, y=300, after=after)

    # then the answer names the field and the form it expects; nothing was added
    assert response.status_code == 400 and response.json()["field"] == "after", response.content
    assert message in response.json()["message"]
    assert set(steps(draft)) == {"condition_1"}


@pytest.mark.parametrize(("cooldown", "message"), [
    ("soon", "'soon' is not a duration. Enter a duration like 30m, 2h or 7d"),
    ("-1h", "'-1h' is negative: a duration cannot be. Enter a duration like 30m, 2h or 7d"),
])
def test_a_cooldown_that_is_not_a_duration_is_a_400_naming_it_and_the_draft_stays(editor, draft, cooldown, message):
    url = reverse("console:canvas_settings", args=[draft.pk])
    before = (draft.reentry_policy, draft.reentry_cooldown_s, draft.history.count())

    response = editor.post(url, {"trigger_kind": "event", "trigger_event": "Signed Up", "reentry_policy": "cooldown",
                                 "reentry_cooldown": cooldown, "change_reason": WHY})

    assert response.status_code == 400
    answer = response.json()
    assert (answer["field"], answer["message"]) == ("reentry_cooldown", message)
    assert "Enter a duration like 30m, 2h or 7d" in answer["panel"]  # the panel shows it at its field
    draft.refresh_from_db()
    assert (draft.reentry_policy, draft.reentry_cooldown_s, draft.history.count()) == before


def test_the_panel_of_a_read_only_version_cannot_save(editor, demo):
    live = WorkflowVersion.objects.get(workflow__name="Cart abandonment", state="live")
    step = Step.objects.get(version=live, key="wait")

    response = editor.post(reverse("console:canvas_step", args=[live.pk, step.pk]),
                           {"key": "wait", "event": "Order Completed", "timeout": "1h", "change_reason": WHY})

    assert response.status_code == 403
    assert Step.objects.get(pk=step.pk).config["timeout"] == 86400


def test_publishing_freezes_the_canvas(editor, draft):
    ok(command(editor, draft, op="add_step", kind="goal", x=100, y=150))
    version_publish(version=draft, reason="test")

    assert command(editor, draft, op="place", positions={"goal_1": [1, 1]}).status_code == 400


def test_every_registered_kind_can_be_dropped_drawn_and_opened(editor, draft):
    from journeys.engine.registry import STEP_KINDS

    for kind in sorted(STEP_KINDS):
        answer = ok(command(editor, draft, op="add_step", kind=kind, x=100, y=150))
        step = Step.objects.get(version=draft, key=answer["focus"])

        panel = editor.get(reverse("console:canvas_step", args=[draft.pk, step.pk]))

        assert panel.status_code == 200 and b'id="step-form"' in panel.content, kind
        assert f'data-key="{step.key}"' in answer["svg"], kind


def test_a_step_of_a_kind_no_longer_registered_can_still_be_deleted(editor, draft):
    step = Step.objects.create(version=draft, key="old", kind="retired_kind")

    panel = editor.get(reverse("console:canvas_step", args=[draft.pk, step.pk])).content.decode()
    refused = editor.post(reverse("console:canvas_step", args=[draft.pk, step.pk]), {"change_reason": WHY})
    deleted = command(editor, draft, op="delete_step", step="old")

    assert "unknown step kind" in panel and 'id="canvas-delete-step"' in panel
    assert refused.status_code == 400 and refused.json()["field"] == "kind"
    assert ok(deleted) and not Step.objects.filter(version=draft).exists()


def test_undo_remembers_a_bounded_past(editor, draft, monkeypatch):
    from journeys.console import canvas

    monkeypatch.setattr(canvas, "UNDO_DEPTH", 2)
    for kind in ("goal", "exit", "condition"):
        ok(command(editor, draft, op="add_step", kind=kind, x=100, y=150))

    ok(command(editor, draft, op="undo"))
    ok(command(editor, draft, op="undo"))
    third = command(editor, draft, op="undo")

    assert third.status_code == 400 and third.json()["message"].startswith("nothing to undo")
    assert set(steps(draft)) == {"goal_1"}
