"""Metrics: time to first response, resolution time, escalation rate per workflow, reopen rate."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission

from agents.models import Case
from agents.selectors import case_metrics
from agents.services.cases import case_reopen, case_reply_send, case_resolve
from tests.agents.factories import AgentFactory, TeamFactory
from tests.agents.test_escalate_step import ANGRY, CALM, THRESHOLDS, publish, send
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_metrics_over_a_small_day_of_support(api, django_capture_on_commit_callbacks, email_channel):
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3}, capacity=5)
    publish(THRESHOLDS)
    for user, text in (("a", ANGRY), ("b", ANGRY), ("c", CALM), ("d", ANGRY)):
        with django_capture_on_commit_callbacks(execute=True):
            api.post("identify", {"userId": user, "traits": {"email": f"{user}@example.com"}})
        send(api, django_capture_on_commit_callbacks, user, text=text)
    first, second, third = Case.objects.order_by("pk")
    # Pretend the cases were opened earlier so the durations are known.
    for case, minutes in ((first, 60), (second, 30), (third, 10)):
        Case.objects.filter(pk=case.pk).update(created_at=case.created_at - timedelta(minutes=minutes))
    with django_capture_on_commit_callbacks(execute=True):
        case_reply_send(case=first, actor=agent.user, body="On it", idempotency_key="1")
        case_reply_send(case=second, actor=agent.user, body="On it", idempotency_key="2")
        case_resolve(case=first, actor=agent.user, code="fixed")
        case_resolve(case=second, actor=agent.user, code="fixed")
        case_reopen(case=second, actor=agent.user)

    mine = case_metrics(user=agent.user)
    assert mine["cases"] == 3 and mine["open"] == 2
    assert mine["first_response"]["count"] == 2 and 44 * 60 <= mine["first_response"]["mean_s"] <= 46 * 60
    assert mine["resolution"]["count"] == 1 and 59 * 60 <= mine["resolution"]["median_s"] <= 61 * 60
    assert mine["reopen_rate"] == 0.5
    assert mine["escalation_by_workflow"] == []  # workflow-wide numbers are for supervisors

    lead = UserFactory()
    lead.user_permissions.add(Permission.objects.get(codename="view_case"))
    overall = case_metrics(user=lead)
    assert overall["escalation_by_workflow"] == [{"workflow": "Support triage", "visits": 4, "escalated": 3, "rate": 0.75}]
