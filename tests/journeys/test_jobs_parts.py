"""Bulk imports run as a chain of bounded q2 tasks (parts), so none nears the queue's time limit
whatever the file's size, and jobs left `running` by a task that never came back are found by the
housekeeping schedule: an import goes on from where it stopped, other jobs fail saying why."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from journeys.models import Customer, Event, Job, Source
from journeys.tasks import events_housekeeping  # the q2 schedule's task
from journeys.services.jobs import job_start, run_job
from tests.console.conftest import demo, ops  # noqa: F401 - the demo data and its signed-in ops admin

pytestmark = pytest.mark.django_db

# 10 rows: row 4 has no user id, rows 6 and 9 are the same order twice (two orders, not a duplicate)
EVENTS = ("user_id,event,total\n" + "".join(f"u-p{i},Order Completed,{i}\n" for i in range(1, 4)) + ",Order Completed,4\n"
          "u-p5,Order Completed,5\nu-twice,Order Completed,7\nu-p7,Order Completed,7\nu-p8,Order Completed,8\n"
          "u-twice,Order Completed,7\nu-p10,Order Completed,10\n")


def start_import(text: str = EVENTS) -> Job:
    return job_start(kind="import_events", actor=User.objects.get(username="ops"),
                     params={"source_id": Source.objects.get(name="demo-web").pk}, input_name="orders.csv",
                     input_text=text)


def first_part_only(capture) -> Job:
    """Start an import and run its first part; the task queued for the next part is lost."""
    with capture(execute=False):
        job = start_import()
    with capture(execute=False):
        assert run_job(job.pk) == "running"
    job.refresh_from_db()
    return job


def test_a_file_is_imported_in_parts_of_the_configured_size_with_exact_counts(demo, settings,  # noqa: F811
                                                                             django_capture_on_commit_callbacks):
    # given parts of three rows
    settings.JOB_IMPORT_PART_ROWS = 3
    # when a ten-row file is imported (each part queues the next; the inline worker runs them)
    with django_capture_on_commit_callbacks(execute=True):
        job = start_import()
    # then four tasks did it, and the counts are those of one pass over the file
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["parts"] == 4
    assert (job.result["rows"], job.result["imported"], job.result["duplicates"], job.result["rejected"]) == (10, 9, 0, 1)
    assert job.result["rejected_rows"] == [{"row": 5, "field": "userId", "error": "userId or anonymousId is required"}]
    assert job.progress_done == job.progress_total == 10 + 9
    assert Event.objects.filter(name="Order Completed", user_id="u-twice").count() == 2
    # and the same file in one part (a new job) finds every row already stored: the ids match
    settings.JOB_IMPORT_PART_ROWS = 5000
    with django_capture_on_commit_callbacks(execute=True):
        again = start_import()
    again.refresh_from_db()
    assert (again.result["parts"], again.result["imported"], again.result["duplicates"]) == (1, 0, 9)


def test_an_import_whose_next_part_was_lost_is_resumed_by_the_housekeeping_sweep(demo, settings,  # noqa: F811
                                                                                django_capture_on_commit_callbacks):
    # given an import whose first part ran and whose next part's task was lost (worker died)
    settings.JOB_IMPORT_PART_ROWS = 4
    job = first_part_only(django_capture_on_commit_callbacks)
    assert job.status == "running" and job.result["next_row"] == 4
    # when housekeeping runs while the job has been quiet for less than the time limit plus retry
    assert events_housekeeping()["jobs_stalled"] == {"requeued": 0, "failed": 0}
    # and again once it has been quiet longer
    later = timezone.now() + timedelta(minutes=10)
    with django_capture_on_commit_callbacks(execute=True):
        assert events_housekeeping(now=later)["jobs_stalled"] == {"requeued": 1, "failed": 0}
    # then the import went on from row 5 and finished with exact counts
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert (job.result["imported"], job.result["duplicates"], job.result["rejected"]) == (9, 0, 1)
    assert Customer.objects.filter(external_id__startswith="u-p").count() == 7


def test_an_import_the_previous_release_left_half_done_counts_each_row_once(demo, settings,  # noqa: F811
                                                                           django_capture_on_commit_callbacks):
    # given the previous release's worker stored the file's first five rows (4 events, row 4
    # rejected), kept only its counts on the job (no next row) and died
    head = "".join(EVENTS.splitlines(keepends=True)[:6])
    with django_capture_on_commit_callbacks(execute=True):
        start_import(head)
    with django_capture_on_commit_callbacks(execute=False):
        job = start_import()
    Job.objects.filter(pk=job.pk).update(status="running", started_at=timezone.now(), result={
        "rows": 10, "imported": 4, "duplicates": 0, "rejected": 1, "partial": True})
    # when the new worker runs the task queued then (the old signature: the job id only)
    with django_capture_on_commit_callbacks(execute=True):
        assert run_job(job.pk) == "succeeded"
    # then the file was read once more from its first row, and the counts add up to its rows
    job.refresh_from_db()
    assert (job.result["rows"], job.result["imported"], job.result["duplicates"], job.result["rejected"]) == (
        10, 5, 4, 1)
    assert Event.objects.filter(name="Order Completed").count() == 9


def test_an_import_that_never_moves_again_fails_saying_how_many_rows_landed(demo, settings,  # noqa: F811
                                                                           django_capture_on_commit_callbacks):
    # given an import that stored its first part and whose next parts are lost every time
    settings.JOB_IMPORT_PART_ROWS = 3
    job = first_part_only(django_capture_on_commit_callbacks)
    now = timezone.now()
    for _ in range(3):
        now += timedelta(minutes=10)
        with django_capture_on_commit_callbacks(execute=False):
            assert events_housekeeping(now=now)["jobs_stalled"] == {"requeued": 1, "failed": 0}
    # when the sweep finds it stalled a fourth time
    now += timedelta(minutes=10)
    assert events_housekeeping(now=now)["jobs_stalled"] == {"requeued": 0, "failed": 1}
    # then the job failed with what happened and what landed
    job.refresh_from_db()
    assert job.status == "failed" and job.finished_at is not None
    assert "no progress for" in job.error and "timed out or died" in job.error
    assert "3 of 10 rows were processed: 3 imported" in job.error


def test_an_export_left_running_by_a_dead_worker_is_failed_by_the_sweep(demo, django_capture_on_commit_callbacks):  # noqa: F811
    # given an export whose worker took it and never came back
    with django_capture_on_commit_callbacks(execute=False):
        job = job_start(kind="export", actor=User.objects.get(username="ops"),
                        params={"customer_id": Customer.objects.first().pk})
    Job.objects.filter(pk=job.pk).update(status="running", started_at=timezone.now())
    # when housekeeping runs ten minutes later
    events_housekeeping(now=timezone.now() + timedelta(minutes=10))
    # then the job failed, saying why
    job.refresh_from_db()
    assert job.status == "failed" and "timed out" in job.error and "Start it again" in job.error
