"""Business-unit editors watch the runs (and step executions) of the workflows their unit owns,
never another unit's: the scope is `services.governance.runs_visible_to / run_user_can_view`,
which the JourneyRun admin calls."""

from __future__ import annotations

import pytest
from django.urls import reverse

from journeys.engine.processor import events_process
from journeys.models import JourneyRun
from journeys.services.governance import run_user_can_view, runs_visible_to
from journeys.services.internal_events import event_record_internal
from tests.factories import CustomerFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs_one_each(live_workflow, support_workflow):
    made = {}
    for unit, workflow in (("retention", live_workflow), ("support", support_workflow)):
        customer = CustomerFactory(external_id=f"{unit}-customer", traits={"plan": "pro"})
        event = event_record_internal(customer=customer, name="Signed Up", message_id=f"signup:{unit}")
        events_process(event_ids=[event.pk])
        made[unit] = JourneyRun.objects.get(workflow=workflow, customer=customer)
        assert made[unit].executions.exists()  # the engine recorded its step executions
    return made


@pytest.mark.parametrize("role, sees", [
    ("ops", {"retention", "support"}), ("approver", {"retention", "support"}), ("analyst", {"retention", "support"}),
    ("editor", {"retention"}), ("other_editor", {"support"}), ("agent", set()), ("nobody", set()),
])
def test_the_scope_function_gives_each_role_its_runs(people, runs_one_each, role, sees):
    user = people[role]
    visible = set(runs_visible_to(user=user).values_list("pk", flat=True))
    # both workflows listen to "Signed Up": each unit's workflow ran for both customers
    expected = set(JourneyRun.objects.filter(workflow__business_unit__slug__in=sees).values_list("pk", flat=True))
    assert visible == expected and len(expected) == 2 * len(sees)
    assert run_user_can_view(user=user) == bool(sees)
    for unit, run in runs_one_each.items():
        assert run_user_can_view(user=user, run=run) == (unit in sees)


def test_the_workflow_filter_offers_the_workflows_of_visible_runs(client, people, runs_one_each):
    login(client, people["ops"])
    listing = client.get(reverse("admin:journeys_journeyrun_changelist"))
    offered = {title for spec in listing.context["cl"].filter_specs for _value, title in getattr(spec, "lookup_choices", [])}
    assert {run.workflow.name for run in runs_one_each.values()} <= offered


def test_the_workflow_filter_reads_the_workflows_not_every_run(client, people, runs_one_each):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def offered_to(role):
        login(client, people[role])
        with CaptureQueriesContext(connection) as queries:
            listing = client.get(reverse("admin:journeys_journeyrun_changelist"))
        # the choices come from the workflows, not from a DISTINCT over every run
        assert not [q["sql"] for q in queries.captured_queries
                    if "DISTINCT" in q["sql"] and "journeys_journeyrun" in q["sql"]]
        return listing, {title for spec in listing.context["cl"].filter_specs
                         for _value, title in getattr(spec, "lookup_choices", [])}

    _listing, offered = offered_to("ops")
    assert {run.workflow.name for run in runs_one_each.values()} <= offered
    listing, offered = offered_to("editor")  # an editor never learns another unit's workflow names
    assert runs_one_each["support"].workflow.name not in listing.content.decode()


def test_an_editor_lists_and_opens_their_units_runs_with_step_executions(client, people, runs_one_each):
    login(client, people["editor"])
    listing = client.get(reverse("admin:journeys_journeyrun_changelist"))
    assert listing.status_code == 200
    listed = {r.pk for r in listing.context["cl"].result_list}
    assert listed == set(JourneyRun.objects.filter(workflow__business_unit__slug="retention").values_list("pk", flat=True))
    assert runs_one_each["retention"].pk in listed and runs_one_each["support"].pk not in listed
    # the workflow filter offers only the workflows of runs they may see: other units' names never show
    assert runs_one_each["support"].workflow.name.encode() not in listing.content

    own = runs_one_each["retention"]
    page = client.get(reverse("admin:journeys_journeyrun_change", args=[own.pk]))
    assert page.status_code == 200
    step_keys = set(own.executions.values_list("step_key", flat=True))
    assert step_keys and all(key.encode() in page.content for key in step_keys)
    assert b'name="_save"' not in page.content  # watching, not changing


def test_an_editor_cannot_open_another_units_run_by_url(client, people, runs_one_each):
    login(client, people["editor"])
    foreign = runs_one_each["support"]
    for name in ("admin:journeys_journeyrun_change", "admin:journeys_journeyrun_history"):
        response = client.get(reverse(name, args=[foreign.pk]))
        assert response.status_code in (302, 403, 404)
        assert foreign.customer.external_id.encode() not in response.content


def test_people_without_a_workflow_scope_see_no_runs(client, people, runs_one_each):
    for role in ("agent", "nobody"):
        login(client, people[role])
        assert client.get(reverse("admin:journeys_journeyrun_changelist")).status_code == 403
        response = client.get(reverse("admin:journeys_journeyrun_change", args=[runs_one_each["retention"].pk]))
        assert response.status_code in (302, 403)
