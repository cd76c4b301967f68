"""The scheduled audit: orphaned paths, stale personalization, step latency/errors, channel errors."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
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


def test_step_latency_and_channel_health_are_the_same_on_every_database(live_workflow):
    """The database counts and computes the percentile (PostgreSQL) as Python does (elsewhere):
    20 executions taking 10, 20 .. 200 ms have a mean of 105 ms and a 95th percentile of 190.5 ms
    (between the 19th and 20th); an unfinished one counts as an execution without a latency; waits
    have no latency; what started before the window is not read; a channel written as something
    other than text (false, 0, null) is "?", as a missing one."""
    from journeys.models import Customer

    version = live_workflow.live_version
    now = timezone.now()
    customer = Customer.objects.create(external_id="lat")

    def execution(i, key, kind, *, ms=None, started=None, **fields):
        run = JourneyRun.objects.create(workflow=live_workflow, version=version, customer=customer,
                                        trigger_key=f"{key}{i}", status="completed")
        started = started or now - timedelta(hours=1)
        StepExecution.objects.create(run=run, step_key=key, step_kind=kind, started_at=started,
                                     finished_at=None if ms is None else started + timedelta(milliseconds=ms),
                                     **fields)

    for i in range(20):
        execution(i, "work", "update_profile", ms=10 * (i + 1), outcome="error" if i < 3 else "next")
    execution(20, "work", "update_profile")  # still running
    execution(21, "work", "update_profile", ms=5000, started=now - timedelta(days=9))  # before the window
    execution(22, "pause", "delay", ms=86_400_000)
    for i, detail in enumerate([{"channel": "sms", "status": "suppressed"}, {"channel": "sms", "status": "failed"},
                                {"channel": "sms"}, {"status": "queued"}, {"channel": "", "status": "failed"},
                                {"channel": False}, {"channel": 0, "status": "failed"}, {"channel": None}]):
        execution(30 + i, "mail", "send_message", ms=2, outcome="next", detail=detail)

    findings = audit_run(days=7, now=now).findings

    steps = {s["step"]: s for s in findings["step_health"]}
    assert steps["work"] == {"workflow": "Signup", "step": "work", "kind": "update_profile", "executions": 21,
                             "errors": 3, "error_rate": round(3 / 21, 4), "latency_ms_avg": 105.0,
                             "latency_ms_p95": 190.5}
    assert steps["pause"]["executions"] == 1 and steps["pause"]["latency_ms_avg"] is None
    assert findings["channel_health"] == [
        {"channel": "?", "executions": 5, "errors": 2, "suppressed": 0, "error_rate": 0.4},
        {"channel": "sms", "executions": 3, "errors": 1, "suppressed": 1, "error_rate": 0.3333},
    ]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="BRIN indexes are PostgreSQL's")
def test_the_audit_reads_its_window_through_an_index_not_the_whole_history():
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plans = []
        for sql in ("SELECT count(*) FROM journeys_stepexecution WHERE started_at >= now() - interval '14 days'",
                    "SELECT count(*) FROM journeys_journeyrun WHERE created_at >= now() - interval '28 days'"):
            cursor.execute(f"EXPLAIN {sql}")
            plans.append(" ".join(row[0] for row in cursor.fetchall()))
    # runs: through their time index, or the (version, created_at) one retention added; never a scan
    assert "step_execution_started_brin" in plans[0], plans
    assert ("run_created_brin" in plans[1] or "run_version_created_idx" in plans[1]) and "Seq Scan" not in plans[1], plans
