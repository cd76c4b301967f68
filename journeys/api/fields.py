"""Serializer fields shared by the management API."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

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
