"""start_workflow loops (QA builder report, defect 4): a workflow that starts itself, or a circle of
workflows moving a customer round through their live versions. Validation refuses the ones it can
see, naming the step and the path; the engine stops any loop it meets anyway (one published
before the check, or closed later) after a few moves with a failed step saying why, instead of
~300 runs and messages and a RecursionError."""

from __future__ import annotations

import pytest
from django.utils import timezone

from channels_app.models import Delivery
from journeys.engine.compiled import load_version, reset_caches
from journeys.engine.moves import MAX_MOVES_IN_A_ROW
from journeys.engine.runner import run_enroll
from journeys.models import BusinessUnit, Customer, JourneyRun, Step, Workflow
from journeys.services.workflows import version_build, version_publish, version_validate, workflow_create
from tests.channels_app.factories import ChannelFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh():
    reset_caches()
    yield
    reset_caches()


def _version(name: str, steps: list[dict], **extra):
    unit, _ = BusinessUnit.objects.get_or_create(slug="growth", defaults={"name": "Growth"})
    workflow = Workflow.objects.filter(name=name).first() or workflow_create(name=name, business_unit=unit)
    return version_build(workflow=workflow, definition={
        "trigger_kind": "event", "trigger_event": extra.pop("trigger", "Never"), "steps": steps,
        "edges": [{"from": a["key"], "outcome": "next", "to": b["key"]} for a, b in zip(steps, steps[1:])], **extra})


def _move(workflow: str) -> dict:
    return {"key": "move", "kind": "start_workflow", "config": {"workflow": workflow}}


SEND = {"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}}


def test_a_move_to_its_own_workflow_is_refused_naming_the_step():
    draft = _version("Loop", [{"key": "tag", "kind": "update_profile", "config": {"traits": {"x": 1}}}, _move("Loop")])

    errors = version_validate(version=draft).errors

    assert errors == ["step move: workflow: 'Loop' is this workflow: the step would start it again at once, "
                      "and again from there, without end; start another workflow"]


def test_a_circle_through_other_workflows_live_versions_is_refused_with_its_path():
    unit = BusinessUnit.objects.create(slug="growth", name="Growth")
    for name in "ABC":
        workflow_create(name=name, business_unit=unit)
    version_publish(version=_version("B", [_move("C")]), reason="test")
    version_publish(version=_version("C", [_move("A")]), reason="test")
    version_publish(version=_version("D", [{"key": "g", "kind": "goal", "config": {}}]), reason="test")

    looping = version_validate(version=_version("A", [_move("B")], trigger="Signed Up")).errors
    fine = version_validate(version=_version("E", [_move("D")], trigger="Signed Up")).errors

    assert looping == ["step move: workflow: moving to 'B' makes a loop through the live versions: A -> B -> C -> A; "
                       "a customer would go round it without end: remove one of these moves"]
    assert fine == []


def _live_loop_published_before_the_check() -> None:
    """Loop: send a message, then start Loop again (re-entry always, concurrent runs allowed), live
    as a version published before validation refused it (written past the check)."""
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello", body="Hi")
    ChannelFactory(name="unused", kind="sms", provider="console")
    version_publish(version=_version("Other", [{"key": "g", "kind": "goal", "config": {}}]), reason="test")
    live = version_publish(version=_version("Loop", [SEND, _move("Other")], trigger="Loop Me",
                                            reentry_policy="always", allow_concurrent_runs=True), reason="test")
    Step.objects.filter(version=live, key="move").update(config={"workflow": "Loop", "exit_current": False,
                                                                  "exit_workflows": []})
    reset_caches()


def _stopped(customer: Customer) -> None:
    runs = list(JourneyRun.objects.filter(customer=customer).order_by("id"))
    assert len(runs) == MAX_MOVES_IN_A_ROW + 1  # the event's run and five moves, not ~300
    assert Delivery.objects.filter(customer=customer).count() == MAX_MOVES_IN_A_ROW + 1
    assert [r.status for r in runs] == ["completed"] * MAX_MOVES_IN_A_ROW + ["failed"]
    reason = "stopped a loop of workflow moves: " + " -> ".join(["Loop"] * (MAX_MOVES_IN_A_ROW + 2))
    assert runs[-1].error.startswith(f"step move: {reason} (more than {MAX_MOVES_IN_A_ROW} moves in a row")
    failed = runs[-1].executions.get(step_key="move")
    assert failed.outcome == "failed" and failed.error.startswith(reason)
    assert "RecursionError" not in "".join(r.error for r in runs)


def test_one_event_through_a_live_loop_makes_a_few_runs_and_messages_and_a_clear_reason(
        api, django_capture_on_commit_callbacks):
    _live_loop_published_before_the_check()

    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}},
                                     {"type": "track", "userId": "u1", "event": "Loop Me"}]})

    _stopped(Customer.objects.get(external_id="u1"))


def test_a_live_loop_entered_outside_a_batch_stops_the_same_way(django_capture_on_commit_callbacks):
    _live_loop_published_before_the_check()
    customer = Customer.objects.create(external_id="u2", email="u2@example.com")

    with django_capture_on_commit_callbacks(execute=True):
        run_enroll(version=load_version(Workflow.objects.get(name="Loop").live_version_id), customer=customer,
                   trigger_key="t:1", now=timezone.now())

    _stopped(customer)
