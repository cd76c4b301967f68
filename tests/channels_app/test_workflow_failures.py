"""A workflow whose messages fail shows it: on the ops dashboard's row of the workflow (failures of
the last minutes and hour, by reason, those that never rendered included), on the workflow's graph
(the step in error) and on its runs (the visit's error), not only in the global counter."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.selectors import workflow_messages
from journeys.models import StepExecution, Workflow
from tests.channels_app.conftest import orders

pytestmark = pytest.mark.django_db


def test_messages_that_failed_to_render_count_as_the_workflows_failures(
        order_hook, api, vendor, admin_client, django_capture_on_commit_callbacks):
    # given a workflow whose template fails for two orders of three (no total)
    orders(api, django_capture_on_commit_callbacks, {"ref": "A", "total": 5}, {"ref": "B"}, {"ref": "C"})
    assert Delivery.objects.filter(status="failed", reason="template_error").count() == 2
    workflow = Workflow.objects.get(name="order confirm")

    # when the on-call looks at the dashboard
    feed = admin_client.get(reverse("console:dashboard_data")).json()

    # then the workflow's row counts them, by reason, and stands out with a link to them
    messages = feed["metrics"]["workflows"]["order confirm"]["messages"]
    assert (messages["failed_recent"], messages["failed_hour"]) == (2, 2)
    assert messages["failed_by"] == [{"status": "failed", "reason": "template_error",
                                      "label": "The template could not be rendered", "n": 2}]
    assert f'<tr data-workflow="{workflow.pk}" class="workflow-failing">' in feed["html"]
    assert f"?workflow={workflow.pk}&amp;status__in=failed,bounced" in feed["html"]
    assert "2 failed in the last hour (The template could not be rendered: 2)" in feed["html"]

    # and the runs' visits of the step are in error (the runs go on: completed, but not clean)
    errors = list(StepExecution.objects.filter(step_key="hook").exclude(error="").values_list("error", flat=True))
    assert len(errors) == 2 and all("not sent: The template could not be rendered" in e for e in errors)

    # and the workflow's graph shows the step in error
    page = admin_client.get(reverse("console:version_graph", args=[workflow.live_version_id])).content.decode()
    assert 'data-key="hook" data-entered="3" data-waiting="0" data-converted="0" data-errors="2"' in page
    assert "2 failed" in page


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans: PostgreSQL only")
def test_a_workflows_failures_are_read_from_the_failed_rows_index_not_the_history():
    from django.test.utils import CaptureQueriesContext

    # when the dashboard's read of the workflows' messages is planned with sequential scans priced out
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    with CaptureQueriesContext(connection) as queries:
        workflow_messages(workflow_ids=[1], now=timezone.now())
    failed, bounced = [q["sql"] for q in queries.captured_queries if "updated_at" in q["sql"]]
    plans = []
    for sql in (failed, bounced):
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {sql}")
            plans.append(" ".join(row[0] for row in cursor.fetchall()))

    # then each status is read from an index range (one query each: an OR of the two let the planner
    # filter a whole index instead): the failed rows from the partial index of failed rows or the
    # status range of delivery_due_idx (which the planner picks depends on the table's statistics),
    # the bounced ones from the status range
    assert "'failed'" in failed and "'bounced'" not in failed
    assert ("delivery_failed_idx" in plans[0] or "Index Cond: ((status)::text = 'failed'::text)" in plans[0]), plans[0]
    assert "Index Cond: ((status)::text = 'bounced'::text)" in plans[1], plans[1]
    assert "Seq Scan" not in " ".join(plans)
