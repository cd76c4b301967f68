"""A step kind brings its own form, palette entry and graph summary with its executor: a kind
registered by this test module (as any app registers its kinds) shows up in the canvas's
palette, the side panel, the step pages and the version page with nothing changed in journeys."""

from __future__ import annotations

import json

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.engine.registry import STEP_KINDS, Palette, StepKind, StepResult, register, require
from journeys.forms.steps import StepConfigForm
from journeys.models import Step

pytestmark = pytest.mark.django_db
WHY = "trying the stamp kind"


class StampForm(StepConfigForm):
    kind = "test_stamp"
    config_fields = ("colour",)
    colour = forms.ChoiceField(choices=[("", "-"), ("red", "red"), ("blue", "blue")], help_text="the stamp's ink")


class Stamp(StepKind):
    kind = "test_stamp"
    label = "Stamp (a test kind)"
    help = "Stamps the run and goes on."
    form = StampForm
    palette = Palette(group="Test kinds", colour="#abcdef", order=95)

    def outcomes(self, config):
        return ["stamped", "smudged"]

    def clean(self, config):
        colour = require(config, "colour", str, "an ink colour")
        if colour not in ("red", "blue"):
            raise ValidationError({"colour": "red or blue"})
        return {"colour": colour}

    def summary(self, config):
        return f"a {config.get('colour', '?')} stamp"

    def execute(self, ctx):
        return StepResult(outcome="stamped")


@pytest.fixture
def stamp_kind():
    register(Stamp)
    yield STEP_KINDS["test_stamp"]
    STEP_KINDS.pop("test_stamp", None)


@pytest.fixture
def draft(empty_draft):
    return empty_draft


def test_a_new_kind_is_in_the_palette_in_its_own_section(stamp_kind, editor, draft):
    page = editor.get(reverse("console:version_graph", args=[draft.pk])).content.decode()

    assert "<h3>Test kinds</h3>" in page
    assert 'data-kind="test_stamp" data-colour="#abcdef"' in page and "Stamp (a test kind)" in page
    assert "Outcomes: stamped, smudged" in page


def test_a_new_kind_is_drawn_checked_and_edited_in_the_side_panel(stamp_kind, editor, draft):
    # given a stamp dropped on the canvas
    url = reverse("console:canvas_command", args=[draft.pk])
    added = editor.post(url, json.dumps({"op": "add_step", "kind": "test_stamp", "x": 100, "y": 150, "reason": WHY}),
                        content_type="application/json").json()
    step = Step.objects.get(version=draft)
    panel_url = reverse("console:canvas_step", args=[draft.pk, step.pk])

    # when its side panel is opened and its form saved
    panel = editor.get(panel_url).content.decode()
    saved = editor.post(panel_url, {"key": "stamp", "colour": "blue", "change_reason": WHY}).json()

    # then its validator spoke on the drawing, its own form was the panel, its summary and colour are drawn
    node = added["graph"]["nodes"][0]
    assert node["label"] == "Stamp (a test kind)" and node["outcomes"] == ["stamped", "smudged"]
    assert any("colour" in i["message"] and "required" in i["message"] for i in node["issues"])
    assert 'name="colour"' in panel and "the stamp&#x27;s ink" in panel and 'id="connect-smudged"' in panel
    assert saved["ok"] and Step.objects.get(pk=step.pk).config == {"colour": "blue"}
    assert "a blue stamp" in saved["svg"] and 'fill="#abcdef"' in saved["svg"]
    assert 'data-outcome="stamped"' in saved["svg"] and 'data-outcome="smudged"' in saved["svg"]


def test_a_new_kind_has_its_form_on_the_step_pages(stamp_kind, client, draft):
    client.login(username="ops", password="ops")
    add = f"{reverse('admin:journeys_step_add')}?version={draft.pk}"

    picker = client.get(add).content.decode()
    form = client.get(f"{add}&kind=test_stamp").content.decode()
    client.post(f"{add}&kind=test_stamp", {"key": "stamp", "colour": "red", "change_reason": WHY, "_save": "Save"})
    version_page = client.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk])).content.decode()

    assert 'id="kind-test_stamp"' in picker and "Stamps the run and goes on." in picker
    assert 'name="colour"' in form
    assert Step.objects.get(version=draft, key="stamp").config == {"colour": "red"}
    assert "<b>Colour</b>: red" in version_page
