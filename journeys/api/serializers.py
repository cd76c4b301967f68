"""Request and response shapes of the tracking API, as DRF serializers (input and output apart).

They describe the API for the OpenAPI document (drf-spectacular reads them through each view's
`request_serializer` / `response_serializers`); they hold no logic. Validation is done by the
parsing service (journeys.services.event_parsing), which checks thousands of events a
second, names the field of every error and decides what is quarantined.
"""

from __future__ import annotations

from rest_framework import serializers

_ID_HELP = "a string or a number, at most 255 characters"


class _EventIn(serializers.Serializer):
    """Fields every event type accepts. Any other top-level field is kept verbatim (Event.other)."""

    userId = serializers.CharField(required=False, max_length=255, help_text=f"userId or anonymousId is required; {_ID_HELP}")
    anonymousId = serializers.CharField(required=False, max_length=255, help_text=_ID_HELP)
    messageId = serializers.CharField(required=False, max_length=255,
                                      help_text="idempotency key: a repeated one (per source) is accepted and stored once")
    timestamp = serializers.DateTimeField(required=False, help_text="when it happened (ISO-8601); corrected for clock skew")
    originalTimestamp = serializers.DateTimeField(required=False, help_text="the client's clock; kept as sent")
    sentAt = serializers.DateTimeField(required=False, help_text="when the client sent it (skew correction)")
    context = serializers.DictField(required=False)
    integrations = serializers.DictField(required=False)
    channel = serializers.CharField(required=False, max_length=64, help_text="server, browser, mobile...")
    version = serializers.CharField(required=False, max_length=32)
    _metadata = serializers.DictField(required=False)
    writeKey = serializers.CharField(required=False, help_text="instead of HTTP Basic auth; never stored")


class TrackIn(_EventIn):
    event = serializers.CharField(max_length=255)
    properties = serializers.DictField(required=False)


class IdentifyIn(_EventIn):
    traits = serializers.DictField(required=False)


class PageIn(_EventIn):
    name = serializers.CharField(required=False, max_length=255)
    category = serializers.CharField(required=False, max_length=255)
    properties = serializers.DictField(required=False)


class ScreenIn(PageIn):
    pass


class GroupIn(_EventIn):
    groupId = serializers.CharField(max_length=255)
    traits = serializers.DictField(required=False)


class AliasIn(_EventIn):
    previousId = serializers.CharField(max_length=255)


EVENT_SERIALIZERS: dict[str, type[serializers.Serializer]] = {
    "track": TrackIn, "identify": IdentifyIn, "page": PageIn, "screen": ScreenIn, "group": GroupIn, "alias": AliasIn,
}


class BatchIn(serializers.Serializer):
    """/v1/batch and /v1/import: up to 2,500 events and 9 MB; each item carries its `type`."""

    batch = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=2500,
                                  help_text="events, each with `type` and the fields of that type's endpoint")
    context = serializers.DictField(required=False, help_text="merged under every event's own context")
    integrations = serializers.DictField(required=False, help_text="merged under every event's own integrations")
    sentAt = serializers.DateTimeField(required=False, help_text="for events without their own sentAt")
    writeKey = serializers.CharField(required=False)


class RejectedOut(serializers.Serializer):
    """One event that was quarantined instead of stored."""

    index = serializers.IntegerField(help_text="its position in the batch (0 for a single-event endpoint)")
    field = serializers.CharField(help_text="the field at fault, e.g. batch[3].event")
    code = serializers.ChoiceField(choices=["invalid_event", "too_large", "too_deep", "schema"])
    message = serializers.CharField()


class AcceptedOut(serializers.Serializer):
    """200: the request was taken. `rejected` is present only when some events were quarantined."""

    success = serializers.BooleanField(help_text="always true")
    rejected = RejectedOut(many=True, required=False)


class ErrorOut(serializers.Serializer):
    """4xx/5xx: nothing of the request was stored."""

    success = serializers.BooleanField(help_text="always false")
    code = serializers.CharField(help_text="too_large, invalid_event, too_deep, invalid_json, invalid_body, "
                                 "unsupported_media_type, unsupported_encoding, not_acceptable, unauthorized, "
                                 "source_disabled, rate_limited, unavailable...")
    field = serializers.CharField(required=False, help_text="the field at fault, with its batch index")
    message = serializers.CharField()


RESPONSES = {200: AcceptedOut, 400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 406: ErrorOut, 413: ErrorOut, 415: ErrorOut,
             429: ErrorOut, 503: ErrorOut}
