"""The OpenAPI document (GET /v1/openapi.json) says what the server does: the body types each
operation reads, every status it answers with, the shape of its errors, the bounds of its
parameters; so that a client generated from it (openapi-python-client) works."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

TRACKING = ["/v1/track", "/v1/identify", "/v1/page", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch",
            "/v1/import"]


@pytest.fixture
def document(client) -> dict:
    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def component(document: dict, ref: dict) -> dict:
    return document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def management_operations(document: dict):
    for path, item in document["paths"].items():
        if path.startswith("/api/v1/"):
            for method, operation in item.items():
                yield f"{method.upper()} {path}", operation


def test_tracking_operations_take_json_or_text_plain_only_and_say_gzip(document):
    for path in TRACKING:
        operation = document["paths"][path]["post"]
        assert list(operation["requestBody"]["content"]) == ["application/json", "text/plain"], path
        assert operation["requestBody"]["required"] is True, path  # an empty body is a 400, also for identify
        assert "Content-Encoding: gzip" in operation["description"], path
        assert {"406", "415"} <= set(operation["responses"]), path


def test_every_management_error_has_the_error_schema(document):
    error = None
    for name, operation in management_operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                ref = response.get("content", {}).get("application/json", {}).get("schema")
                assert ref, f"{name} {status} has no body schema"
                error = component(document, ref)
                assert set(error["properties"]) == {"code", "message", "field", "errors"}, (name, status)
                assert error["required"] == ["code", "message"]
    assert error is not None


def test_management_statuses_the_code_answers_are_documented(document):
    paths = document["paths"]
    listing = paths["/api/v1/customers/"]["get"]
    assert "400" in listing["responses"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 500)
    assert "422" in paths["/api/v1/customers/{id}/export/"]["post"]["responses"]
    for name, operation in management_operations(document):
        assert "406" in operation["responses"], name
        if "requestBody" in operation:
            assert list(operation["requestBody"]["content"]) == ["application/json"], name
            assert {"400", "413", "415"} <= set(operation["responses"]), name
            body = component(document, operation["requestBody"]["content"]["application/json"]["schema"])
            assert body["additionalProperties"] is False, name  # unknown fields are refused
    traits = paths["/api/v1/customers/{id}/traits/"]["patch"]["requestBody"]
    assert traits["required"] is True
    assert component(document, traits["content"]["application/json"]["schema"])["required"] == ["traits"]


def test_the_erasure_reason_is_a_documented_query_parameter(document):
    erase = document["paths"]["/api/v1/customers/{id}/"]["delete"]
    reason = next(p for p in erase["parameters"] if p["name"] == "reason")
    assert reason["in"] == "query" and reason["schema"]["type"] == "string"
