"""escalate_to_agent inside a published workflow: thresholds, outcomes, dry run, idempotent retries."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from agents.models import Case
from journeys.engine.processor import events_process
from journeys.models import BusinessUnit, Event, JourneyRun, StepExecution
from journeys.services.dry_run import version_dry_run
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.agents.factories import AgentFactory, TeamFactory

pytestmark = pytest.mark.django_db

ANGRY = "This is the worst service ever. I am furious and want my money back!"
CALM = "Hi, what are your opening hours? Thanks!"
COMPLEX = ("My API token fails with a timeout error after the firmware update. Also the webhook sync does not work. "
           "How do I fix the SSO configuration? And why is the export broken?")


def publish(config: dict, name: str = "Support triage"):
    unit, _ = BusinessUnit.objects.get_or_create(slug="support", defaults={"name": "Support"})
    workflow = workflow_create(name=name, business_unit=unit)
    definition = {
        "trigger_event": "Support Message", "reentry_policy": "always",
        "steps": [
            {"key": "escalate", "kind": "escalate_to_agent", "config": config},
            {"key": "human", "kind": "update_profile", "config": {"traits": {"handled_by": "agent"}}},
            {"key": "bot", "kind": "update_profile", "config": {"traits": {"handled_by": "bot"}}},
        ],
        "edges": [{"from": "escalate", "outcome": "escalated", "to": "human"},
                  {"from": "escalate", "outcome": "automated", "to": "bot"}],
    }
    return version_publish(version=version_build(workflow=workflow, definition=definition))


THRESHOLDS = {"sentiment_below": -0.3, "complexity_above": 0.45, "value_at_least": 1000,
              "failed_attempts_at_least": 2, "failed_event": "Bot Fallback", "category": "billing"}


def send(api, capture, user, event="Support Message", **props):
    with capture(execute=True):
        assert api.post("track", {"userId": user, "event": event, "properties": props}).status_code == 200


@pytest.fixture
def support_agent():
    return AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})


@pytest.mark.parametrize("who,traits,text,reason", [
    ("angry", {}, ANGRY, "sentiment"),
    ("complex", {}, COMPLEX, "complexity"),
    ("vip", {"ltv": 5000}, CALM, "lifetime value"),
])
def test_each_threshold_escalates_and_the_case_is_routed(api, django_capture_on_commit_callbacks, support_agent,
                                                         who, traits, text, reason):
    publish(THRESHOLDS)
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": who, "traits": {"email": f"{who}@example.com", **traits}})
    send(api, django_capture_on_commit_callbacks, who, text=text)

    case = Case.objects.get()
    assert case.customer.external_id == who
    assert any(reason in r for r in case.escalation_reasons)
    assert (case.status, case.assigned_agent) == ("assigned", support_agent)
    assert case.origin_run.workflow.name == "Support triage" and case.origin_event.name == "Support Message"
    assert case.customer.traits["handled_by"] == "agent"
    run = JourneyRun.objects.get()
    assert run.variables["case_id"] == case.pk
    assert StepExecution.objects.get(run=run, step_key="escalate").outcome == "escalated"


def test_a_calm_simple_question_from_a_normal_customer_stays_automated(api, django_capture_on_commit_callbacks):
    publish(THRESHOLDS)
    send(api, django_capture_on_commit_callbacks, "calm", text=CALM)

    assert Case.objects.count() == 0
    exe = StepExecution.objects.get(step_key="escalate")
    assert exe.outcome == "automated" and exe.detail["sentiment"] > 0
    assert JourneyRun.objects.get().customer.traits["handled_by"] == "bot"


def test_n_failed_automated_attempts_escalate(api, django_capture_on_commit_callbacks):
    publish(THRESHOLDS)
    send(api, django_capture_on_commit_callbacks, "retry", event="Bot Fallback")
    send(api, django_capture_on_commit_callbacks, "retry", text=CALM)
    assert Case.objects.count() == 0  # one failure is not enough

    send(api, django_capture_on_commit_callbacks, "retry", event="Bot Fallback")
    send(api, django_capture_on_commit_callbacks, "retry", text=CALM)
    case = Case.objects.get()
    assert case.escalation_reasons == ["2 failed automated attempts >= 2"]


def test_strong_emotion_and_value_raise_the_priority(api, django_capture_on_commit_callbacks):
    publish(THRESHOLDS)
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "vip", "traits": {"ltv": 5000}})
    send(api, django_capture_on_commit_callbacks, "vip", text=ANGRY)
    assert Case.objects.get().get_priority_display() == "Urgent"


def test_a_retried_task_never_opens_two_cases(api, django_capture_on_commit_callbacks, support_agent):
    publish(THRESHOLDS)
    send(api, django_capture_on_commit_callbacks, "angry", text=ANGRY)
    event = Event.objects.get(name="Support Message")
    # The worker crashed after its work but before marking the event: the task runs again.
    Event.objects.filter(pk=event.pk).update(status="pending")
    with django_capture_on_commit_callbacks(execute=True):
        events_process(event_ids=[event.pk])

    assert Case.objects.count() == 1
    assert Case.objects.get().entries.filter(kind="assignment").count() == 1


def test_later_messages_join_the_open_case_even_when_calm(api, django_capture_on_commit_callbacks, support_agent):
    publish(THRESHOLDS)
    send(api, django_capture_on_commit_callbacks, "angry", text=ANGRY)
    send(api, django_capture_on_commit_callbacks, "angry", text="Still waiting. Terrible.")
    send(api, django_capture_on_commit_callbacks, "angry", text=CALM)

    case = Case.objects.get()
    assert list(case.entries.filter(kind="inbound").values_list("body", flat=True)) == [
        ANGRY, "Still waiting. Terrible.", CALM]
    last = StepExecution.objects.filter(step_key="escalate").order_by("-id").first()
    assert last.outcome == "escalated" and last.detail["reasons"] == [f"open case #{case.pk}"]


def test_dry_run_describes_without_opening_a_case(django_capture_on_commit_callbacks):
    from tests.factories import CustomerFactory

    version = publish(THRESHOLDS)
    customer = CustomerFactory(traits={"ltv": 10})
    result = version_dry_run(version=version, customer=customer,
                             event={"name": "Support Message", "properties": {"text": ANGRY}})

    assert Case.objects.count() == 0
    report = result.as_dict()
    assert report["entered"] and "would_open_case" in str(report["path"]) and "escalated" in str(report["path"])


@pytest.mark.parametrize("config,field", [
    ({}, "sentiment_below"),
    ({"sentiment_below": "very"}, "sentiment_below"),
    ({"complexity_above": 2}, "complexity_above"),
    ({"failed_attempts_at_least": 0}, "failed_attempts_at_least"),
    ({"always": True, "priority": "whenever"}, "priority"),
    ({"always": True, "team": "nope"}, "team"),
])
def test_bad_config_is_refused_with_the_field_named(config, field):
    from journeys.engine.registry import get_kind

    with pytest.raises(ValidationError) as exc:
        get_kind("escalate_to_agent").clean(config)
    assert field in exc.value.message_dict


def test_a_customer_answering_a_pending_case_puts_it_back_on_the_agents_desk(
    api, django_capture_on_commit_callbacks, support_agent, email_channel
):
    from agents.services.cases import case_reply_send

    publish(THRESHOLDS)
    with django_capture_on_commit_callbacks(execute=True):
        api.post("identify", {"userId": "angry", "traits": {"email": "angry@example.com"}})
    send(api, django_capture_on_commit_callbacks, "angry", text=ANGRY)
    case = Case.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        case_reply_send(case=case, actor=support_agent.user, body="Sorry! Which order?", idempotency_key="1")
    case.refresh_from_db()
    assert (case.status, case.sla_due_at) == ("pending", None)

    send(api, django_capture_on_commit_callbacks, "angry", text="Order 1234")

    case.refresh_from_db()
    assert case.status == "assigned" and case.sla_due_at is not None


def test_a_batch_of_events_moves_customers_into_an_escalation_and_each_gets_its_own_outcome(support_agent):
    """start_workflow is batch-safe and escalate_to_agent is not: the runs a batch's moves start reach
    the escalation inside the batch's flush, which writes what the batch holds and escalates each alone."""
    from journeys.models import Customer
    from tests.factories import CustomerFactory, events_process_counted, pending_events

    publish(THRESHOLDS)
    unit = BusinessUnit.objects.get(slug="support")
    version_publish(version=version_build(workflow=workflow_create(name="Front door", business_unit=unit), definition={
        "trigger_event": "Help Needed", "reentry_policy": "always",
        "steps": [{"key": "tag", "kind": "update_profile", "config": {"traits": {"asked": True}}},
                  {"key": "move", "kind": "start_workflow", "config": {"workflow": "Support triage", "exit_current": True}}],
        "edges": [{"from": "tag", "outcome": "next", "to": "move"}],
    }))
    vips = [CustomerFactory(external_id=f"vip{i}", traits={"ltv": 5000}) for i in range(3)]
    normal = [CustomerFactory(external_id=f"n{i}", traits={"ltv": 10}) for i in range(3)]

    events_process_counted(pending_events(vips + normal, name="Help Needed"))

    assert sorted(Case.objects.values_list("customer__external_id", flat=True)) == ["vip0", "vip1", "vip2"]
    for customer in vips + normal:
        front, triage = (JourneyRun.objects.get(customer=customer, workflow__name=name)
                         for name in ("Front door", "Support triage"))
        assert front.status == "exited" and triage.status == "completed"
        assert StepExecution.objects.get(run=front, step_key="move").detail["started_run"] == triage.pk
        traits = Customer.objects.get(pk=customer.pk).traits
        assert traits["asked"] is True
        assert traits["handled_by"] == ("agent" if customer in vips else "bot")
