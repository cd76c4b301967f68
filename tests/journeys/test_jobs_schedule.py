"""The hourly q2 schedule that drops the personal data of old data-subject exports."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task

from journeys.models import Job
from journeys.models.jobs import JobKind, JobStatus

pytestmark = pytest.mark.django_db


def _export(finished_ago: timedelta) -> Job:
    return Job.objects.create(
        kind=JobKind.EXPORT, status=JobStatus.SUCCEEDED, finished_at=timezone.now() - finished_ago,
        result={"customer": 7, "external_id": "ada", "sections": {"events": 3},  # what an export job returns
                "export": {"customer": {"email": "ada@example.com"}}},
    )


def test_scheduled_purge_drops_day_old_exports_and_keeps_fresh_ones():
    schedule = Schedule.objects.get(name="journeys.jobs_purge_exports")
    assert schedule.schedule_type == Schedule.HOURLY and schedule.repeats == -1
    old, fresh = _export(timedelta(days=2)), _export(timedelta(hours=1))

    async_task(schedule.func)  # what the scheduler enqueues (tests run q2 synchronously)

    old.refresh_from_db()
    fresh.refresh_from_db()
    assert "export" not in old.result and old.result["expired"] is True
    assert old.result == {"customer": 7, "external_id": "ada", "sections": {"events": 3},  # the summary stays
                          "expired": True}
    assert fresh.result["export"]["customer"]["email"] == "ada@example.com"
