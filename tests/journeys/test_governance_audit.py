"""The scheduled audit: orphaned paths, stale personalization, step latency/errors, channel errors."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from journeys.models import AuditReport, JourneyRun, StepExecution, WorkflowVersion
from journeys.services.governance import audit_run
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(live_workflow):
    """Runs of the Signup workflow: 20 two weeks ago (half converted), 20 this week (one converted);
    only the 'no' branch ('std') was reached; one failing step execution; two send_message executions."""
    from journeys.models import Customer

    version = live_workflow.live_version
    now = timezone.now()
    WorkflowVersion.objects.filter(pk=version.pk).update(published_at=now - timedelta(days=60))
    for i in range(40):
        old = i < 20
        created = now - timedelta(days=10 if old else 2)
        customer = Customer.objects.create(external_id=f"a{i}", traits={"plan": "free"})
        run = JourneyRun.objects.create(workflow=live_workflow, version=version, customer=customer,
                                        trigger_key=f"t{i}", status="completed",
                                        converted_at=created if (old and i % 2) or i == 39 else None)
        JourneyRun.objects.filter(pk=run.pk).update(created_at=created)
        StepExecution.objects.create(run=run, step_key="check", step_kind="condition", outcome="no",
                                     started_at=created, finished_at=created + timedelta(milliseconds=5 + i))
        StepExecution.objects.create(run=run, step_key="std", step_kind="update_profile", outcome="next",
                                     started_at=created, finished_at=created + timedelta(milliseconds=20),
                                     error="boom" if i == 30 else "")
        if i in (35, 36):
            StepExecution.objects.create(run=run, step_key="mail", step_kind="send_message", outcome="next",
                                         detail={"channel": "email", "status": "failed" if i == 35 else "queued"},
                                         started_at=created, finished_at=created)
    return live_workflow


def test_audit_reports_each_finding(history):
    report = audit_run(days=7)
    findings = report.findings

    assert [(f["workflow"], f["step"]) for f in findings["orphaned_paths"]] == [("Signup", "vip")]
    stale = findings["stale_personalization"]
    assert {f["step"] for f in stale} == {"check"}  # the rule step, unchanged for 60 days
    assert stale[0]["conversion_before"] == 0.5 and stale[0]["conversion_now"] == 0.05
    steps = {(s["step"]): s for s in findings["step_health"]}
    assert steps["std"]["executions"] == 20 and steps["std"]["errors"] == 1 and steps["std"]["error_rate"] == 0.05
    assert steps["check"]["latency_ms_p95"] is not None and steps["check"]["latency_ms_avg"] > 5
    assert findings["channel_health"] == [
        {"channel": "email", "executions": 2, "errors": 1, "suppressed": 0, "error_rate": 0.5}]


def test_no_stale_finding_when_conversion_holds(live_workflow):
    assert audit_run(days=7).findings["stale_personalization"] == []


def test_audit_command_and_daily_schedule(history):
    from django_q.models import Schedule

    out = StringIO()
    call_command("run_audit", "--days", "7", stdout=out)
    assert "orphaned_paths: 1" in out.getvalue()
    assert AuditReport.objects.get().trigger == "command"
    schedule = Schedule.objects.get(name="journeys.audit")
    assert schedule.func == "journeys.services.governance.audit_scheduled" and schedule.schedule_type == "D"


def test_dashboard_shows_the_latest_audit(client, people, history):
    audit_run(days=7)
    login(client, people["analyst"])
    page = client.get(reverse("admin:journeys_ops_dashboard"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "Orphaned paths" in body and "<td>vip</td>" in body
    assert "<td>email</td>" in body
    report = AuditReport.objects.get()
    assert client.get(reverse("admin:journeys_auditreport_change", args=[report.pk])).status_code == 200


def test_setup_roles_command(people):
    from django.contrib.auth import get_user_model

    out = StringIO()
    user = get_user_model().objects.create_user("newbie", password="pw", is_staff=True)
    call_command("setup_roles", "--editor", "newbie", "support", stdout=out)
    assert "Approvers:" in out.getvalue() and "newbie edits the workflows of support" in out.getvalue()
    assert user.has_perm("journeys.edit_unit_workflows", __import__("journeys.models", fromlist=["BusinessUnit"]).BusinessUnit.objects.get(slug="support"))
