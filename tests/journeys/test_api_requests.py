"""How the management API (/api/v1) reads a request, whatever the endpoint: chunked and gzip
bodies, unknown fields, bodies that are not objects, methods a route does not offer, and the
error each refusal answers with."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from journeys.choices import ApiScope
from journeys.models import Customer, Job
from tests.apiclient import Api, make_token
from tests.factories import CustomerFactory, live_workflow

pytestmark = pytest.mark.django_db

WELCOME = {"trigger_event": "Never Sent", "steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []}


@pytest.fixture
def api():
    _, key = make_token(name="backend")  # every scope: a refusal is never about the token
    return Api(key)


def chunked(api, method: str, path: str, body: bytes, **headers):
    """As gunicorn hands over a `Transfer-Encoding: chunked` request: no Content-Length, the
    de-chunked body in wsgi.input, and wsgi.input_terminated set."""
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    return api.client.generic(method, f"/api/v1/{path}", b"", content_type="application/json", CONTENT_LENGTH="",
                              HTTP_TRANSFER_ENCODING="chunked", HTTP_AUTHORIZATION=f"Bearer {api.key}",
                              **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True}, **extra)


def test_a_chunked_body_is_read_like_one_with_a_content_length(api):
    # given a customer
    customer = CustomerFactory(external_id="streamed")

    # when their traits are set by a client that streams its body (no Content-Length)
    response = chunked(api, "PATCH", f"customers/{customer.pk}/traits", json.dumps({"traits": {"plan": "pro"}}).encode())

    # then the body was read: the trait is set
    assert response.status_code == 200, response.content
    customer.refresh_from_db()
    assert customer.traits["plan"] == "pro"


def test_a_chunked_body_over_the_limit_is_a_413_while_it_is_read(api, settings):
    settings.API = {**settings.API, "MAX_BODY_BYTES": 1000}
    customer = CustomerFactory()
    body = json.dumps({"traits": {"x": "y" * 5000}}).encode()

    response = chunked(api, "PATCH", f"customers/{customer.pk}/traits", body)

    assert response.status_code == 413, response.content
    assert response.json()["code"] == "too_large" and "1000 bytes" in response.json()["message"]


def test_a_gzip_body_is_inflated_under_the_same_limit_and_other_encodings_are_a_415(api, settings):
    customer = CustomerFactory()
    body = json.dumps({"traits": {"plan": "gzip"}}).encode()

    inflated = api.patch(f"customers/{customer.pk}/traits", raw=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert inflated.status_code == 200, inflated.body
    customer.refresh_from_db()
    assert customer.traits["plan"] == "gzip"

    brotli = api.patch(f"customers/{customer.pk}/traits", raw=body, headers={"Content-Encoding": "br"})
    assert (brotli.status_code, brotli.body["code"]) == (415, "unsupported_encoding"), brotli.body
    assert "'br'" in brotli.body["message"]

    settings.API = {**settings.API, "MAX_BODY_BYTES": 1000}
    bomb = gzip.compress(json.dumps({"traits": {"x": "y" * 100_000}}).encode())
    assert len(bomb) < 1000
    too_big = api.patch(f"customers/{customer.pk}/traits", raw=bomb, headers={"Content-Encoding": "gzip"})
    assert (too_big.status_code, too_big.body["code"]) == (413, "too_large")


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "customers/{c}"), ("PATCH", "customers/{c}"), ("POST", "customers"), ("GET", "customers/{c}/traits"),
    ("PUT", "customers/{c}/traits"), ("DELETE", "messages"), ("PUT", "workflows/1/trigger"),
])
def test_a_method_a_route_does_not_offer_is_a_405_with_allow(api, method, path):
    customer = CustomerFactory()

    response = api.call(method, path.format(c=customer.pk), {})

    assert response.status_code == 405, response.body
    assert response.body["code"] == "method_not_allowed" and method in response.body["message"]
    assert response["Allow"] and method not in response["Allow"]


def test_an_unknown_field_is_refused_naming_it_not_dropped(api):
    customer = CustomerFactory()

    # a misspelt field of the top level: `dat` for `data` (the message would go out without it)
    message = api.post("messages", {"idempotency_key": "k", "template": "receipt", "user_id": "u", "dat": {"a": 1}})
    assert (message.status_code, message.body["field"], message.body["code"]) == (400, "dat", "unknown_field")
    assert "did you mean 'data'?" in message.body["message"]

    # in a merge, and beside the traits
    merge = api.post(f"customers/{customer.pk}/merge", {"merge": 1, "reson": "typo"})
    assert (merge.status_code, merge.body["field"]) == (400, "reson")
    assert "did you mean 'reason'?" in merge.body["message"]
    traits = api.patch(f"customers/{customer.pk}/traits", {"traits": {"a": 1}, "plan": "pro"})
    assert (traits.status_code, traits.body["field"]) == (400, "plan")
    assert Customer.objects.get(pk=customer.pk).traits == customer.traits


def test_an_unknown_recipient_field_is_refused_naming_it(api):
    workflow = live_workflow(name="welcome", definition=WELCOME)

    response = api.post(f"workflows/{workflow.pk}/trigger", {"idempotency_key": "k", "recipients": [
        {"user_id": "a"}, {"user_id": "b", "usr_id": "x"}]})

    assert (response.status_code, response.body["field"]) == (400, "recipients[1].usr_id"), response.body
    assert not Job.objects.exists()


@pytest.mark.parametrize(("method", "path"), [("POST", "messages"), ("POST", "workflows/{w}/trigger"),
                                              ("PATCH", "customers/{c}/traits"), ("POST", "customers/{c}/merge"),
                                              ("DELETE", "customers/{c}")])
def test_a_body_that_is_not_an_object_is_refused_naming_the_body(api, method, path):
    customer = CustomerFactory()
    workflow = live_workflow(name="welcome", definition=WELCOME)

    response = api.call(method, path.format(c=customer.pk, w=workflow.pk), [{"traits": {}}])

    assert (response.status_code, response.body["field"]) == (400, "body"), response.body
    assert response.body["message"] == "body: must be a JSON object"


def test_an_unknown_workflow_is_a_404_naming_its_id(api):
    response = api.post("workflows/999/trigger", {"idempotency_key": "k", "recipients": [{"user_id": "a"}]})
    assert (response.status_code, response.body["code"]) == (404, "not_found")
    assert response.body["message"] == "no workflow with id 999"
    assert api.get("messages/12345").body["message"] == "no delivery with id 12345"


def test_a_wrong_content_type_or_accept_is_refused_in_the_error_format(api):
    customer = CustomerFactory()
    form = api.client.patch(f"/api/v1/customers/{customer.pk}/traits", "traits=x",
                            content_type="application/x-www-form-urlencoded", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert (form.status_code, form.json()["code"]) == (415, "unsupported_media_type")
    xml = api.get(f"customers/{customer.pk}", headers={"Accept": "application/xml"})
    assert (xml.status_code, xml.body["code"]) == (406, "not_acceptable"), xml.body


def test_a_token_scope_is_still_required_for_a_method_the_route_offers():
    customer = CustomerFactory()
    _, key = make_token(ApiScope.CUSTOMERS_READ, name="reader")
    response = Api(key).patch(f"customers/{customer.pk}/traits", {"traits": {"a": 1}})
    assert response.status_code == 403 and "'customers:write'" in response.body["message"]
