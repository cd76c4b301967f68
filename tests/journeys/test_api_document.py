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


READ_OPERATIONS = {  # operation -> a field its 200 answer's schema (or each listed row's) has
    "/api/v1/workflows/": "trigger_kind", "/api/v1/workflows/{id}/": "versions",
    "/api/v1/templates/": "channel_kind", "/api/v1/templates/{id}/": "topic",
    "/api/v1/channels/": "breaker_state", "/api/v1/channels/{id}/": "provider",
    "/api/v1/deliveries/": "workflow_id", "/api/v1/deliveries/{id}/": "attempts",
    "/api/v1/jobs/": "progress_done",
    "/api/v1/experiments/": "key", "/api/v1/experiments/{id}/": "arms",
    "/api/v1/experiments/{id}/results/": "recommendation",
}


def answer_schema(document: dict, operation: dict) -> dict:
    """The 200 answer's schema; for a list, that of one of its `results`."""
    schema = component(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
    if "results" in schema["properties"]:
        schema = component(document, schema["properties"]["results"]["items"])
    return schema


@pytest.mark.parametrize("path", list(READ_OPERATIONS))
def test_the_read_operations_are_documented_with_their_schemas(document, path):
    operation = document["paths"][path]["get"]
    assert READ_OPERATIONS[path] in answer_schema(document, operation)["properties"]
    assert {"401", "403", "406", "429"} <= set(operation["responses"]), path
    assert {"404"} <= set(operation["responses"]) if "{id}" in path else {"400"} <= set(operation["responses"])
    if "{id}" not in path:  # a list: pages by cursor, limit 1 to 500
        names = {p["name"]: p for p in operation["parameters"]}
        assert {"cursor", "limit"} <= set(names)
        assert (names["limit"]["schema"]["minimum"], names["limit"]["schema"]["maximum"]) == (1, 500)


def test_the_deliveries_filters_are_documented_with_their_types(document):
    parameters = {p["name"]: p["schema"] for p in document["paths"]["/api/v1/deliveries/"]["get"]["parameters"]}
    assert parameters["customer_id"]["type"] == parameters["workflow_id"]["type"] == "integer"
    assert parameters["since"] == {"type": "string", "format": "date-time"}
    status = parameters["status"]
    status = component(document, status) if "$ref" in status else status
    assert "failed" in status["enum"] and "delivered" in status["enum"]


def test_a_channel_is_documented_without_its_settings(document):
    channel = answer_schema(document, document["paths"]["/api/v1/channels/{id}/"]["get"])
    assert "settings" not in channel["properties"]

