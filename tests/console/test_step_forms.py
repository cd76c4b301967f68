"""Step forms, one per kind: the admin's step page builds each kind's config from labelled
fields, and the kind's own validator's errors appear next to the field that caused them."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from channels_app.models import Channel
from journeys.engine.registry import STEP_KINDS
from journeys.models import BusinessUnit, Edge, LifecycleStage, Step, WorkflowVersion
from journeys.services.workflows import step_token, workflow_create
from tests.agents.factories import TeamFactory
from tests.experiments.factories import make_experiment

pytestmark = pytest.mark.django_db


@pytest.fixture
def draft(demo):
    workflow = workflow_create(name="Builder", business_unit=BusinessUnit.objects.get(slug="retention"))
    return WorkflowVersion.objects.create(workflow=workflow, number=1, trigger_event="Signed Up")  # as the admin adds one


def add_url(version, kind=""):
    return f"{reverse('admin:journeys_step_add')}?version={version.pk}" + (f"&kind={kind}" if kind else "")


def post_step(client, version, kind, data, **extra):
    body = {"change_reason": "building the journey", "_save": "Save", **data}
    return client.post(add_url(version, kind), body, **extra)


def test_the_kind_picker_lists_every_registered_kind_with_its_help(ops, draft):
    page = ops.get(add_url(draft)).content.decode()
    for name, kind in STEP_KINDS.items():
        assert f'value="{name}"' in page and kind.label in page
    assert "Opens a case for a support agent" in page  # help of a kind another app registered


def _setup_other_apps():
    LifecycleStage.objects.create(key="at_risk", name="At risk")
    TeamFactory(slug="billing", name="Billing")
    make_experiment(key="welcome", arms=[{"name": "control", "control": True}, {"name": "short"}])
    Channel.objects.create(name="crm", kind="webhook", provider="webhook", settings={"url": "http://127.0.0.1:9/h"})


CASES = [
    ("condition", {"rule": "profile.ltv >= 500"}, {"rule": "profile.ltv >= 500"}),
    ("split", {"branch_1_name": "vip", "branch_1_rule": "profile.ltv >= 1000", "branch_2_name": "",
               "branch_2_rule": "", "branch_3_name": "mid", "branch_3_rule": "profile.ltv >= 100"},
     {"branches": [{"name": "vip", "rule": "profile.ltv >= 1000"}, {"name": "mid", "rule": "profile.ltv >= 100"}]}),
    ("delay", {"mode": "duration", "duration": "1h30m"}, {"duration": 5400}),
    ("delay", {"mode": "until_local_time", "until_local_time": "09:00", "duration": "ignored"},
     {"until_local_time": "09:00"}),
    ("delay", {"mode": "until_attribute", "until_attribute": "renewal_date", "offset": "-3d"},
     {"until_attribute": "renewal_date", "offset": -259200}),
    ("wait_for_event", {"event": "Order Completed", "filter": "event.properties.total > 10", "timeout": "2d"},
     {"event": "Order Completed", "filter": "event.properties.total > 10", "timeout": 172800}),
    ("update_profile", {"set_1": "traits", "name_1": "stage", "as_1": "text", "value_1": "onboarding",
                        "set_2": "variables", "name_2": "discount", "as_2": "number", "value_2": "10",
                        "set_3": "traits", "name_3": "orders", "as_3": "rule", "value_3": "coalesce(profile.orders, 0) + 1"},
     {"traits": {"stage": "onboarding", "orders": {"rule": "coalesce(profile.orders, 0) + 1"}},
      "variables": {"discount": 10}}),
    ("goal", {"goal": "purchased"}, {"name": "purchased"}),
    ("exit", {"reason": "unsubscribed"}, {"reason": "unsubscribed"}),
    ("set_stage", {"stage": "at_risk"}, {"stage": "at_risk"}),
    ("start_workflow", {"workflow": "Cart abandonment", "exit_current": "on", "exit_workflows": ["Account anniversary"]},
     {"workflow": "Cart abandonment", "exit_current": True, "exit_workflows": ["Account anniversary"]}),
    ("send_message", {"channel": "email", "template": "cart-reminder", "min_gap_other_channel": "4h",
                      "recent_contact_action": "suppress"},
     {"channel": "email", "template": "cart-reminder", "min_gap_other_channel": 14400,
      "recent_contact_action": "suppress"}),
    ("send_best_channel", {"template": "cart-reminder", "template_sms": "cart-discount-sms", "channels": ["email", "sms"],
                           "urgency": "urgent", "send_time": "now", "min_engagements": "3"},
     {"template": "cart-reminder", "templates": {"sms": "cart-discount-sms"}, "channels": ["email", "sms"],
      "urgency": "urgent", "send_time": "now", "min_engagements": 3}),
    ("escalate_to_agent", {"sentiment_below": "-0.3", "failed_attempts_at_least": "2", "failed_event": "Bot Fallback",
                           "failed_window": "12h", "team": "billing", "priority": "high"},
     {"sentiment_below": -0.3, "failed_attempts_at_least": 2, "failed_event": "Bot Fallback", "failed_window": 43200,
      "team": "billing", "priority": "high"}),
    ("experiment_split", {"experiment": "welcome", "arms": "control, short", "holdout": "no"},
     {"experiment": "welcome", "arms": ["control", "short"], "holdout": False, "control": "control"}),
    ("webhook", {"channel": "crm", "payload": '{"plan": "{{ profile.plan }}"}'},
     {"channel": "crm", "payload": {"plan": "{{ profile.plan }}"}}),
]


@pytest.mark.parametrize(("kind", "data", "config"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_kind_form_builds_the_config_its_validator_accepts(ops, draft, kind, data, config):
    # given the rows other apps' kinds refer to
    _setup_other_apps()
    # when ops fills in the kind's form
    response = post_step(ops, draft, kind, {"key": "s1", "name": "First", **data})
    # then the step is stored with the validated config, and it is the version's entry step
    assert response.status_code == 302, response.content.decode()[:3000]
    step = Step.objects.get(version=draft, key="s1")
    assert (step.kind, step.name) == (kind, "First")
    assert {k: v for k, v in step.config.items() if k in config} == config
    assert WorkflowVersion.objects.get(pk=draft.pk).entry_step == "s1"
    # and its page shows the same values in the same fields
    page = ops.get(reverse("admin:journeys_step_change", args=[step.pk])).content.decode()
    assert 'value="s1"' in page
    if kind == "delay" and "duration" in config:
        assert 'value="1h30m"' in page


ERRORS = [
    ("condition", {"rule": "profile.ltv >= "}, "rule", "rule error: "),
    ("split", {"branch_1_name": "vip", "branch_1_rule": "profile.ltv > 1", "branch_3_name": "mid",
               "branch_3_rule": "profile.ltv >"}, "branch_3_rule", "branch mid: rule error"),
    ("split", {"branch_1_name": "a b", "branch_1_rule": "true"}, "branch_1_name", "name must be letters"),
    ("delay", {"mode": "until_local_time", "until_local_time": "25:00"}, "until_local_time", "HH:MM"),
    ("delay", {"mode": "duration", "duration": "soon"}, "duration", "is not a duration"),
    ("delay", {"mode": "until_attribute"}, "until_attribute", "is required"),
    ("wait_for_event", {"event": "Order Completed", "timeout": "1h", "filter": "event.properties.total >> 3"},
     "filter", "rule error"),
    ("update_profile", {"name_1": "n", "as_1": "rule", "value_1": "profile.x +", "set_1": "traits"},
     "value_1", "n: rule error"),
    ("update_profile", {"name_1": "vip", "as_1": "bool", "value_1": "maybe", "set_1": "traits"}, "value_1",
     "write yes or no"),
    ("update_profile", {"name_1": "n", "as_1": "text", "value_1": "a", "name_2": "address", "as_2": "json",
                        "value_2": '{"city": {"rule": "event.properties."}}', "set_2": "traits"},
     "value_2", "address.city: rule error"),
    ("send_message", {"channel": "sms", "template": "cart-reminder"}, None, None),  # filled below
    ("escalate_to_agent", {"priority": "normal"}, "sentiment_below", "set at least one threshold"),
    ("experiment_split", {"experiment": "welcome", "arms": "short"}, "arms", "the control arm must be one"),
]


@pytest.mark.parametrize(("kind", "data", "field", "message"), ERRORS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ERRORS)])
def test_validation_errors_appear_next_to_the_field_that_caused_them(ops, draft, kind, data, field, message):
    from channels_app.models import MessageTemplate

    _setup_other_apps()
    if kind == "send_message":  # a template written for email sent on the SMS channel
        MessageTemplate.objects.filter(name="cart-reminder").update(channel_kind="email")
        field, message = "template", "is for email"
    response = post_step(ops, draft, kind, {"key": "bad", **data})
    assert response.status_code == 200
    assert not Step.objects.filter(version=draft).exists()
    form = response.context["form"]
    assert field in form.errors, form.errors
    assert message in " ".join(form.errors[field])
    page = response.content.decode()
    row = page.split(f'id="row-{field}"', 1)[1].split('class="help"', 1)[0]
    assert "errorlist" in row  # shown in the field's own row


def test_comes_after_connects_an_outcome_and_editing_keeps_the_graph(ops, draft):
    post_step(ops, draft, "wait_for_event", {"key": "wait", "event": "Order Completed", "timeout": "1d"})
    response = post_step(ops, draft, "goal", {"key": "won", "goal": "ordered", "after": "wait:event"})
    assert response.status_code == 302
    edge = Edge.objects.get(version=draft)
    assert (edge.source.key, edge.outcome, edge.target.key) == ("wait", "event", "won")
    # the choices offer each outcome of the existing steps
    page = ops.get(add_url(draft, "exit")).content.decode()
    assert "wait → timeout" in page and "won → next" in page
    # editing a step changes its config in place
    won = Step.objects.get(version=draft, key="won")
    response = ops.post(reverse("admin:journeys_step_change", args=[won.pk]),
                        {"key": "won", "goal": "bought", "change_reason": "clearer", "_save": "Save",
                         "loaded": step_token(step=won)})
    assert response.status_code == 302
    won.refresh_from_db()
    assert won.config == {"name": "bought"} and Edge.objects.get(version=draft).target_id == won.pk
    assert won.history.first().history_change_reason == "clearer"


def test_a_step_needs_a_reason_and_a_unique_key(ops, draft):
    post_step(ops, draft, "exit", {"key": "end"})
    response = ops.post(add_url(draft, "exit"), {"key": "end", "_save": "Save"})
    assert "this version already has a step" in " ".join(response.context["form"].errors["key"])
    assert "change_reason" in response.context["reason_form"].errors


def test_a_live_version_and_other_units_are_out_of_an_editors_reach(client, draft):
    from journeys.models import Workflow

    client.login(username="editor", password="editor")
    # a draft of the editor's own unit: the form opens and saves
    assert client.get(add_url(draft, "exit")).status_code == 200
    assert post_step(client, draft, "exit", {"key": "end"}).status_code == 302
    # a live version: read-only, posting is refused
    live = Workflow.objects.get(name="Cart abandonment").live_version
    step = live.steps.get(key="valuable")
    page = client.get(reverse("admin:journeys_step_change", args=[step.pk]))
    assert page.status_code == 200 and b"cannot change here" in page.content and b"save-step" not in page.content
    refused = client.post(reverse("admin:journeys_step_change", args=[step.pk]),
                          {"key": "valuable", "rule": "true", "change_reason": "x"})
    assert refused.status_code == 403
    # another unit's workflow: not even visible
    support = Workflow.objects.get(name="High-value support query").live_version
    assert client.get(add_url(support, "exit")).status_code == 403


def test_the_version_page_links_to_the_step_forms(ops, draft):
    post_step(ops, draft, "exit", {"key": "end"})
    page = ops.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk])).content.decode()
    assert add_url(draft).replace("&", "&amp;") in page or add_url(draft) in page
    assert reverse("admin:journeys_step_change", args=[Step.objects.get(key="end", version=draft).pk]) in page


def test_the_version_page_shows_each_config_read_only_as_people_write_it(ops, draft):
    # given steps of several kinds built through their forms
    post_step(ops, draft, "delay", {"key": "pause", "mode": "until_attribute", "until_attribute": "renewal_date",
                                    "offset": "-3d"})
    post_step(ops, draft, "split", {"key": "tier", "branch_1_name": "vip", "branch_1_rule": "profile.ltv >= 1000"})
    post_step(ops, draft, "update_profile", {"key": "mark", "set_1": "traits", "name_1": "orders", "as_1": "rule",
                                             "value_1": "coalesce(profile.orders, 0) + 1"})
    post_step(ops, draft, "wait_for_event", {"key": "wait", "event": "Order Completed", "timeout": "1h30m"})
    post_step(ops, draft, "goal", {"key": "won", "goal": "ordered"})

    # when ops opens the version page
    page = ops.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk])).content.decode()

    # then each config reads like the form that wrote it, and nothing but the position can be typed in
    for line in ("<b>Until profile date</b>: renewal_date", "<b>Offset</b>: -3d",
                 "<b>Branches</b>: vip: profile.ltv &gt;= 1000", "<b>Traits</b>: orders = computed: coalesce",
                 "<b>Event</b>: Order Completed", "<b>Timeout</b>: 1h30m", "<b>Goal</b>: ordered"):
        assert line in page, line
    assert "<b>Filter</b>" not in page  # options left empty are not listed
    assert not re.search(r'name="steps-\d+-(config|kind|key|name)"', page)
    assert re.search(r'name="steps-\d+-x"', page) and 'id="steps-empty"' not in page  # no raw "add a step" row
    assert page.count(">edit in its form</a>") == 5


def test_a_step_of_an_unregistered_kind_still_shows_on_the_version_page(ops, draft):
    Step.objects.create(version=draft, key="legacy", kind="fax", config={"number": "+4930123"})
    page = ops.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk])).content.decode()
    assert "fax (unknown kind)" in page and "<b>unknown kind</b>: {&quot;number&quot;: &quot;+4930123&quot;}" in page


def test_a_step_can_change_its_kind_through_the_picker(ops, draft):
    post_step(ops, draft, "exit", {"key": "end"})
    step = Step.objects.get(version=draft, key="end")
    url = reverse("admin:journeys_step_change", args=[step.pk])
    assert 'href="?pick=1"' in ops.get(url).content.decode()
    picker = ops.get(f"{url}?pick=1").content.decode()
    assert 'id="kind-goal"' in picker and 'value="exit" id="kind-exit" checked' in picker
    response = ops.post(f"{url}?kind=goal", {"key": "end", "goal": "done", "change_reason": "count it", "_save": "Save",
                                         "loaded": step_token(step=step)})
    assert response.status_code == 302
    step.refresh_from_db()
    assert (step.kind, step.config) == ("goal", {"name": "done"})


def test_renaming_the_entry_step_keeps_it_the_entry(ops, draft):
    post_step(ops, draft, "exit", {"key": "first"})
    step = Step.objects.get(version=draft, key="first")
    ops.post(reverse("admin:journeys_step_change", args=[step.pk]),
             {"key": "start", "change_reason": "clearer key", "_save": "Save",
              "loaded": step_token(step=step)})
    assert WorkflowVersion.objects.get(pk=draft.pk).entry_step == "start"
