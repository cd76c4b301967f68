"""Long operations as background jobs: started from the admin, run by django-q2 (inline in
tests), with progress and a result page; who may run which job."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from journeys.errors import PermissionDenied
from journeys.models import Customer, Event, EventDefinition, Job, Source, Workflow
from journeys.services.catalog import catalog_reset
from journeys.services.jobs import job_start, run_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def source(demo):
    return Source.objects.get(name="demo-web")


def start(client, kind, data, capture, **query):
    url = f"{reverse('admin:journeys_job_add')}?kind={kind}" + "".join(f"&{k}={v}" for k, v in query.items())
    with capture(execute=True):
        response = client.post(url, data)
    return response


def test_ops_imports_customers_from_csv_bad_rows_are_rejected_with_their_row_number(
        ops, source, django_capture_on_commit_callbacks):
    # given a CSV with a header, three good rows and two bad ones
    csv_text = ("user_id,email,plan,orders\n"
                "u-csv1,csv1@example.com,pro,3\n"
                ",nobody@example.com,free,1\n"
                "u-csv2,csv2@example.com,free,0\n"
                f"{'x' * 300},long@example.com,free,0\n"
                "u-csv3,,business,12\n")
    # when ops uploads it
    response = start(ops, "import_customers", {"file": SimpleUploadedFile("people.csv", csv_text.encode()),
                                               "source": source.pk}, django_capture_on_commit_callbacks)
    # then the job ran and its page reports what was imported and what was rejected, by row
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:journeys_job_change", args=[job.pk])
    assert job.status == "succeeded" and job.progress_done == job.progress_total == 5 + 3
    assert job.result["imported"] == 3 and job.result["rejected"] == 2
    assert job.result["rejected_rows"] == [
        {"row": 3, "field": "user_id", "error": "is required"},
        {"row": 5, "field": "userId", "error": "is longer than 255 characters"},
    ]
    csv1 = Customer.objects.get(external_id="u-csv1")
    assert csv1.email == "csv1@example.com" and csv1.traits["plan"] == "pro" and csv1.traits["orders"] == 3
    assert Customer.objects.get(external_id="u-csv3").traits["orders"] == 12
    page = ops.get(response["Location"]).content.decode()
    assert "<b>3</b> imported" in page and "<b>2</b> rejected" in page and "is longer than 255" in page
    rejected = ops.get(reverse("console:job_download", args=[job.pk])).content.decode()
    assert rejected.splitlines()[:2] == ["row,field,error", "3,user_id,is required"]


def test_a_csv_row_with_more_cells_than_the_header_is_rejected_not_cut(ops, source,
                                                                       django_capture_on_commit_callbacks):
    csv_text = "user_id,email,plan\nu-ok,ok@example.com,pro\nu-extra,extra@example.com,pro,Berlin, Mitte\n"
    start(ops, "import_customers", {"file": SimpleUploadedFile("people.csv", csv_text.encode()),
                                    "source": source.pk}, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert (job.result["imported"], job.result["rejected"]) == (1, 1)
    [rejected] = job.result["rejected_rows"]
    assert rejected["row"] == 3 and "5 cells, but the header names 3 columns" in rejected["error"]
    assert not Customer.objects.filter(external_id="u-extra").exists()


def test_importing_the_same_file_twice_stores_nothing_twice(ops, source, django_capture_on_commit_callbacks):
    data = b'[{"user_id": "u-j1", "plan": "pro"}, {"user_id": "u-j2"}, "not an object"]'
    start(ops, "import_customers", {"file": SimpleUploadedFile("p.json", data), "source": source.pk},
          django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert job.result["imported"] == 2
    assert job.result["rejected_rows"] == [{"row": 3, "field": "row", "error": "must be an object"}]
    # a retried task (at-least-once) finds the job finished; run again by hand, rows are duplicates
    assert run_job(job.pk) == "succeeded"
    Job.objects.filter(pk=job.pk).update(status="queued")
    with django_capture_on_commit_callbacks(execute=True):
        run_job(job.pk)
    job.refresh_from_db()
    assert job.result["imported"] == 0 and job.result["duplicates"] == 2
    assert Customer.objects.filter(external_id__in=["u-j1", "u-j2"]).count() == 2


def test_events_import_applies_the_sources_catalog_policy_per_row(ops, source, django_capture_on_commit_callbacks):
    source.schema_policy = "reject"
    source.save()
    EventDefinition.objects.create(name="Order Completed", schema={
        "type": "object", "properties": {"total": {"type": "number"}}})
    catalog_reset()
    csv_text = ("user_id,event,timestamp,properties.total,coupon\n"
                "u-ada,Order Completed,2026-11-01T10:00:00Z,120,SPRING\n"
                "u-ada,Order Completed,yesterday,5,\n"
                "u-new-buyer,Order Completed,,abc,\n"
                ",Order Completed,,3,\n"
                "u-grace,Order Completed,,80,\n")
    start(ops, "import_events", {"file": SimpleUploadedFile("orders.csv", csv_text.encode()), "source": source.pk},
          django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert job.status == "succeeded", job.error
    assert (job.result["imported"], job.result["rejected"]) == (2, 3)
    rows = {r["row"]: r for r in job.result["rejected_rows"]}
    assert rows[3]["field"] == "timestamp" and "cannot parse 'yesterday'" in rows[3]["error"]
    assert rows[4]["field"] == "properties.total" and "is not of type 'number'" in rows[4]["error"]
    assert rows[5]["field"] == "userId"
    stored = Event.objects.filter(source=source, name="Order Completed").order_by("id")
    assert [e.properties for e in stored] == [{"total": 120, "coupon": "SPRING"}, {"total": 80}]
    assert stored[0].timestamp.isoformat() == "2026-11-01T10:00:00+00:00"


def test_an_unreadable_file_is_refused_or_fails_the_job_with_a_clear_error(ops, source,
                                                                          django_capture_on_commit_callbacks):
    # the admin reads the file before starting a job: broken JSON is refused at once, naming the file
    response = start(ops, "import_events", {"file": SimpleUploadedFile("x.json", b"[{oops"), "source": source.pk},
                     django_capture_on_commit_callbacks)
    assert response.status_code == 200 and not Job.objects.exists()
    assert response.context["form"].errors["file"][0].startswith("x.json is not valid JSON")
    # a job started otherwise with such a file fails, and its page says why
    from django.contrib.auth import get_user_model

    with django_capture_on_commit_callbacks(execute=True):
        job_start(kind="import_events", actor=get_user_model().objects.get(username="ops"),
                  params={"source_id": source.pk}, input_name="x.json", input_text="[{oops")
    job = Job.objects.get()
    assert job.status == "failed" and job.error.startswith("file: not valid JSON")
    page = ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert 'id="job-error"' in page and "not valid JSON" in page
    # a file PostgreSQL could not store (a NUL character) is refused, naming the line
    nul = SimpleUploadedFile("n.csv", b"user_id,event\nu-1,A\nu-2,B\x00\n")
    response = ops.post(f"{reverse('admin:journeys_job_add')}?kind=import_events", {"file": nul, "source": source.pk})
    assert response.context["form"].errors["file"] == ["line 3 contains a NUL character (\\u0000); remove it and upload again"]
    # a form without the file or the source names the field
    response = ops.post(f"{reverse('admin:journeys_job_add')}?kind=import_events", {})
    assert set(response.context["form"].errors) == {"file", "source"}


def test_ops_exports_everything_held_about_a_customer(ops, django_capture_on_commit_callbacks):
    alan = Customer.objects.get(external_id="u-alan")
    response = start(ops, "export", {"customer": "alan@example.com"}, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert response.status_code == 302 and job.status == "succeeded"
    assert job.result["customer"] == alan.pk and "identities" in job.result["sections"]
    download = ops.get(reverse("console:job_download", args=[job.pk]))
    assert download["Content-Disposition"] == f'attachment; filename="job-{job.pk}-export.json"'
    data = json.loads(download.getvalue())  # streamed from the stored pieces
    assert data["format"] == "journey-console/data-subject-export@1" and data["customer"]["id"] == alan.pk
    # a day later the personal data is gone, the summary stays
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timedelta(hours=25))
    assert ops.get(reverse("console:job_download", args=[job.pk])).status_code == 404
    job.refresh_from_db()
    assert "export" not in job.result and job.result["expired"] and job.result["sections"]
    assert b'id="export-expired"' in ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content
    nobody = ops.post(f"{reverse('admin:journeys_job_add')}?kind=export", {"customer": "ghost"})
    assert "no customer with id or email 'ghost'" in nobody.context["form"].errors["customer"][0]


def test_job_list_page_and_progress_poll_never_read_an_exports_copy(ops, django_capture_on_commit_callbacks):
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given a finished export (its result holds everything about the customer)
    start(ops, "export", {"customer": "alan@example.com"}, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    whole_column = re.compile(r'(SELECT |, )"journeys_job"\."(result|input_text)"(,| FROM)')
    for url in (reverse("admin:journeys_job_changelist"), reverse("console:job_status", args=[job.pk]),
                reverse("admin:journeys_job_change", args=[job.pk])):
        # when ops list the jobs, poll its progress and open its page
        with CaptureQueriesContext(connection) as queries:
            response = ops.get(url)
        # then no query loads the result column (the page measures the copy in the database)
        assert response.status_code == 200
        assert [q["sql"] for q in queries.captured_queries if whole_column.search(q["sql"])] == []
    page = response.content.decode()
    assert "alan@example.com" not in page  # the copy is not on the page: its size and a download link are
    assert 'id="export-download"' in page and re.search(r"JSON, [0-9.]+\xa0(bytes|KB)\)", page)
    assert json.loads(ops.get(reverse("console:job_download", args=[job.pk])).getvalue())["customer"]["id"]


def test_an_editor_replays_a_version_of_their_unit_in_the_background(client, demo, send,
                                                                     django_capture_on_commit_callbacks):
    send(userId="u-ada", event="Checkout Started", properties={"total": 90})
    version = Workflow.objects.get(name="Cart abandonment").live_version
    client.login(username="editor", password="editor")
    response = start(client, "replay", {"version": version.pk, "days": 3}, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert response.status_code == 302 and job.status == "succeeded", job.error
    assert job.progress_done == job.progress_total >= 1
    assert job.result["events"] == 1 and job.result["entered"] == {"proposed": 1}
    assert job.result["reach"]["proposed"] == {"email": 1, "wait": 1, "valuable": 1, "sms": 1}
    page = client.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert 'id="dry-run-summary"' in page and "<td>u-ada</td><td>Checkout Started</td>" in page
    status = client.get(reverse("console:job_status", args=[job.pk])).json()
    assert status["status"] == "succeeded" and status["percent"] == 100 and status["finished"] is True


def test_who_may_run_which_job(client, demo, source):
    from django.contrib.auth import get_user_model

    users = {u.username: u for u in get_user_model().objects.all()}
    support = Workflow.objects.get(name="High-value support query").live_version
    cart = Workflow.objects.get(name="Cart abandonment").live_version
    # an editor replays only their unit's workflows, and runs no imports or exports
    with pytest.raises(PermissionDenied, match="may not replay versions of High-value support query"):
        job_start(kind="replay", actor=users["editor"], params={"version_id": support.pk})
    with pytest.raises(PermissionDenied, match="only ops admins"):
        job_start(kind="export", actor=users["editor"], params={"customer_id": Customer.objects.first().pk})
    # approvers replay anything; analysts and agents nothing
    assert job_start(kind="replay", actor=users["approver"], params={"version_id": support.pk}).pk
    for name in ("analyst", "agent"):
        with pytest.raises(PermissionDenied):
            job_start(kind="replay", actor=users[name], params={"version_id": cart.pk})
    # in the admin: the editor is offered the replay only, and sees only their own jobs
    client.login(username="editor", password="editor")
    page = client.get(reverse("admin:journeys_job_add")).content.decode()
    assert "?kind=replay" in page and "?kind=import_customers" not in page
    assert client.get(f"{reverse('admin:journeys_job_add')}?kind=import_customers").context.get("form") is None
    approvers_job = Job.objects.get()
    assert client.get(reverse("console:job_status", args=[approvers_job.pk])).status_code == 404
    assert client.get(reverse("admin:journeys_job_change", args=[approvers_job.pk])).status_code == 404
    # ops see every job; one no worker has picked up for a while says so
    client.login(username="ops", password="ops")
    assert client.get(reverse("console:job_status", args=[approvers_job.pk])).json()["status"] == "queued"
    Job.objects.filter(pk=approvers_job.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    assert "waiting for a worker" in client.get(reverse("console:job_status", args=[approvers_job.pk])).json()["message"]


def test_customer_360_offers_the_export_to_those_who_may_run_it(client, demo):
    alan = Customer.objects.get(external_id="u-alan")
    url = reverse("admin:journeys_customer_change", args=[alan.pk])
    client.login(username="ops", password="ops")
    assert f"{reverse('admin:journeys_job_add')}?kind=export&amp;customer=u-alan" in client.get(url).content.decode()
    client.login(username="admin", password="admin")
    assert b'id="export-job-link"' in client.get(url).content


def test_the_rejected_rows_csv_never_hands_a_spreadsheet_a_formula(ops, source, django_capture_on_commit_callbacks):
    """The rejected rows are for a spreadsheet and their errors quote the file's values: a cell that
    would start like a formula gets a leading quote (OWASP, CSV injection), whatever a validator writes."""
    start(ops, "import_customers", {"file": SimpleUploadedFile("p.json", b'[{"user_id": "u-ok"}, "=1+1"]'),
                                    "source": source.pk}, django_capture_on_commit_callbacks)
    job = Job.objects.get()
    assert job.result["rejected_rows"] == [{"row": 2, "field": "row", "error": "must be an object"}]
    # given errors that begin with a value of the file (as a validator may write them)
    job.result["rejected_rows"] += [{"row": 3, "field": "=HYPERLINK(\"http://x\",\"y\")", "error": "@SUM(A1)"},
                                    {"row": 4, "field": "plan", "error": "-2+3 is not a plan"}]
    job.save()

    rejected = ops.get(reverse("console:job_download", args=[job.pk])).content.decode()

    assert rejected.splitlines() == ["row,field,error", "2,row,must be an object",
                                     "3,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",'@SUM(A1)",
                                     "4,plan,'-2+3 is not a plan"]
