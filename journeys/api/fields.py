"""Serializer fields shared by the management API."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.settings import api_settings

from journeys.errors import JourneyError
from journeys.services.event_parsing import check_event_size

MAX_ID = 2**63 - 1  # the largest row id (a bigint): larger ids are refused before any query


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.JSONField):
    """A JSON object that every database can store: no NUL characters, no lone surrogates,
    no infinite numbers (1e999), at most `max_bytes` once serialised."""

    default_error_messages = {"not_object": "must be a JSON object"}

    def __init__(self, *, max_bytes: int = 32 * 1024, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, dict):
            self.fail("not_object")
        try:
            check_event_size(data, max_bytes=self.max_bytes, prefix="")
        except (JourneyError, ValueError) as exc:
            raise serializers.ValidationError(getattr(exc, "message", str(exc))) from None
        return data


class InputSerializer(serializers.Serializer):
    """A request body of the management API, or an object inside one: a JSON object whose every
    field is known. A misspelt field (`dat` for `data`) is refused naming it, never dropped, so a
    message is not sent without its data."""

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            where = "body" if self.parent is None else api_settings.NON_FIELD_ERRORS_KEY
            raise serializers.ValidationError({where: ["must be a JSON object"]}, code="invalid")
        unknown = [name for name in data if name not in self.fields]
        if unknown:
            name = str(unknown[0])
            close = difflib.get_close_matches(name, list(self.fields), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"the fields are {', '.join(self.fields)}"
            raise serializers.ValidationError({name: [f"unknown field; {hint}"]}, code="unknown_field")
        return super().to_internal_value(data)


class InputSerializerSchema(OpenApiSerializerExtension):
    """In the OpenAPI document, an InputSerializer's object takes no other properties."""

    target_class = InputSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        return {**auto_schema._map_basic_serializer(self.target, direction), "additionalProperties": False}
