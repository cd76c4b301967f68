"""Schema fuzzing of the whole API (tracking and management) with schemathesis, against the
OpenAPI document generated from the code: never a 500, every 4xx explains itself."""

from __future__ import annotations

import base64

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from config.wsgi import application
from journeys.models import Event
from tests.apiclient import make_token
from tests.factories import CustomerFactory


def generated_document() -> dict:
    """The document /v1/openapi.json serves, generated from the views (as JSON, lazy strings resolved)."""
    import json

    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))


# /v1/import is the /v1/batch view under another path: fuzzing it again would only double the time.
schema = schemathesis.openapi.from_dict(generated_document()).exclude(path="/v1/import")
schema.app = application  # calls go through Django's WSGI handler in-process


@pytest.fixture(autouse=True)
def _keep_test_connection():
    """Calling the WSGI app directly fires request_started/finished, whose close_old_connections
    would close the test's PostgreSQL connection (in its test transaction); Django's test client
    disconnects it in the same way."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(write_key):
    """Tracking calls carry the write key; management calls a token holding every scope (and a
    customer exists, so that ids the fuzzer picks sometimes name one)."""
    CustomerFactory(external_id="fuzz-1")
    _, token = make_token(name="fuzz")
    return {"/v1/": {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()},
            "/api/": {"Authorization": f"Bearer {token}"}}


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_generated_input(case, auth_headers):
    tracking = case.path.startswith("/v1/")
    before = Event.objects.count()
    response = case.call(headers=auth_headers["/v1/" if tracking else "/api/"])

    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert body.get("message"), (response.status_code, response.text[:300])
        if tracking:
            assert body.get("success") is False
            assert Event.objects.count() == before  # a rejected request stores nothing
    elif tracking and case.method.upper() == "POST":  # the documented 200: success, each quarantined event named
        assert body.get("success") is True, (response.status_code, response.text[:300])
        assert all(r["field"] and r["message"] and r["code"] for r in body.get("rejected", []))


def test_openapi_document_is_served_and_generated_from_the_views(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/batch", "/v1/import", "/v1/track", "/api/v1/customers/", "/api/v1/messages/",
            "/api/v1/workflows/{id}/trigger/", "/api/v1/jobs/{id}/"} <= set(paths)
    assert paths == generated_document()["paths"]
    ok = paths["/v1/import"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    components = response.json()["components"]["schemas"]
    accepted = components[ok["$ref"].rsplit("/", 1)[1]]
    assert set(accepted["properties"]) == {"success", "rejected"}
    rejected = components[accepted["properties"]["rejected"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(rejected["properties"]) == {"index", "field", "code", "message"}
