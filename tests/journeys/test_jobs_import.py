"""Bulk imports as background jobs (journeys.services.jobs): what a file's rows become, which rows
are rejected with their row number and field, and that importing a file again stores nothing twice."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from journeys.models import Customer, Event, Identity, Job, Source
from journeys.services.jobs import job_start
from tests.console.conftest import demo, ops  # noqa: F401 - the demo data and its signed-in ops admin

pytestmark = pytest.mark.django_db


@pytest.fixture
def run_import(demo, django_capture_on_commit_callbacks):  # noqa: F811
    """Start an import as the demo's ops admin; the (inline) worker runs it at commit."""
    source = Source.objects.get(name="demo-web")

    def run(kind: str, text: str, name: str = "upload.csv") -> Job:
        with django_capture_on_commit_callbacks(execute=True):
            job = job_start(kind=kind, actor=User.objects.get(username="ops"), params={"source_id": source.pk},
                            input_name=name, input_text=text)
        job.refresh_from_db()
        assert job.status == "succeeded", job.error
        return job

    return run


def test_a_number_json_cannot_hold_rejects_its_row_and_the_rest_of_the_batch_is_stored(run_import):
    # given a JSON file of ten orders, then one with NaN and one with a number too large for a float
    rows = [{"userId": f"u-n{i}", "event": "Order Completed", "properties": {"total": i}} for i in range(10)]
    text = (json.dumps(rows)[:-1] + ', {"userId": "u-nan", "event": "Order Completed", "properties": {"total": NaN}}'
            ', {"userId": "u-inf", "event": "Order Completed", "properties": {"items": [1, 1e999]}}]')
    # when it is imported
    job = run_import("import_events", text, "orders.json")
    # then the two rows are rejected by row and field, and the ten others are stored
    assert job.result["rejected_rows"] == [
        {"row": 11, "field": "properties.total", "error": "not a finite number"},
        {"row": 12, "field": "properties.items[1]", "error": "not a finite number"},
    ]
    assert (job.result["imported"], job.result["failed_batches"]) == (10, [])
    assert Event.objects.filter(name="Order Completed", user_id__startswith="u-n").count() == 10
    assert not Event.objects.filter(user_id__in=["u-nan", "u-inf"]).exists()


def test_rows_no_database_stores_are_rejected_by_number_and_the_others_stored(run_import):
    # given JSON lines: a good row, then one with NUL, one with a lone surrogate, one nested 100,000 deep
    lines = ['{"userId": "imp-ok", "traits": {"plan": "pro"}}',
             '{"userId": "imp-nul", "traits": {"plan": "p\\u0000ro"}}',
             '{"userId": "imp-sur", "traits": {"plan": "p\\ud800ro"}}',
             '{"userId": "imp-deep", "traits": {"plan": ' + "[" * 100_000 + "]" * 100_000 + "}}"]
    # when they are imported as customers
    job = run_import("import_customers", "\n".join(lines), "people.jsonl")
    # then each bad row is rejected by its number (and field), and the good one is stored
    assert [(r["row"], r["field"]) for r in job.result["rejected_rows"]] == [(2, "traits.plan"), (3, "traits.plan"), (4, "row")]
    assert "NUL" in job.result["rejected_rows"][0]["error"] and "nested" in job.result["rejected_rows"][2]["error"]
    assert list(Customer.objects.filter(external_id__startswith="imp-").values_list("external_id", flat=True)) == ["imp-ok"]


def test_the_same_file_imported_again_by_a_new_job_stores_nothing_twice(ops, run_import):  # noqa: F811
    # given an events file with two identical rows (two orders of the same amount) and a customers file
    events = "user_id,event,total\nu-a,Order Completed,10\nu-b,Order Completed,20\nu-a,Order Completed,10\n"
    customers = "user_id,email,plan\nu-re1,re1@example.com,pro\nu-re2,re2@example.com,free\n"
    first = run_import("import_events", events), run_import("import_customers", customers)
    assert [job.result["imported"] for job in first] == [3, 2]
    # when both files are uploaded again in new jobs
    again = run_import("import_events", events), run_import("import_customers", customers)
    # then every row is found already there and nothing is stored twice
    assert [(job.result["imported"], job.result["duplicates"]) for job in again] == [(0, 3), (0, 2)]
    assert Event.objects.filter(name="Order Completed", customer__external_id="u-a").count() == 2
    assert Event.objects.filter(type="identify", user_id__in=["u-re1", "u-re2"]).count() == 2
    page = ops.get(reverse("admin:journeys_job_change", args=[again[0].pk])).content.decode()
    assert "<b>0</b> imported, <b>3</b> already there" in page


