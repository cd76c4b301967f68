"""Customers through the management API: look up, read, set traits (attribute triggers fire),
merge (recorded with the token), erase and export as jobs; bad input names the field."""

from __future__ import annotations

import json

import pytest

from journeys.choices import ApiScope
from journeys.models import Customer, CustomerMerge, Identity, Job, JobChunk, JourneyRun
from tests.apiclient import Api, make_token
from tests.factories import CustomerFactory, live_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    _, key = make_token(ApiScope.CUSTOMERS_READ, ApiScope.CUSTOMERS_WRITE, ApiScope.EXPORT, name="crm")
    return Api(key)


def test_lookup_by_user_id_or_email_pages_by_id(api):
    # given three customers
    for n in range(3):
        CustomerFactory(external_id=f"u{n}", email=f"u{n}@example.com")
    Identity.objects.create(kind="email", value="u1@example.com", customer=Customer.objects.get(external_id="u1"))

    # when looked up by user id, and by email
    by_id = api.get("customers?user_id=u2").body
    by_email = api.get("customers?email=U1@example.com").body

    # then each finds its one customer
    assert [c["user_id"] for c in by_id["results"]] == ["u2"]
    assert [c["user_id"] for c in by_email["results"]] == ["u1"]

    # and the full list comes in pages that follow each other
    first = api.get("customers?limit=2").body
    assert len(first["results"]) == 2 and first["next"]
    second = api.client.get(first["next"], HTTP_AUTHORIZATION=f"Bearer {api.key}").json()
    assert [c["user_id"] for c in first["results"] + second["results"]] == ["u0", "u1", "u2"]


@pytest.mark.parametrize(("query", "field"), [("limit=-1", "limit"), ("limit=abc", "limit"), ("limit=0", "limit"),
                                              ("limit=%C2%B2", "limit"), ("cursor=garbage", "cursor"),
                                              ("cursor=cD1hYmM%3D", "cursor"),  # p=abc: decodes, not an id
                                              ("user_id=", "user_id"), ("email=", "email")])  # not "everyone"
def test_bad_paging_parameters_are_refused_naming_them(api, query, field):
    CustomerFactory()
    response = api.get(f"customers?{query}")
    assert (response.status_code, response.body["field"]) == (400, field), response.body


def test_a_huge_limit_is_cut_to_the_largest_page(api):
    CustomerFactory()
    assert api.get(f"customers?limit={10**22}").status_code == 200


def test_profile_shows_identities_consents_stage_and_traits(api):
    from channels_app.models import Consent

    customer = CustomerFactory(external_id="ada", traits={"plan": "pro"}, stage="active")
    Consent.objects.create(customer=customer, channel_kind="email", status="opted_out", source="preference_centre",
                           updated_at=customer.created_at)

    body = api.get(f"customers/{customer.pk}").body

    assert body["user_id"] == "ada" and body["stage"] == "active" and body["traits"] == {"plan": "pro"}
    assert {"kind": "user_id", "value": "ada"} in body["identities"]
    assert body["consents"][0]["channel_kind"] == "email" and body["consents"][0]["status"] == "opted_out"


