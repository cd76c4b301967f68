"""Triggering a workflow through the API: for listed customers (with their own journey.* data)
or a segment, idempotent by the client's key, small lists at once and large ones as a job."""

from __future__ import annotations

import json

import pytest

from journeys.choices import ApiScope
from journeys.models import BusinessUnit, Job, JourneyRun
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.apiclient import Api, make_token
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

GOLD = {  # reads the trigger's data: journey.tier
    "trigger_event": "Never Sent",
    "steps": [{"key": "gold", "kind": "condition", "config": {"rule": "journey.tier == 'gold'"}},
              {"key": "vip", "kind": "goal", "config": {}}, {"key": "std", "kind": "goal", "config": {}}],
    "edges": [{"from": "gold", "outcome": "yes", "to": "vip"}, {"from": "gold", "outcome": "no", "to": "std"}],
}


@pytest.fixture
def workflow(db):
    unit = BusinessUnit.objects.create(name="Growth", slug="growth")
    wf = workflow_create(name="campaign", business_unit=unit)
    version_publish(version=version_build(workflow=wf, definition=GOLD), reason="test")
    wf.refresh_from_db()
    return wf


@pytest.fixture
def api():
    _, key = make_token(ApiScope.TRIGGER, name="backend")
    return Api(key)


def trigger(api, workflow, on_commit, **body):
    with on_commit(execute=True):
        return api.post(f"workflows/{workflow.pk}/trigger", {"idempotency_key": "k1", **body})


def paths(workflow) -> dict[str, list[str]]:
    return {run.customer.external_id: list(run.executions.order_by("id").values_list("step_key", flat=True))
            for run in JourneyRun.objects.filter(workflow=workflow).select_related("customer")}


def test_listed_customers_enter_with_their_own_data(api, workflow, django_capture_on_commit_callbacks):
    # given customers named by user id, email and id
    a = CustomerFactory(external_id="a")
    b = CustomerFactory(external_id="b", email="b@example.com")
    from journeys.models import Identity

    Identity.objects.create(kind="email", value="b@example.com", customer=b)
    c = CustomerFactory(external_id="c")

    # when the workflow is triggered for them, with data for everyone and for one of them
    response = trigger(api, workflow, django_capture_on_commit_callbacks, data={"tier": "std"}, recipients=[
        {"user_id": "a", "data": {"tier": "gold"}}, {"email": "B@example.com"}, {"customer_id": c.pk},
        {"user_id": "nobody"}])

    # then it answers at once with what happened, and each run read its own journey.tier
    assert response.status_code == 200, response.body
    result = response.body["job"]["result"]
    assert (result["requested"], result["enrolled"], result["not_found"]) == (4, 3, [3])
    assert paths(workflow) == {"a": ["gold", "vip"], "b": ["gold", "std"], "c": ["gold", "std"]}
    assert JourneyRun.objects.get(customer=a).variables["tier"] == "gold"


def test_a_replayed_key_enrols_nobody_twice(api, workflow, django_capture_on_commit_callbacks):
    CustomerFactory(external_id="a")
    first = trigger(api, workflow, django_capture_on_commit_callbacks, recipients=[{"user_id": "a"}])
    again = trigger(api, workflow, django_capture_on_commit_callbacks, recipients=[{"user_id": "a"}])

    assert again.body["replayed"] is True and again.body["job"] == first.body["job"]
    assert JourneyRun.objects.count() == 1 and Job.objects.count() == 1

    other = trigger(api, workflow, django_capture_on_commit_callbacks, recipients=[{"user_id": "b"}])
    assert other.status_code == 422 and other.body["field"] == "idempotency_key"


def test_a_large_list_is_enrolled_by_a_job_whose_status_is_readable(api, workflow, settings,
                                                                    django_capture_on_commit_callbacks):
    settings.API = {**settings.API, "TRIGGER_SYNC_MAX": 2}
    for n in range(5):
        CustomerFactory(external_id=f"u{n}")
    _, reader = make_token(ApiScope.TRIGGER, name="reader")

    response = trigger(api, workflow, django_capture_on_commit_callbacks,
                       recipients=[{"user_id": f"u{n}"} for n in range(5)])

    assert response.status_code == 202 and response.body["job"]["status"] == "queued"
    job = Api(reader).get(f"jobs/{response.body['job']['id']}").body
    assert job["status"] == "succeeded" and job["result"]["enrolled"] == 5
    assert JourneyRun.objects.filter(workflow=workflow).count() == 5


