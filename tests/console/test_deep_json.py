"""Every page that reads stored JSON survives JSON nested ~900 levels that was stored before
ingestion capped nesting (issue #15 item 2, reading side): the rows are inserted directly."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from journeys.models import Customer, Event, JourneyRun, WorkflowVersion
from journeys.models.fields import TOO_DEEP, json_text_limit_depth

pytestmark = pytest.mark.django_db

DEEP = '{"a": ' * 900 + '"bottom"' + "}" * 900
ODD = '{"x": [' * 450 + "1" + "]}" * 450


def store(table: str, column: str, pk: int, text: str) -> None:
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = %s{cast} WHERE id = %s", [text, pk])


@pytest.fixture
def deep(traffic, admin_client):
    """Alan (with a case from the support workflow), his events and runs, all holding deep JSON."""
    alan = Customer.objects.get(external_id="u-alan")
    store("journeys_customer", "traits", alan.pk, '{"first_name": "Alan", "ltv": 1500, "junk": ' + DEEP + "}")
    for event in Event.objects.filter(customer=alan):
        for column in ("properties", "context", "traits", "integrations"):
            store("journeys_event", column, event.pk, '{"text": "help", "deep": ' + ODD + "}")
    for run in JourneyRun.objects.filter(customer=alan):
        store("journeys_journeyrun", "variables", run.pk, DEEP)
        for execution in run.step_executions.all() if hasattr(run, "step_executions") else []:
            store("journeys_stepexecution", "detail", execution.pk, DEEP)
    return alan


def test_reading_deep_json_gives_bounded_data():
    assert json_text_limit_depth('{"a": 1}') == '{"a": 1}'
    trimmed = json_text_limit_depth(DEEP)
    import json

    value = json.loads(trimmed)
    for _ in range(64):
        value = value["a"]
    assert value == TOO_DEEP


def test_every_page_that_reads_the_stored_json_answers(deep, admin_client):
    alan = deep
    event = Event.objects.filter(customer=alan).first()
    run = JourneyRun.objects.filter(customer=alan).first()
    support = WorkflowVersion.objects.get(workflow__name="High-value support query", state="live")
    from agents.models import Case

    case = Case.objects.filter(customer=alan).first()
    pages = [
        reverse("admin:journeys_customer_change", args=[alan.pk]),
        reverse("admin:journeys_customer_changelist"),
        reverse("admin:journeys_event_change", args=[event.pk]),
        reverse("admin:journeys_event_changelist"),
        reverse("admin:journeys_journeyrun_change", args=[run.pk]),
        reverse("admin:journeys_workflowversion_change", args=[support.pk]),
        reverse("console:graph", args=[support.pk]) if _has("console:graph") else None,
        "/console/",
        f"/agents/cases/{case.pk}/" if case else None,
    ]
    for url in filter(None, pages):
        assert admin_client.get(url).status_code == 200, url
    dry_run = admin_client.post(reverse("admin:journeys_workflowversion_dry_run", args=[support.pk]),
                                {"customer": "u-alan", "event": '{"event": "Support Message", "properties": '
                                                                '{"text": "This is awful, I was charged twice"}}'})
    assert dry_run.status_code == 200


def _has(name: str) -> bool:
    from django.urls import NoReverseMatch

    try:
        reverse(name, args=[1])
    except NoReverseMatch:
        return False
    return True
