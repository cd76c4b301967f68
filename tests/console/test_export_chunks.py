"""A data-subject export is written in pieces while it is produced and downloaded as a stream, so
neither the worker nor the web process holds the whole copy (55 MB of JSON took 662 MB in the
worker and 700 MB in gunicorn when it was built and served in one piece)."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from channels_app.services import customer_export
from journeys.models import Customer, Event, Job, JobChunk, Source
from journeys.services.jobs import job_start

pytestmark = pytest.mark.django_db

EVENTS = 6000


@pytest.fixture
def long_history(demo):
    """The demo's Alan with 6,000 events of about a kilobyte each (~7 MB of export)."""
    alan = Customer.objects.get(external_id="u-alan")
    source, now = Source.objects.get(name="demo-web"), timezone.now()
    Event.objects.bulk_create([
        Event(source=source, customer=alan, name="Page Viewed", type="track", timestamp=now, received_at=now,
              message_id=f"long-{n}", status="processed", properties={"n": n, "note": f"{n:05d}" + "x" * 1000})
        for n in range(EVENTS)], batch_size=1000)
    return alan


def test_an_export_is_written_in_pieces_and_streamed_back_as_the_same_json(ops, long_history, settings,
                                                                           django_capture_on_commit_callbacks):
    settings.JOB_EXPORT_CHUNK_CHARS = 64 * 1024
    # when ops export the customer (the worker runs it inline) while memory is traced
    tracemalloc.start()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            job = job_start(kind="export", actor=User.objects.get(username="ops"),
                            params={"customer_id": long_history.pk})
        _, worker_peak = tracemalloc.get_traced_memory()
        # and download it, as the browser does (once to warm up the web process: its first request
        # imports half of Django), reading the stream piece by piece
        body = ops.get(reverse("console:job_download", args=[job.pk])).getvalue()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        response = ops.get(reverse("console:job_download", args=[job.pk]))
        size = sum(len(piece) for piece in response.streaming_content)
        download_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # then the job keeps a summary, the copy is in pieces, and neither side held all of it at once
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert "export" not in job.result and job.result["sections"]["events"] >= EVENTS
    assert job.result["export_size"] == size > 6_000_000
    assert JobChunk.objects.filter(job=job).count() == job.result["export_chunks"] > 50
    assert worker_peak < size / 2, (worker_peak, size)
    assert download_peak < size / 10, (download_peak, size)
    # and the download is the JSON the whole export dumps to, as it was when served in one piece
    assert len(body) == size and body == json.dumps(customer_export(customer=long_history), indent=2, default=str).encode()
    # and deleting the job deletes its pieces
    Job.objects.filter(pk=job.pk).delete()
    assert not JobChunk.objects.exists()


def test_an_expired_export_loses_its_pieces(ops, demo, django_capture_on_commit_callbacks):  # noqa: F811
    from datetime import timedelta

    from journeys.services.jobs import jobs_purge_exports

    with django_capture_on_commit_callbacks(execute=True):
        job = job_start(kind="export", actor=User.objects.get(username="ops"),
                        params={"customer_id": Customer.objects.get(external_id="u-alan").pk})
    assert JobChunk.objects.filter(job=job).exists()
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(hours=25))
    assert jobs_purge_exports() == 1
    job.refresh_from_db()
    assert job.result["expired"] and "export_size" not in job.result and not JobChunk.objects.exists()
    assert ops.get(reverse("console:job_download", args=[job.pk])).status_code == 404