def test_a_segment_enrols_everyone_matching_it(api, workflow, django_capture_on_commit_callbacks):
    for n, plan in enumerate(["pro", "free", "pro"]):
        CustomerFactory(external_id=f"s{n}", traits={"plan": plan})

    response = trigger(api, workflow, django_capture_on_commit_callbacks, segment="profile.plan == 'pro'",
                       data={"tier": "gold"})

    assert response.status_code == 202
    assert Job.objects.get().result["enrolled"] == 2
    assert paths(workflow) == {"s0": ["gold", "vip"], "s2": ["gold", "vip"]}


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"recipients": [{"user_id": "a"}]}, 400, "idempotency_key"),
    ({"idempotency_key": "k"}, 400, "recipients"),
    ({"idempotency_key": "k", "recipients": [{"user_id": "a"}], "segment": "true"}, 400, "recipients"),
    ({"idempotency_key": "k", "recipients": []}, 400, "recipients"),
    ({"idempotency_key": "k", "recipients": [{"user_id": "a", "email": "a@example.com"}]}, 400, "recipients[0].user_id"),
    ({"idempotency_key": "k", "recipients": [{"customer_id": "x"}]}, 400, "recipients[0].customer_id"),
    ({"idempotency_key": "k", "recipients": [{"user_id": "a"}], "data": {"holdout": True}}, 422, "data.holdout"),
    ({"idempotency_key": "k", "recipients": [{"user_id": "a", "data": {"case_id": 1}}]}, 422,
     "recipients[0].data.case_id"),
    ({"idempotency_key": "k", "segment": "profile.plan =="}, 422, "segment"),
    ({"idempotency_key": "k", "segment": "event.x == 1"}, 422, "segment"),
    ({"idempotency_key": "k", "segment": "context.device == 'ios'"}, 422, "segment"),
    ({"idempotency_key": "k", "segment": "journey.x == 1", "data": {"x": 1}}, 422, "segment"),
], ids=["no-key", "no-audience", "both", "empty-list", "two-ids", "bad-id", "reserved", "reserved-recipient",
        "bad-rule", "event-in-segment", "context-in-segment", "journey-in-segment"])
def test_bad_requests_name_the_field_and_enrol_nobody(api, workflow, body, status, field):
    CustomerFactory(external_id="a")
    response = api.post(f"workflows/{workflow.pk}/trigger", body)
    assert (response.status_code, response.body.get("field")) == (status, field), response.body
    assert not JourneyRun.objects.exists() and not Job.objects.exists()
    if "-in-segment" in field or body.get("segment", "").startswith(("event", "context", "journey")):
        assert "has no value here" in response.body["message"] and "only profile.* paths" in response.body["message"]


def test_a_workflow_that_is_not_live_is_refused(api):
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    draft = workflow_create(name="draft only", business_unit=unit)
    response = api.post(f"workflows/{draft.pk}/trigger", {"idempotency_key": "k", "recipients": [{"user_id": "a"}]})
    assert response.status_code == 422 and response.body["field"] == "workflow"
    assert api.post("workflows/999999/trigger", {"idempotency_key": "k", "segment": ""}).status_code == 404


def test_an_erased_customer_is_not_enrolled_and_counts_as_not_found(api, workflow, django_capture_on_commit_callbacks):
    from channels_app.services.privacy import customer_erase

    gone, kept = CustomerFactory(external_id="gone"), CustomerFactory(external_id="kept")
    customer_erase(customer=gone, actor="test", reason="GDPR")

    response = trigger(api, workflow, django_capture_on_commit_callbacks,
                       recipients=[{"customer_id": gone.pk}, {"customer_id": kept.pk}])

    assert response.status_code == 200, response.body
    assert (response.body["job"]["result"]["enrolled"], response.body["job"]["result"]["not_found"]) == (1, [0])
    assert list(JourneyRun.objects.values_list("customer_id", flat=True)) == [kept.pk]


def test_ids_beyond_a_bigint_are_refused_naming_the_field(api, workflow):
    response = api.post(f"workflows/{workflow.pk}/trigger",
                        {"idempotency_key": "k", "recipients": [{"customer_id": 2**70}]})
    assert (response.status_code, response.body["field"]) == (400, "recipients[0].customer_id"), response.body
    assert not Job.objects.exists()


