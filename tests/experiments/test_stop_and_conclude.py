"""Stopping and concluding an experiment: while stopped, holdout customers stay without messages
and customers of an arm follow control; the report counts conversions in running time only (not
while stopped, not after the conclusion, when every entry, the holdout's too, follows the winner)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from experiments.models import Assignment, Experiment
from experiments.services.analysis import exposures_list, group_counts
from experiments.services.assignment import assignment_decide
from experiments.services.experiments import experiment_conclude, experiment_start, experiment_stop
from experiments.services.reports import NO_MESSAGE, experiment_attribution
from journeys.models import Customer, JourneyRun
from journeys.services.dry_run import version_dry_run
from tests.experiments.factories import make_customers, make_experiment, make_goal_events, split_workflow
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

OUTCOMES = ("control", "short", "holdout")
# Customers hashed into half holdout, a quarter per arm: with 16, no one landed in "short" about
# once in a hundred runs (the ids, and so the buckets, follow the database's sequences); with 40,
# about once in a hundred thousand.
CROWD = 40


@pytest.fixture
def mailing(publish):
    """Signed Up -> split (holdout half) -> the same email on every outcome; re-entry always."""
    from channels_app.models import Channel, MessageTemplate

    Channel.objects.create(name="email", kind="email")
    MessageTemplate.objects.create(name="welcome", subject="Welcome", body="Hello")
    experiment = make_experiment(holdout_share=0.5, goal_event="Order Completed", window_s=86400)
    publish({
        "trigger_event": "Signed Up",
        "reentry_policy": "always",
        "steps": [
            {"key": "split", "kind": "experiment_split", "config": {"experiment": "welcome"}},
            {"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "welcome"}},
        ],
        "edges": [{"from": "split", "outcome": o, "to": "mail"} for o in OUTCOMES],
    })
    return experiment


def enter_all(send, n: int = 16) -> None:
    for i in range(n):
        send("identify", userId=f"m{i}", traits={"email": f"m{i}@example.com"})
        send(userId=f"m{i}", event="Signed Up")


def test_stopped_from_the_admin_holdout_customers_stay_without_messages_and_arms_follow_control(
        client, mailing, send):
    from channels_app.models import Delivery

    enter_all(send, CROWD)
    held = set(Assignment.objects.filter(holdout=True).values_list("customer_id", flat=True))
    treated = set(Assignment.objects.filter(holdout=False, arm__name="short").values_list("customer_id", flat=True))
    assert held and treated
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))

    response = client.post(reverse("admin:experiments_experiment_changelist"),
                           {"action": "stop_selected", "_selected_action": [mailing.pk], "reason": "fix the copy"},
                           follow=True)
    assert [str(m) for m in response.context["messages"]] == ["welcome: stopped"]
    enter_all(send, CROWD)  # everyone again, while stopped
    send(userId="newcomer", event="Signed Up")

    for customer_id in held:
        statuses = list(Delivery.objects.filter(customer_id=customer_id).values_list("status", "reason"))
        assert statuses == [("suppressed", "holdout")] * 2
        second = JourneyRun.objects.filter(customer_id=customer_id).order_by("id").last()
        assert second.variables["holdout"] is True and second.executions.first().outcome == "holdout"
    for customer_id in treated:
        second = JourneyRun.objects.filter(customer_id=customer_id).order_by("id").last()
        assert second.variables == {"experiment": mailing.pk, "experiment_arm": "control", "holdout": False}
        assert second.executions.first().outcome == "control"
    assert Delivery.objects.filter(status="suppressed", reason="holdout").count() == 2 * len(held)
    newcomer = Customer.objects.get(external_id="newcomer")
    assert not Assignment.objects.filter(customer=newcomer).exists()
    assert JourneyRun.objects.get(customer=newcomer).variables["experiment_arm"] == "control"
    assert Assignment.objects.count() == CROWD


def test_a_dry_run_of_a_stopped_experiment_keeps_a_held_out_customer_held_out(publish, send):
    experiment = make_experiment(holdout_share=0.5)
    version = publish(split_workflow(holdout=True))
    for i in range(12):
        send(userId=f"h{i}", event="Signed Up")
    held = Assignment.objects.filter(holdout=True).select_related("customer").first()
    experiment_stop(experiment=experiment)

    report = version_dry_run(version=version, customer=held.customer, event={"event": "Signed Up"})

    split = report.path[0]
    assert split["outcome"] == "holdout"
    assert split["detail"]["holdout"] is True and "held out earlier" in split["detail"]["reason"]
    decision = assignment_decide(experiment=Experiment.objects.get(pk=experiment.pk), customer=held.customer,
                                 now=timezone.now())
    assert decision.holdout and not decision.recorded


def test_after_the_conclusion_the_holdout_gets_the_winner_but_its_conversions_are_not_credited(mailing, send):
    from channels_app.models import Delivery

    enter_all(send)
    held = set(Assignment.objects.filter(holdout=True).values_list("customer_id", flat=True))
    experiment_conclude(experiment=mailing, winner=mailing.arms.get(name="short"), reason="clear win")

    enter_all(send)  # every entry follows the winner, the holdout's too (documented)
    for i in range(16):
        send(userId=f"m{i}", event="Order Completed")

    assert Delivery.objects.filter(customer_id__in=held, status="sent").count() == len(held)
    experiment = Experiment.objects.get(pk=mailing.pk)
    assert all(x == 0 for _, x in group_counts(experiment=experiment).values())
    assert experiment_attribution(experiment=experiment) == []
    assert all(e.converted_at is None for e in exposures_list(experiment=experiment))


def test_the_report_counts_conversions_in_running_time_only_and_says_so(client, publish):
    t0 = timezone.now() - timedelta(days=10)
    experiment = make_experiment(holdout_share=0.3, goal_event="Order Completed", window_s=3 * 86400, now=t0)
    publish(split_workflow(holdout=True))
    customers = make_customers(80, prefix="r")
    for customer in customers:
        assignment_decide(experiment=experiment, customer=customer, now=t0 + timedelta(hours=1))
    experiment_stop(experiment=experiment, now=t0 + timedelta(days=1), reason="pause")
    experiment_start(experiment=experiment, now=t0 + timedelta(days=2), reason="resume")
    experiment_conclude(experiment=experiment, winner=experiment.arms.get(name="short"), reason="done",
                        now=t0 + timedelta(days=2, hours=12))
    # four quarters convert: running, stopped, running again, concluded
    quarters = [customers[i::4] for i in range(4)]
    for i, hours in enumerate((12, 36, 54, 66)):
        make_goal_events(quarters[i], name="Order Completed", at=t0 + timedelta(hours=hours), prefix=f"q{i}")
    make_goal_events(quarters[1], name="Order Completed", at=t0 + timedelta(hours=50), prefix="later")
    experiment = Experiment.objects.get(pk=experiment.pk)

    counted = {c.pk for c in quarters[0] + quarters[1] + quarters[2]}  # quarter 1 by its later event
    groups = {a.customer_id: a.group for a in Assignment.objects.select_related("arm")}
    expected: dict[str, list[int]] = {}
    for customer_id, group in groups.items():
        cell = expected.setdefault(group, [0, 0])
        cell[0] += 1
        cell[1] += customer_id in counted
    assert group_counts(experiment=experiment) == {g: tuple(c) for g, c in expected.items()}
    assert {e.customer_id for e in exposures_list(experiment=experiment) if e.converted_at} == counted
    assert sum(c.conversions for c in experiment_attribution(experiment=experiment)) == len(counted)
    assert {c.message for c in experiment_attribution(experiment=experiment) if c.group == "holdout"} == {NO_MESSAGE}

    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    html = client.get(reverse("admin:experiments_experiment_report", args=[experiment.pk])).content.decode()
    assert "Stopped from" in html and "conversions in that time are not counted" in html
    assert "Concluded at" in html and "conversions after it are not counted" in html