@pytest.mark.parametrize("id_column", ["userId", "anonymousId"])
def test_a_csv_with_segment_style_id_headers_keeps_its_other_columns_as_properties(run_import, id_column):
    # given a CSV whose id column is spelled as in Segment payloads
    text = f"{id_column},event,total,properties.coupon\nu-c,Order Completed,10,SPRING\n"
    # when it is imported
    job = run_import("import_events", text)
    # then the columns become properties, as with user_id
    assert (job.result["imported"], job.result["rejected"]) == (1, 0)
    event = Event.objects.get(name="Order Completed")
    assert event.properties == {"total": 10, "coupon": "SPRING"}
    assert (event.user_id or event.anonymous_id) == "u-c"


def test_digits_only_phone_numbers_and_ids_stay_text(run_import):
    # given a customers CSV with a phone number and an account id written as digits only
    text = "user_id,email,phone,account_id,orders\nu-ph,ph@example.com,4915112345678,0042,3\n"
    # when it is imported
    job = run_import("import_customers", text)
    # then the phone fills the profile and is an identity; numbers that are numbers stay numbers
    assert job.result["imported"] == 1
    customer = Customer.objects.get(external_id="u-ph")
    assert customer.phone == "4915112345678"
    assert Identity.objects.filter(customer=customer, kind="phone", value="4915112345678").exists()
    assert customer.traits["account_id"] == "0042" and customer.traits["orders"] == 3


def test_a_csv_cell_larger_than_the_csv_modules_limit_rejects_only_its_row(run_import):
    # given a CSV whose second row holds a 200,000-character note (the csv module's default limit is 131,072)
    text = ("user_id,event,note\nu-1,Order Completed,ok\n"
            f"u-2,Order Completed,{'x' * 200_000}\nu-3,Order Completed,ok\n")
    # when it is imported
    job = run_import("import_events", text)
    # then that row is rejected by its line number and the others are stored
    assert (job.result["imported"], job.result["rejected"]) == (2, 1)
    [rejected] = job.result["rejected_rows"]
    assert rejected["row"] == 3 and "the limit is" in rejected["error"]
    assert sorted(Event.objects.filter(name="Order Completed").values_list("user_id", flat=True)) == ["u-1", "u-3"]


def test_the_job_page_says_when_not_every_rejected_row_is_kept(ops, run_import):  # noqa: F811
    # given a file with 1,001 rows without a user id (the job keeps the first 1,000) and one good row
    job = run_import("import_events", "user_id,event\n" + ",Order Completed\n" * 1001 + "u-1,Order Completed\n")
    assert (job.result["imported"], job.result["rejected"], len(job.result["rejected_rows"])) == (1, 1001, 1000)
    # then its page says the list is cut rather than letting it pass for all of them
    page = ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert "Only the first 1000 of the 1001 rejected rows are kept" in page


def test_a_csv_naming_a_column_twice_is_refused_naming_the_column(ops, demo):  # noqa: F811
    from django.core.files.uploadedfile import SimpleUploadedFile

    from journeys.errors import JourneyError

    source = Source.objects.get(name="demo-web")
    text = "user_id,plan,plan\nu-dup,free,pro\n"
    # when ops upload it on the console, then the form refuses the file, naming the column
    upload = SimpleUploadedFile("people.csv", text.encode())
    response = ops.post(f"{reverse('admin:journeys_job_add')}?kind=import_customers",
                        {"file": upload, "source": source.pk})
    assert response.status_code == 200 and not Job.objects.exists()
    assert response.context["form"].errors["file"] == [
        "the CSV header names the column 'plan' twice (columns 2 and 3): rename or remove one"]
    # and the service refuses it however it is started (a space around the name changes nothing)
    with pytest.raises(JourneyError, match="'plan' twice") as refused:
        job_start(kind="import_customers", actor=User.objects.get(username="ops"), params={"source_id": source.pk},
                  input_name="p.csv", input_text="\ufeffuser_id, plan,plan \nu-dup,free,pro\n")
    assert refused.value.field == "file"
    assert not Customer.objects.filter(external_id="u-dup").exists()


def test_json_lines_rows_are_numbered_by_the_files_own_lines_blank_lines_included(run_import):
    # given JSON lines that start with two blank lines and have a blank line and a CRLF in between
    text = ('\n\n{"userId": "jl-1", "event": "Order Completed"}\r\n'
            '{"event": "Order Completed"}\n\n'
            '{"userId": "jl-3", "event": "Order Completed"}\n'
            '{"userId": "jl-4", "event": "Order Completed", "note": "a\u2028b"}\n'
            '{oops\n')
    # when they are imported
    job = run_import("import_events", text, "orders.jsonl")
    # then the bad rows carry the line numbers an editor shows
    assert [(r["row"], r["field"]) for r in job.result["rejected_rows"]] == [(4, "userId"), (8, "row")]
    assert job.result["imported"] == 3
