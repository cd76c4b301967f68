"""Schema fuzzing of the tracking API with schemathesis: never a 500, every 4xx explains itself."""

from __future__ import annotations

import base64

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from config.wsgi import application
from journeys.api.openapi import tracking_openapi
from journeys.models import Event

# /v1/import is the /v1/batch view under another path: fuzzing it again would only double the time.
schema = schemathesis.openapi.from_dict(tracking_openapi()).exclude(path="/v1/import")
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
def auth_header(write_key):
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_tracking_api_never_fails_on_generated_input(case, auth_header):
    before = Event.objects.count()
    response = case.call(headers=auth_header)

    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code >= 400:
        assert body.get("success") is False and body.get("message"), (response.status_code, response.text[:300])
        assert Event.objects.count() == before  # a rejected request stores nothing
    elif case.method.upper() == "POST":  # the documented 200: success, and each quarantined event named
        assert body["success"] is True
        assert all(r["field"] and r["message"] and r["code"] for r in body.get("rejected", []))


def test_openapi_document_is_served(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/v1/batch", "/v1/import", "/v1/track"} <= set(paths)
    ok = paths["/v1/import"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(ok["properties"]) == {"success", "rejected"}
    assert set(ok["properties"]["rejected"]["items"]["properties"]) == {"index", "field", "code", "message"}
