"""Competitor exports as they come: semicolon- or tab-separated CSV, headers from another tool,
records whose quoted cells span lines, files of many parts (each part reads its own rows only)."""

from __future__ import annotations

import tracemalloc

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse

from journeys.models import Customer, Event, Job, Source
from journeys.services.jobs import job_start, run_job
from tests.console.conftest import demo, ops  # noqa: F401 - the demo data and its signed-in ops admin

pytestmark = pytest.mark.django_db


def start(kind: str, text: str, capture, *, execute: bool = True) -> Job:
    with capture(execute=execute):
        job = job_start(kind=kind, actor=User.objects.get(username="ops"),
                        params={"source_id": Source.objects.get(name="demo-web").pk}, input_name="export.csv",
                        input_text=text)
    job.refresh_from_db()
    return job


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_semicolon_or_tab_separated_customer_file_is_read_by_its_header(delimiter, demo,  # noqa: F811
                                                                          django_capture_on_commit_callbacks):
    # given a customers file as Excel writes it in many European locales (a quoted cell holds the delimiter and a line end)
    rows = [["user_id", "email", "first_name", "notes"], ["s-1", "s1@example.com", "Zoë", f'"a{delimiter}b\r\nc"'],
            ["s-2", "s2@example.com", "Ann", ""]]
    text = "\ufeff" + "".join(delimiter.join(row) + "\r\n" for row in rows)
    # when it is imported
    job = start("import_customers", text, django_capture_on_commit_callbacks)
    # then both rows are stored with their columns
    assert job.status == "succeeded", job.error
    assert (job.result["imported"], job.result["rejected"]) == (2, 0), job.result["rejected_rows"]
    ann = Customer.objects.get(external_id="s-1")
    assert (ann.email, ann.traits["first_name"], ann.traits["notes"]) == ("s1@example.com", "Zoë", f"a{delimiter}b\r\nc")


def test_a_header_naming_no_column_the_import_reads_is_refused_naming_what_it_found(ops):  # noqa: F811
    # given a Braze-style export whose id column is external_id
    upload = SimpleUploadedFile("braze.csv", b"external_id,email\nb-1,b1@example.com\n")
    # when ops upload it as customers
    response = ops.post(f"{reverse('admin:journeys_job_add')}?kind=import_customers",
                        {"file": upload, "source": Source.objects.get(name="demo-web").pk})
    # then no job is started and the page names the columns found and those expected
    assert response.status_code == 200 and not Job.objects.exists()
    [error] = response.context["form"].errors["file"]
    assert "found 'external_id', 'email'; expected user_id, userId" in error


def test_a_rejected_record_spanning_lines_is_numbered_as_its_spreadsheet_row(demo,  # noqa: F811
                                                                              django_capture_on_commit_callbacks):
    # given a header (row 1), a record on lines 2-4 (a note with two line ends) with a bad consent cell,
    # a good record on line 5, and a record without user id on line 6
    text = ('user_id,notes,consent.sms\r\nr-1,"first\r\nsecond\r\nthird",maybe\r\nr-2,ok,\r\n'
            ',no id,\r\n')
    # when it is imported
    job = start("import_customers", text, django_capture_on_commit_callbacks)
    # then the rejected records are rows 2 and 4, as a spreadsheet shows them
    assert [(r["row"], r["field"]) for r in job.result["rejected_rows"]] == [(2, "consent.sms"), (4, "user_id")]


@override_settings(JOB_IMPORT_PART_ROWS=100)
def test_parts_of_a_file_with_multiline_and_identical_rows_store_every_row_once(demo,  # noqa: F811
                                                                                 django_capture_on_commit_callbacks):
    # given 450 orders in a semicolon file (parts of 100), with quoted line ends and an identical order every 50 rows
    lines = ["user_id;event;note"]
    for i in range(450):
        lines.append(f'u-{i % 50 if i % 50 == 0 else i};Order Completed;"line\nbreak {i % 50 == 0}"')
    job = start("import_events", "\n".join(lines) + "\n", django_capture_on_commit_callbacks)
    # then every row is stored once (the identical ones as orders of their own) and the last rejected-free
    assert job.status == "succeeded", job.error
    assert (job.result["rows"], job.result["imported"], job.result["parts"]) == (450, 450, 5)
    assert Event.objects.filter(name="Order Completed", user_id="u-0").count() == 9
    # and imported again, nothing is stored twice
    again = start("import_events", "\n".join(lines) + "\n", django_capture_on_commit_callbacks)
    assert (again.result["imported"], again.result["duplicates"]) == (0, 450)


def part_peak(text: str, capture) -> int:
    """The memory peak of running the second part of an import of `text`."""
    with capture(execute=False):
        job = start("import_events", text, capture, execute=False)
        run_job(job.pk)
    tracemalloc.start()
    try:
        with capture(execute=False):
            run_job(job.pk, 200)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@override_settings(JOB_IMPORT_PART_ROWS=200)
