"""OpenAPI 3 description of the tracking API (served at /v1/openapi.json, fuzzed by schemathesis)."""

from __future__ import annotations

_ID = {"oneOf": [{"type": "string", "maxLength": 255}, {"type": "integer"}]}
_OBJ = {"type": "object", "additionalProperties": True}
_TS = {"type": "string", "format": "date-time"}
_COMMON = {
    "userId": _ID, "anonymousId": _ID, "messageId": {"type": "string", "maxLength": 255},
    "timestamp": _TS, "sentAt": _TS, "context": _OBJ, "integrations": _OBJ, "writeKey": {"type": "string"},
}


def _event(extra: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "properties": {**_COMMON, **extra}}
    if required:
        schema["required"] = required
    return schema


EVENTS = {
    "track": _event({"event": {"type": "string", "minLength": 1, "maxLength": 255}, "properties": _OBJ}, ["event"]),
    "identify": _event({"traits": _OBJ}),
    "page": _event({"name": {"type": "string"}, "category": {"type": "string"}, "properties": _OBJ}),
    "screen": _event({"name": {"type": "string"}, "properties": _OBJ}),
    "group": _event({"groupId": _ID, "traits": _OBJ}, ["groupId"]),
    "alias": _event({"previousId": _ID}, ["previousId"]),
}
_ANSWERS = {
    "200": {"description": "stored (or a repeated messageId, ignored)",
            "content": {"application/json": {"schema": {"type": "object", "properties": {"success": {"type": "boolean"}}}}}},
    "400": {"description": "invalid event; `field` names it (with the batch index)"},
    "401": {"description": "missing or wrong write key"},
    "403": {"description": "the source is disabled"},
    "413": {"description": "over 32 KB per event, 500 KB or 2,500 events per batch"},
    "415": {"description": "unsupported Content-Encoding"},
    "429": {"description": "rate limit; see Retry-After"},
    "503": {"description": "storage unavailable; retry after Retry-After"},
}


def tracking_openapi() -> dict:
    paths = {
        f"/v1/{kind}": {"post": {"operationId": kind, "security": [{"writeKey": []}],
                                 "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                                 "responses": _ANSWERS}}
        for kind, schema in EVENTS.items()
    }
    item = {"oneOf": [{**schema, "properties": {**schema["properties"], "type": {"const": kind}},
                       "required": [*schema.get("required", []), "type"]} for kind, schema in EVENTS.items()]}
    paths["/v1/batch"] = {"post": {
        "operationId": "batch", "security": [{"writeKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["batch"],
            "properties": {"batch": {"type": "array", "minItems": 1, "maxItems": 2500, "items": item},
                           "context": _OBJ, "integrations": _OBJ, "sentAt": _TS, "writeKey": {"type": "string"}}}}}},
        "responses": _ANSWERS}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Journey console tracking API (Segment-compatible)", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {"writeKey": {"type": "http", "scheme": "basic",
                                                        "description": "write key as username, empty password"}}},
    }
