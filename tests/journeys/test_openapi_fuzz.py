"""Schema fuzzing of the tracking API with schemathesis: never a 500, every 4xx explains itself."""

from __future__ import annotations

import base64

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from config.wsgi import application
from journeys.api.openapi import tracking_openapi
from journeys.models import Event

schema = schemathesis.openapi.from_dict(tracking_openapi())
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
    if response.status_code >= 400:
        body = response.json()
        assert body.get("success") is False and body.get("message"), (response.status_code, response.text[:300])
        assert Event.objects.count() == before  # a rejected request stores nothing


def test_openapi_document_is_served(client):
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    assert "/v1/batch" in response.json()["paths"]