def test_a_parts_memory_does_not_grow_with_the_file(demo, django_capture_on_commit_callbacks):  # noqa: F811
    # given files of 2,000 and 16,000 orders, imported 200 rows a part
    def orders(count: int) -> str:
        return "user_id,event,total,note\n" + "".join(f"u-m{i},Order Completed,{i},some note {i}\n" for i in range(count))

    small, large = orders(2_000), orders(16_000)
    # when a part past the first runs
    grown = part_peak(large, django_capture_on_commit_callbacks) - part_peak(small, django_capture_on_commit_callbacks)
    # then the larger file costs the part about its text more (as loaded from the database), not every row of it
    assert grown < 5 * (len(large) - len(small)), (grown, len(large) - len(small))  # 17x before


def test_a_customer_row_with_an_invalid_email_or_phone_is_rejected_naming_row_and_column(demo,  # noqa: F811
                                                                                         django_capture_on_commit_callbacks):
    # given a customers file: a good row, one with `not-an-email`, one with the phone `12-abc`, a good phone spelled with separators
    text = ("user_id,email,phone\nv-1,v1@example.com,+44 7700 900001\nv-2,not-an-email,\nv-3,v3@example.com,12-abc\n"
            "v-4,V4@Example.com,(0)20 7946-0010\n")
    # when it is imported
    job = start("import_customers", text, django_capture_on_commit_callbacks)
    # then the two bad rows are rejected by row and column, and the others are stored
    assert [(r["row"], r["field"]) for r in job.result["rejected_rows"]] == [(3, "email"), (4, "phone")]
    assert job.result["imported"] == 2
    assert sorted(Customer.objects.filter(external_id__startswith="v-").values_list("external_id", flat=True)) == [
        "v-1", "v-4"]
    assert not Customer.objects.filter(email="not-an-email").exists()


def test_a_customer_file_with_phones_written_as_apps_and_people_write_them_is_imported(demo,  # noqa: F811
                                                                                     django_capture_on_commit_callbacks):
    # given a CRM export: extensions, a tel: URI, a German slash, an en dash
    phones = ["+1 555-777-0001 x123", "+1 555 777 0002 ext. 12", "+1-555-777-0003;ext=12", "tel:+15557770004",
              "030/12345678", "+1 (555) 777\u20130006"]
    text = "user_id,phone\n" + "".join(f"w-{i},{phone}\n" for i, phone in enumerate(phones))
    # when it is imported
    job = start("import_customers", text, django_capture_on_commit_callbacks)
    # then every row is stored: the trait as written, the profile's number without separators or extension
    assert job.result["rejected_rows"] == []
    stored = dict(Customer.objects.filter(external_id__startswith="w-").values_list("traits__phone", "phone"))
    assert stored == dict(zip(phones, ["+15557770001", "+15557770002", "+15557770003", "+15557770004", "03012345678",
                                       "+15557770006"]))


def test_a_file_over_the_row_limit_is_refused_at_upload(ops, monkeypatch):  # noqa: F811
    # given a row limit of 3 and a file of 4 rows (one of them a record spanning two lines)
    monkeypatch.setattr("journeys.services.jobs.MAX_ROWS", 3)
    upload = SimpleUploadedFile("big.csv", b'user_id,note\nl-1,"a\nb"\nl-2,\nl-3,\nl-4,\n')
    # when ops upload it, then no job is started and the page says the limit and what to do
    response = ops.post(f"{reverse('admin:journeys_job_add')}?kind=import_customers",
                        {"file": upload, "source": Source.objects.get(name="demo-web").pk})
    assert response.status_code == 200 and not Job.objects.exists()
    assert response.context["form"].errors["file"] == [
        "the file has 4 rows; the limit is 3 per file: split it into smaller files and import them one after the other"]


def test_a_customer_row_with_an_offset_zone_is_rejected_naming_row_and_column(demo,  # noqa: F811
                                                                               django_capture_on_commit_callbacks):
    # given a customers file: a zone spelled in lower case with a space, an offset, GMT+5
    text = "user_id,timezone,plan\nz-1, asia/kolkata,pro\nz-2,+05:30,pro\nz-3,GMT+5,pro\n"
    # when it is imported
    job = start("import_customers", text, django_capture_on_commit_callbacks)
    # then the offsets are rejected by row and column (the file can be fixed), the readable zone is stored canonically
    assert [(r["row"], r["field"]) for r in job.result["rejected_rows"]] == [(3, "timezone"), (4, "timezone")]
    assert "is not an IANA time zone" in job.result["rejected_rows"][0]["error"]
    assert dict(Customer.objects.filter(external_id__startswith="z-").values_list("external_id", "timezone")) == {
        "z-1": "Asia/Kolkata"}
