"""Consent in bulk through the customer import job: `consent.*` columns (an unsubscribe list, a
CRM's opt-ins) are checked per row and stored with the single consent path's rules and history."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from channels_app.models import Consent, Topic
from channels_app.services import consent_refusal, consent_set
from journeys.models import Customer, Job, Source

pytestmark = pytest.mark.django_db


def _import(client, name, text, capture):
    source = Source.objects.get(name="demo-web")
    with capture(execute=True):
        response = client.post(f"{reverse('admin:journeys_job_add')}?kind=import_customers",
                               {"file": SimpleUploadedFile(name, text.encode()), "source": source.pk})
    assert response.status_code == 302
    return Job.objects.order_by("-pk").first()


def test_ops_load_an_unsubscribe_list_with_the_customer_import(ops, django_capture_on_commit_callbacks):
    # given Ada, who opted in to product updates by email at sign-up, and a list from the old system
    updates = Topic.objects.get(slug="product_updates")
    ada = Customer.objects.get(external_id="u-ada")
    consent_set(customer=ada, channel_kind="email", topic=updates, status="opted_in", source="signup form")
    csv_text = ("user_id,email,plan,consent.email,consent.email.product_updates,consent.all\n"
                "u-ada,,,opted_out,,\n"
                "u-imp1,imp1@example.com,pro,revoked,,\n"
                "u-imp2,imp2@example.com,free,,granted,\n"
                "u-imp3,,,,,opted_out\n"
                "u-imp4,,,maybe,,\n")

    # when ops imports it
    job = _import(ops, "unsubscribed.csv", csv_text, django_capture_on_commit_callbacks)

    # then the good rows' consents are stored, the bad one is rejected by its row and column
    assert job.status == "succeeded"
    assert (job.result["imported"], job.result["rejected"], job.result["consents"]) == (4, 1, 4)
    assert job.result["rejected_rows"] == [
        {"row": 6, "field": "consent.email",
         "error": "'maybe' is not a consent: opted_in (granted), opted_out (revoked) or unknown"}]
    assert not Customer.objects.filter(external_id="u-imp4").exists()
    stored = {(c.customer.external_id, c.channel_kind, c.topic.slug if c.topic else None): c.status
              for c in Consent.objects.select_related("customer", "topic")}
    assert stored == {("u-ada", "email", "product_updates"): "opted_in", ("u-ada", "email", None): "opted_out",
                      ("u-imp1", "email", None): "opted_out", ("u-imp2", "email", "product_updates"): "opted_in",
                      ("u-imp3", "", None): "opted_out"}
    # with the same history as a choice made one at a time: the source as the reason, who ran it
    change = Consent.objects.get(customer=ada, channel_kind="email", topic=None).history.get()
    assert (change.history_change_reason, change.source, change.history_user.username) == (
        f"import job {job.pk}", f"import job {job.pk}", "ops")
    # consent columns are not traits, and the send-time rules apply to what was imported
    imp1 = Customer.objects.get(external_id="u-imp1")
    assert not any(key.startswith("consent") for key in imp1.traits) and imp1.traits["plan"] == "pro"
    assert consent_refusal(customer=imp1, channel_kind="email", topic=updates) == "channel_opt_out"
    assert consent_refusal(customer=Customer.objects.get(external_id="u-imp3"), channel_kind="sms",
                           topic=None) == "do_not_contact"
    assert consent_refusal(customer=ada, channel_kind="email", topic=updates) == "channel_opt_out"
    page = ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert "<b>4</b> consents set or changed" in page

    # and importing the same list again changes nothing and writes no history
    history = Consent.history.count()
    again = _import(ops, "unsubscribed.csv", csv_text, django_capture_on_commit_callbacks)
    assert again.result["consents"] == 0 and Consent.history.count() == history


def test_json_rows_may_nest_consent_and_a_bad_column_names_itself(ops, django_capture_on_commit_callbacks):
    rows = ('[{"user_id": "u-j1", "consent": {"sms": false, "all": {"product_updates": "opted_out"}}},'
            ' {"user_id": "u-j2", "consent.fax": "opted_out"},'
            ' {"user_id": "u-j3", "consent.email.no-such-topic": "opted_in"},'
            ' {"user_id": "u-j4", "consent.email": ""}]')

    job = _import(ops, "people.json", rows, django_capture_on_commit_callbacks)

    assert (job.result["imported"], job.result["consents"]) == (2, 2)
    assert [(r["row"], r["field"]) for r in job.result["rejected_rows"]] == [
        (2, "consent.fax"), (3, "consent.email.no-such-topic")]
    assert "unknown channel kind 'fax'" in job.result["rejected_rows"][0]["error"]
    assert "no topic with the slug 'no-such-topic'" in job.result["rejected_rows"][1]["error"]
    j1 = Customer.objects.get(external_id="u-j1")
    assert set(Consent.objects.filter(customer=j1).values_list("channel_kind", "topic__slug", "status")) == {
        ("sms", None, "opted_out"), ("", "product_updates", "opted_out")}
    assert not Consent.objects.filter(customer__external_id="u-j4").exists()  # an empty cell changes nothing
