"""What a job was given (an import's uploaded file, an API trigger's recipients) is personal data:
an erasure takes the person out of it, and it is deleted JOB_INPUT_KEEP_DAYS after the job."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from channels_app.models import ErasureRecord
from journeys.choices import ApiScope
from journeys.models import Customer, Job, Source
from journeys.services.history_retention import history_housekeeping
from tests.apiclient import Api, make_token

pytestmark = pytest.mark.django_db

CRM = ("user_id,email,first_name,vip_note,consent.email,consent.email.marketing\n"
       "c46010,crm46010@partner.example.net,Fn46010,imported-secret-46010,opted_in,opted_in\n"
       "c46011,Crm46011@Partner.example.net,Fn46011,imported-secret-46011,opted_out,opted_in\n"
       "c46012,crm46012@partner.example.net,Fn46012,\"a note\nover two lines\",,\n"
       "c46013,crm46013@partner.example.net,Fn46013,imported-secret-46013,,\n")


@pytest.fixture
def dpo():
    _, key = make_token(ApiScope.CUSTOMERS_READ, ApiScope.CUSTOMERS_WRITE, name="dpo")
    return Api(key)


def upload(client, kind, name, text, capture) -> Job:
    source = Source.objects.get(name="demo-web")
    with capture(execute=True):
        response = client.post(f"{reverse('admin:journeys_job_add')}?kind={kind}",
                               {"file": SimpleUploadedFile(name, text.encode()), "source": source.pk})
    assert response.status_code == 302
    job = Job.objects.filter(kind=kind).order_by("-pk").first()
    assert job.status == "succeeded", job.error
    return job


def erase(dpo, user_id, capture):
    customer = Customer.objects.get(external_id=user_id)
    with capture(execute=True):
        assert dpo.delete(f"customers/{customer.pk}?reason=ticket").status_code == 202
    return ErasureRecord.objects.get(customer_id_erased=customer.pk)


def test_an_erasure_empties_the_persons_rows_of_kept_uploads_and_nothing_else(
        ops, dpo, django_capture_on_commit_callbacks):
    # given a CRM's customer file and an events file, imported by ops
    crm = upload(ops, "import_customers", "crm.csv", CRM, django_capture_on_commit_callbacks)
    events = upload(ops, "import_events", "orders.jsonl",
                    '{"userId": "c46011", "event": "Order Completed", "properties": {"ref": "o-46011"}}\r\n'
                    '{"userId": "c46013", "event": "Order Completed", "properties": {"ref": "o-46013"}}\r\n',
                    django_capture_on_commit_callbacks)

    # when the DPO erases two of the people through the API (one named by a multi-line row)
    first = erase(dpo, "c46011", django_capture_on_commit_callbacks)
    second = erase(dpo, "c46012", django_capture_on_commit_callbacks)

    # then the stored upload no longer holds them: their rows are empty, in place
    crm.refresh_from_db()
    lines = crm.input_text.split("\n")
    assert '"",,,,,' in lines and "46011" not in crm.input_text and "46012" not in crm.input_text
    assert "over two lines" not in crm.input_text
    # every other row is as it was written, on the same line (rejected rows keep their numbers)
    original = CRM.split("\n")
    assert lines[0] == original[0] and lines[1] == original[1] and lines[5] == original[5]
    assert len(lines) == len(original)
    events.refresh_from_db()
    assert events.input_text == ('{}\r\n{"userId": "c46013", "event": "Order Completed", '
                                 '"properties": {"ref": "o-46013"}}\r\n')
    # and the erasure records say so
    assert (first.counts["job_input_import_rows"], second.counts["job_input_import_rows"]) == (2, 1)


def test_an_upload_and_a_triggers_recipients_are_deleted_some_days_after_the_job(
        ops, django_capture_on_commit_callbacks, settings):
    settings.JOB_INPUT_KEEP_DAYS = 7
    job = upload(ops, "import_customers", "crm.csv", CRM, django_capture_on_commit_callbacks)
    trigger = Job.objects.create(kind="trigger", status="succeeded", finished_at=job.finished_at,
                                 params={"workflow_id": 1, "version_id": 1, "segment": None, "data": {"coupon": "X"},
                                         "recipients": [{"email": "crm46010@partner.example.net"}]})

    # a day later they are still there (JOB_INPUT_KEEP_DAYS), a week later they are gone
    history_housekeeping(now=job.finished_at + timedelta(days=1))
    job.refresh_from_db()
    assert job.input_text == CRM
    result = history_housekeeping(now=job.finished_at + timedelta(days=7, seconds=1))
    job.refresh_from_db()
    trigger.refresh_from_db()
    assert result["job_inputs_purged"] == 2
    assert job.input_text == "" and job.input_name == "crm.csv" and job.result["imported"] == 4
    assert trigger.params == {"workflow_id": 1, "version_id": 1, "segment": None}

    # the result page still shows what happened
    page = ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert "<b>4</b> imported" in page


def test_a_running_import_skips_the_rows_of_a_person_erased_meanwhile(
        ops, dpo, django_capture_on_commit_callbacks, settings):
    from journeys.services.jobs import run_job

    # given an import stopped after its first part (one row), its next part not run yet
    settings.JOB_IMPORT_PART_ROWS = 1
    source = Source.objects.get(name="demo-web")
    text = "user_id,email\nc46020,a46020@example.net\nc46021,b46021@example.net\n"
    with django_capture_on_commit_callbacks(execute=False):
        ops.post(f"{reverse('admin:journeys_job_add')}?kind=import_customers",
                 {"file": SimpleUploadedFile("two.csv", text.encode()), "source": source.pk})
    job = Job.objects.get()
    run_job(job.pk)
    Customer.objects.create(external_id="c46021", email="b46021@example.net")  # known already

    # when that person is erased before the part that imports them
    erase(dpo, "c46021", django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        run_job(job.pk, 1)

    # then their row is rejected by its line, not imported again
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result["rejected_rows"] == [
        {"row": 3, "field": "user_id", "error": "is required"}]
    assert not Customer.objects.filter(email="b46021@example.net").exists()


def test_a_json_upload_loses_the_persons_objects_and_keeps_the_others(ops, dpo, django_capture_on_commit_callbacks):
    rows = [{"userId": "c46030", "traits": {"email": "a46030@example.net"}},
            {"user_id": "c46031", "traits": {"phone": "+44 20 7946 0031", "note": "ünïcode"}}]
    job = upload(ops, "import_customers", "people.json", json.dumps(rows), django_capture_on_commit_callbacks)

    erase(dpo, "c46030", django_capture_on_commit_callbacks)

    job.refresh_from_db()
    assert json.loads(job.input_text) == [{}, rows[1]]
