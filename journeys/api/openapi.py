"""OpenAPI 3 description of the tracking API (served at /v1/openapi.json, fuzzed by schemathesis).

Built from the request/response serializers in journeys.api.serializers, so the document
and the code describe one shape (drf-spectacular can read the same serializers).
"""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from journeys.api.serializers import EVENT_SERIALIZERS, RESPONSES, BatchIn

_ANSWERS = {
    200: "taken: stored, a repeated messageId ignored; quarantined events are listed in `rejected`",
    400: "the request itself is bad (JSON, shape, batch-level field), or an event of a strict source; "
         "`field` names it with its batch index",
    401: "missing or wrong write key",
    403: "the source is disabled",
    413: "over {event} bytes per event (strict source), {batch} bytes or {events} events per batch",
    415: "unsupported Content-Encoding",
    429: "the source's rate limit; retry after Retry-After seconds",
    503: "storage unavailable; retry after Retry-After seconds",
}


def _field_schema(field: serializers.Field) -> dict:
    if isinstance(field, serializers.ListSerializer):
        return {"type": "array", "items": serializer_schema(field.child)}
    if isinstance(field, serializers.Serializer):
        return serializer_schema(field)
    if isinstance(field, serializers.ListField):
        schema: dict = {"type": "array", "items": _field_schema(field.child)}
        if field.min_length is not None:
            schema["minItems"] = field.min_length
        if field.max_length is not None:
            schema["maxItems"] = field.max_length
        return schema
    if isinstance(field, serializers.DictField):
        return {"type": "object", "additionalProperties": True}
    if isinstance(field, serializers.BooleanField):
        return {"type": "boolean"}
    if isinstance(field, serializers.IntegerField):
        return {"type": "integer"}
    if isinstance(field, serializers.ChoiceField):
        return {"type": "string", "enum": list(field.choices)}
    if isinstance(field, serializers.DateTimeField):
        return {"type": "string", "format": "date-time"}
    schema = {"type": "string"}
    if getattr(field, "max_length", None):
        schema["maxLength"] = field.max_length
    return schema


def serializer_schema(serializer: serializers.Serializer) -> dict:
    """JSON Schema of a (shape-only) serializer: its fields, their types and help texts."""
    properties, required = {}, []
    for name, field in serializer.fields.items():
        schema = _field_schema(field)
        if field.help_text:
            schema["description"] = str(field.help_text)
        properties[name] = schema
        if field.required:
            required.append(name)
    schema = {"type": "object", "properties": properties}
    if serializer.__doc__:
        schema["description"] = " ".join(serializer.__doc__.split())
    if required:
        schema["required"] = required
    return schema


def _responses() -> dict:
    limits = settings.EVENT_API
    answers = {}
    for status, serializer in RESPONSES.items():
        text = _ANSWERS[status].format(event=limits["MAX_EVENT_BYTES"], batch=limits["MAX_BATCH_BYTES"],
                                       events=limits["MAX_BATCH_EVENTS"])
        answers[str(status)] = {"description": text,
                                "content": {"application/json": {"schema": serializer_schema(serializer())}}}
    return answers


def _operation(operation_id: str, body: dict) -> dict:
    return {"post": {"operationId": operation_id, "security": [{"writeKey": []}],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                     "responses": _responses()}}


def tracking_openapi() -> dict:
    events = {kind: serializer_schema(serializer()) for kind, serializer in EVENT_SERIALIZERS.items()}
    paths = {f"/v1/{kind}": _operation(kind, schema) for kind, schema in events.items()}
    batch = serializer_schema(BatchIn())
    # Each batch item is one of the event types, named by its `type`.
    batch["properties"]["batch"]["items"] = {"oneOf": [
        {**schema, "properties": {**schema["properties"], "type": {"type": "string", "enum": [kind]}},
         "required": [*schema.get("required", []), "type"]}
        for kind, schema in events.items()
    ]}
    paths["/v1/batch"] = _operation("batch", batch)
    paths["/v1/import"] = _operation("import", {**batch, "description": "Historical import: the same as /v1/batch."})
    return {
        "openapi": "3.0.3",
        "info": {"title": "Journey console tracking API (Segment-compatible)", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {"writeKey": {"type": "http", "scheme": "basic",
                                                        "description": "write key as username, empty password"}}},
    }
