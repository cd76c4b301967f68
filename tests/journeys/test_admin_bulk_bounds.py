"""Bulk admin actions and change pages stay bounded on big tables (QA pages #1, #2, #8).

"Select all" over a big list used to run an action over every row inside the web request:
the worker was killed at the timeout with part of the work done and nobody told. Each
action refuses a selection above its limit before doing anything, saying how many and what
to do instead. Read-only logs cannot be deleted by anyone. Change pages render the newest
rows of a long inline only, with the total, in a bounded number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from journeys.admin.runs import JourneyRunAdmin, StepExecutionInline
from journeys.choices import RunStatus
from journeys.models import JourneyRun, StepExecution
from tests.factories import CustomerFactory, UserFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import login

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:journeys_journeyrun_changelist")


def failed_runs(workflow, count: int) -> list[JourneyRun]:
    version = workflow.live_version
    return JourneyRun.objects.bulk_create(
        JourneyRun(workflow=workflow, version=version, customer=CustomerFactory(), trigger_key=f"t{i}",
                   status=RunStatus.FAILED, current_step="check", visits={"check": 1}, error="boom",
                   finished_at=timezone.now())
        for i in range(count))


def select_all(client, url, action, one_pk, **extra):
    return client.post(url, {"action": action, "select_across": "1", "index": "0",
                             "_selected_action": [one_pk], **extra}, follow=True)


def offered(page) -> set[str]:
    form = page.context["action_form"]  # None: the list offers no action at all
    return {name for name, _ in form.fields["action"].choices if name} if form is not None else set()


def said(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --------------------------------------------------------------------------- 1. retry failed runs


@pytest.mark.parametrize("count", [3, 2])
def test_retrying_failed_runs_retries_all_or_none_and_says_so(people, live_workflow, monkeypatch, count):
    # given `count` failed runs and an action that takes 2 at a time
    monkeypatch.setattr(JourneyRunAdmin, "retry_limit", 2)
    runs = failed_runs(live_workflow, count)
    # when ops select all and retry
    response = select_all(login(Client(), people["ops"]), RUNS, "retry_failed", runs[0].pk)
    assert response.status_code == 200
    visits = sorted(run.visits["check"] for run in JourneyRun.objects.all())
    if count > 2:  # then none was retried, and the page says how many and what to do instead
        assert said(response) == ["Nothing done: 3 journey runs are selected and this action takes at most 2 at "
                                  "a time. " + JourneyRunAdmin.retry_instead]
        assert JourneyRun.objects.filter(status=RunStatus.FAILED).count() == 3 and visits == [1, 1, 1]
    else:  # then every one was, with one message saying so
        assert said(response) == ["2 failed run(s) retried; now 2 completed."]
        assert not JourneyRun.objects.filter(status=RunStatus.FAILED).exists() and visits == [2, 2]


# --------------------------------------------------------------------------- 2. delete selected


def test_deleting_more_runs_than_the_confirmation_page_can_list_is_refused(people, live_workflow, monkeypatch):
    monkeypatch.setattr(JourneyRunAdmin, "delete_selected_limit", 2)
    runs = failed_runs(live_workflow, 3)
    response = select_all(login(Client(), people["ops"]), RUNS, "delete_selected", runs[0].pk)
    assert response.status_code == 200
    assert response.templates[0].name == "admin/change_list.html"  # not the confirmation page
    assert said(response)[0].startswith("Nothing done: 3 journey runs are selected and this action takes at most "
                                        "2 at a time. Filter the list further and delete in parts; finished runs")
    # confirming straight away is refused the same way: nothing is deleted
    select_all(login(Client(), people["ops"]), RUNS, "delete_selected", runs[0].pk, post="yes")
    assert JourneyRun.objects.count() == 3


def test_deleting_runs_within_the_limit_still_works(people, live_workflow, monkeypatch):
    monkeypatch.setattr(JourneyRunAdmin, "delete_selected_limit", 2)
    runs = failed_runs(live_workflow, 2)
    ops = login(Client(), people["ops"])
    confirm = select_all(ops, RUNS, "delete_selected", runs[0].pk)
    assert "Are you sure" in confirm.text
    select_all(ops, RUNS, "delete_selected", runs[0].pk, post="yes")
    assert JourneyRun.objects.count() == 0


def a_delivery():
    from channels_app.models import Delivery
    from tests.channels_app.factories import ChannelFactory

    return Delivery.objects.create(customer=CustomerFactory(), channel=ChannelFactory(), to="a@example.com",
                                   idempotency_key="k1")


@pytest.mark.parametrize("role", ["ops", "superuser"])
@pytest.mark.parametrize("model, make", [("channels_app.delivery", a_delivery), ("journeys.customer", CustomerFactory)])
def test_no_one_deletes_the_send_log_or_a_customer_in_the_admin(people, role, model, make):
    """Deliveries are a log; a customer leaves by erasure (docs/PRIVACY.md), which a delete would skip."""
    user = people["ops"] if role == "ops" else UserFactory(username="root", is_staff=True, is_superuser=True)
    row = make()
    client = login(Client(), user)
    changelist = reverse(f"admin:{model.replace('.', '_')}_changelist")
    assert "delete_selected" not in offered(client.get(changelist))
    select_all(client, changelist, "delete_selected", row.pk, post="yes")
    assert client.get(reverse(f"admin:{model.replace('.', '_')}_delete", args=[row.pk])).status_code == 403
    assert type(row).objects.filter(pk=row.pk).exists()


# --------------------------------------------------------------------------- 8. long inlines


def executions(run, count: int) -> None:
    start = timezone.now() - timedelta(hours=1)
    StepExecution.objects.bulk_create(
        StepExecution(run=run, step_key="check", step_kind="condition", visit=i + 1, outcome=f"out-{i + 1}",
                      started_at=start + timedelta(seconds=i))
        for i in range(count))


def test_a_runs_page_shows_its_newest_step_executions_and_how_many_there_are(people, live_workflow,
                                                                           monkeypatch,
                                                                           django_assert_max_num_queries):
    monkeypatch.setattr(StepExecutionInline, "shown", 5)
    run = failed_runs(live_workflow, 1)[0]
    executions(run, 12)
    ops = login(Client(), people["ops"])
    with django_assert_max_num_queries(40):
        page = ops.get(reverse("admin:journeys_journeyrun_change", args=[run.pk]))
    assert page.status_code == 200
    assert "out-12" in page.text and "out-8" in page.text and "out-7" not in page.text and "out-1<" not in page.text
    assert "Only the newest 5 of 12 are shown" in page.text