def test_setting_traits_goes_through_ingestion_so_attribute_triggers_fire(api, django_capture_on_commit_callbacks):
    # given a live workflow triggered when `plan` changes to "pro"
    workflow = live_workflow(name="upgrade", definition={
        "trigger_kind": "attribute_change", "trigger_config": {"attribute": "plan", "to": "pro"},
        "steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []})
    customer = CustomerFactory(external_id="bo", traits={"plan": "free"})

    # when the API sets the trait (and an email)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(f"customers/{customer.pk}/traits", {"traits": {"plan": "pro", "email": "Bo@Example.com"}})

    # then the change is reported, the profile and its identities follow, and the workflow started
    assert response.status_code == 200, response.body
    assert response.body["changes"]["plan"] == ["free", "pro"]
    customer.refresh_from_db()
    assert customer.traits["plan"] == "pro" and customer.email == "Bo@Example.com"
    assert Identity.objects.filter(kind="email", value="bo@example.com", customer=customer).exists()
    assert JourneyRun.objects.filter(workflow=workflow, customer=customer).exists()


@pytest.mark.parametrize(("body", "field"), [
    ({}, "traits"),
    ({"traits": []}, "traits"),
    ({"traits": {}}, "traits"),
    ({"traits": {"x": "a\u0000b"}}, "traits"),
], ids=["missing", "not-object", "empty", "nul"])
def test_bad_traits_answer_400_naming_the_field(api, body, field):
    customer = CustomerFactory()
    response = api.patch(f"customers/{customer.pk}/traits", body)
    assert response.status_code == 400 and response.body["field"] == field, response.body


def test_infinite_numbers_in_traits_are_refused(api):
    customer = CustomerFactory()
    response = api.patch(f"customers/{customer.pk}/traits", raw=b'{"traits": {"n": 1e999}}')
    assert response.status_code == 400 and response.body["field"] == "traits"
    assert Customer.objects.get(pk=customer.pk).traits == {}


def test_merge_moves_the_other_profile_and_records_the_token(api):
    # given two profiles of one person
    target = CustomerFactory(external_id="main")
    other = CustomerFactory(external_id="dup", traits={"city": "Lyon"})

    # when merged through the API
    response = api.post(f"customers/{target.pk}/merge", {"merge": other.pk, "reason": "same person, ticket 7"})

    # then the survivor has the other's identities and traits; the merge names the token
    assert response.status_code == 200, response.body
    assert {"kind": "user_id", "value": "dup"} in response.body["identities"]
    assert response.body["traits"]["city"] == "Lyon" and response.body["merged_ids"] == [other.pk]
    merge = CustomerMerge.objects.get()
    assert (merge.actor, merge.reason) == ("api-token:crm", "same person, ticket 7")
    # and the old id now leads to the survivor
    assert api.get(f"customers/{other.pk}").body["id"] == target.pk


def test_merge_refuses_itself_an_unknown_or_an_absorbed_customer(api):
    target, other = CustomerFactory(), CustomerFactory()
    assert api.post(f"customers/{target.pk}/merge", {"merge": target.pk}).body["field"] == "merge"
    assert api.post(f"customers/{target.pk}/merge", {"merge": 10**9}).body["field"] == "merge"
    assert api.post(f"customers/{target.pk}/merge", {"merge": "x"}).status_code == 400
    assert api.post(f"customers/{target.pk}/merge", {"merge": other.pk}).status_code == 200
    third = CustomerFactory()
    response = api.post(f"customers/{third.pk}/merge", {"merge": other.pk})
    assert response.status_code == 422 and response.body["field"] == "merge"


def test_delete_erases_in_the_background_like_erase_customer(api, django_capture_on_commit_callbacks):
    # given a customer
    customer = CustomerFactory(external_id="gone", email="gone@example.com", traits={"a": 1})

    # when deleted through the API (twice: a client retrying)
    with django_capture_on_commit_callbacks(execute=True):
        first = api.delete(f"customers/{customer.pk}", {"reason": "GDPR ticket 9"})
    again = api.delete(f"customers/{customer.pk}")

    # then one erasure job ran, the same one is answered again, and its status is readable
    assert first.status_code == 202 and again.status_code == 202
    assert first.body["job"]["id"] == again.body["job"]["id"] and again.body["replayed"] is True
    job = api.get(f"jobs/{first.body['job']['id']}").body
    assert job["status"] == "succeeded" and job["result"]["counts"]["identities"] == 1
    customer.refresh_from_db()
    assert customer.external_id == f"erased-{customer.pk}" and customer.email == "" and customer.traits == {}
    from channels_app.models import ErasureRecord

    record = ErasureRecord.objects.get()
    assert (record.actor, record.reason) == ("api-token:crm", "GDPR ticket 9")


def test_delete_takes_the_reason_as_a_query_parameter_and_records_it(api, django_capture_on_commit_callbacks):
    # given two customers
    by_query, by_both = CustomerFactory(external_id="q"), CustomerFactory(external_id="b")

    # when one is erased with ?reason= (what generated clients send: no body on DELETE)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"customers/{by_query.pk}?reason=DSR%20ticket%2012")
    # and the other with the reason twice, disagreeing, then agreeing
    conflict = api.delete(f"customers/{by_both.pk}?reason=a", {"reason": "b"})
    with django_capture_on_commit_callbacks(execute=True):
        agreed = api.delete(f"customers/{by_both.pk}?reason=same", {"reason": "same"})

    # then the reason is on the erasure record; two different reasons are refused naming it
    from channels_app.models import ErasureRecord

    assert response.status_code == 202 and agreed.status_code == 202
    assert (conflict.status_code, conflict.body["field"]) == (400, "reason")
    assert sorted(ErasureRecord.objects.values_list("reason", flat=True)) == ["DSR ticket 12", "same"]


def test_export_is_a_job_whose_result_links_the_data_streamed(api, django_capture_on_commit_callbacks):
    customer = CustomerFactory(external_id="exp")
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"customers/{customer.pk}/export", headers={"Idempotency-Key": "exp-1"})
    job = api.get(f"jobs/{response.body['job']['id']}").body
    # the result is a summary with a link: the copy itself is streamed from there
    assert job["status"] == "succeeded" and job["result"]["sections"]["identities"] == 1
    assert job["result"]["download"] == f"http://testserver/api/v1/jobs/{job['id']}/download"
    download = api.client.get(job["result"]["download"], HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert download.status_code == 200 and download.streaming
    assert json.loads(download.getvalue())["customer"]["external_id"] == "exp"
    # a token without the export scope does not get it
    _, other = make_token(ApiScope.TRIGGER, name="trigger-only")
    assert api.client.get(job["result"]["download"], HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 404


def test_jobs_are_seen_only_by_tokens_whose_scopes_start_them(api, django_capture_on_commit_callbacks):
    customer = CustomerFactory()
    with django_capture_on_commit_callbacks(execute=True):
        job_id = api.post(f"customers/{customer.pk}/export").body["job"]["id"]
    _, trigger_key = make_token(ApiScope.TRIGGER, name="trigger-only")
    assert Api(trigger_key).get(f"jobs/{job_id}").status_code == 404
    console_job = Job.objects.create(kind="replay")  # started in the console, not through the API
    assert api.get(f"jobs/{console_job.pk}").status_code == 404


def test_unknown_ids_and_paths_answer_404_in_the_api_format(api):
    for path in ("customers/999999", "customers/99999999999999999999999", "nothing/here", "jobs/abc"):
        response = api.get(path)
        assert response.status_code == 404 and response.body["message"], path


def test_a_body_over_the_limit_is_refused_before_it_is_read(api, settings):
    settings.API = {**settings.API, "MAX_BODY_BYTES": 100}
    customer = CustomerFactory()
    response = api.patch(f"customers/{customer.pk}/traits", {"traits": {"x": "y" * 200}})
    assert response.status_code == 413 and "limit" in response.body["message"]


def test_erasing_a_customer_drops_their_exports_and_refused_merges(api, django_capture_on_commit_callbacks):
    from journeys.models import MergeRefusal

    # given an export of a customer, and an alias refused between them and another known user
    customer = CustomerFactory(external_id="leaving", email="leaving@example.com", traits={"city": "Lyon"})
    other = CustomerFactory(external_id="staying")
    MergeRefusal.objects.create(customer=other, other=customer, user_id="staying", previous_id="leaving",
                                reason="alias of known user leaving into staying")
    with django_capture_on_commit_callbacks(execute=True):
        export_id = api.post(f"customers/{customer.pk}/export").body["job"]["id"]
    assert "download" in api.get(f"jobs/{export_id}").body["result"]

    # when the customer is erased
    with django_capture_on_commit_callbacks(execute=True):
        api.delete(f"customers/{customer.pk}", {"reason": "GDPR"})

    # then the export no longer holds the copy (nor the user id), only its summary
    result = api.get(f"jobs/{export_id}").body["result"]
    assert result["erased"] is True and "download" not in result and "external_id" not in result
    assert "leaving" not in str(Job.objects.get(pk=export_id).result)
    assert not JobChunk.objects.exists() and api.get(f"jobs/{export_id}/download").status_code == 404
    assert not MergeRefusal.objects.exists()


def test_an_erased_customer_takes_no_new_traits_merges_runs_or_messages(api, django_capture_on_commit_callbacks):
    from channels_app.models import Delivery
    from journeys.choices import ApiScope as S

    customer = CustomerFactory(external_id="erase-me")
    alive = CustomerFactory(external_id="alive")
    with django_capture_on_commit_callbacks(execute=True):
        api.delete(f"customers/{customer.pk}", {"reason": "GDPR"})
    customer.refresh_from_db()
    assert customer.erased_at is not None
    customers = Customer.objects.count()

    response = api.patch(f"customers/{customer.pk}/traits", {"traits": {"plan": "x"}})
    assert (response.status_code, response.body["code"], response.body["field"]) == (422, "erased", "id")
    assert "was erased" in response.body["message"]
    response = api.post(f"customers/{alive.pk}/merge", {"merge": customer.pk})
    assert (response.status_code, response.body["field"]) == (422, "merge")
    assert api.post(f"customers/{customer.pk}/merge", {"merge": alive.pk}).status_code == 422
    # nothing was written anywhere: no new profile under the tombstone's name, no merge
    assert Customer.objects.count() == customers
    assert not Customer.objects.filter(traits__plan="x").exists() and not CustomerMerge.objects.exists()

    # a transactional message to it is refused naming the field
    _, key = make_token(S.SEND, name="app")
    response = Api(key).post("messages", {"template": "any", "customer_id": customer.pk, "idempotency_key": "m-1"})
    assert (response.status_code, response.body["field"]) == (422, "customer_id"), response.body
    assert not Delivery.objects.exists()