def test_a_body_nested_past_the_parser_is_a_400_not_a_500(api, workflow):
    deep = b'{"idempotency_key": "k", "data": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}"
    response = api.post(f"workflows/{workflow.pk}/trigger", raw=deep)
    assert response.status_code == 400 and "nested too deeply" in response.body["message"], response.body


def test_erasure_empties_the_persons_entries_of_a_trigger_and_its_key_is_kept_as_a_digest(
        api, workflow, django_capture_on_commit_callbacks):
    from channels_app.models import ErasureRecord
    from journeys.models import Identity

    # given a trigger naming two people by email and user id (with private data), and a third one
    first = CustomerFactory(external_id="c47000", email="person47000@mail.example.org")
    Identity.objects.create(kind="email", value="person47000@mail.example.org", customer=first)
    second, other = CustomerFactory(external_id="c47001"), CustomerFactory(external_id="c47002")
    body = {"idempotency_key": "welcome-batch-47000", "recipients": [
        {"email": "person47000@mail.example.org"}, {"user_id": "c47001", "data": {"tier": "private-47001"}},
        {"customer_id": other.pk}]}
    with django_capture_on_commit_callbacks(execute=True):
        sent = api.post(f"workflows/{workflow.pk}/trigger", body)
    assert sent.status_code == 200, sent.body

    # when both are erased through the API
    _, dpo = make_token(ApiScope.CUSTOMERS_WRITE, name="dpo")
    for customer in (first, second):
        with django_capture_on_commit_callbacks(execute=True):
            assert Api(dpo).delete(f"customers/{customer.pk}").status_code == 202

    # then the job keeps its counts and the third recipient, not their identifiers or data
    job = Job.objects.get(kind="trigger")
    assert job.params["recipients"] == [{}, {}, {"customer_id": other.pk}]
    stored = json.dumps([job.params, job.result, job.idempotency_key, job.request_hash])
    assert "47000" not in stored and "47001" not in stored and "welcome-batch" not in stored
    assert (job.result["requested"], job.result["enrolled"]) == (3, 3)
    assert [r.counts["job_input_trigger_recipients"] for r in ErasureRecord.objects.order_by("pk")] == [1, 1]

    # and a replay of the request is still recognised as one: the first answer, nobody enrolled again
    with django_capture_on_commit_callbacks(execute=True):
        again = api.post(f"workflows/{workflow.pk}/trigger", body)
    assert again.status_code == 200 and again.body["replayed"] is True and again.body["job"]["id"] == job.pk
    assert api.post(f"workflows/{workflow.pk}/trigger", {**body, "data": {"tier": "x"}}).status_code == 422


def test_a_key_stored_as_sent_by_an_older_release_is_still_replayed_and_digested_by_the_erasure(
        api, workflow, django_capture_on_commit_callbacks):
    import hashlib

    from channels_app.services.privacy import customer_erase

    # given a trigger job an older release stored with the client's key and a bare hash of the request
    person = CustomerFactory(external_id="c47010")
    request = {"workflow_id": workflow.pk, "recipients": [{"user_id": "c47010"}], "segment": None, "data": {}}
    bare = hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    old = Job.objects.create(kind="trigger", status="succeeded", idempotency_key="trigger:welcome-c47010",
                             request_hash=bare, params={**request, "version_id": workflow.live_version_id},
                             result={"requested": 1, "enrolled": 1, "not_found": []}, finished_at=person.first_seen)
    body = {"idempotency_key": "welcome-c47010", "recipients": [{"user_id": "c47010"}]}

    # a replay finds it
    assert trigger(api, workflow, django_capture_on_commit_callbacks, **body).body["job"]["id"] == old.pk

    # when the person is erased, the key and the request's hash are digested, and a replay still finds it
    customer_erase(customer=person, actor="test", reason="GDPR")
    old.refresh_from_db()
    assert "c47010" not in old.idempotency_key and old.request_hash != bare and old.params["recipients"] == [{}]
    again = trigger(api, workflow, django_capture_on_commit_callbacks, **body)
    assert (again.status_code, again.body["replayed"], again.body["job"]["id"]) == (200, True, old.pk)
    assert Job.objects.count() == 1 and not JourneyRun.objects.exists()
