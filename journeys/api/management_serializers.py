"""Input and output serializers of the management API (shapes and field checks only: the
services decide)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from journeys.api.fields import MAX_ID, InputSerializer, JSONObjectField
from journeys.choices import TriggerKind, VersionState, WorkflowStatus
from journeys.errors import JourneyError
from journeys.models import Job
from journeys.timezones import traits_zone_checked

# --------------------------------------------------------------------------- errors


class ApiErrorOut(serializers.Serializer):
    """Every 4xx of the management API (journeys.api.base.api_exception_handler)."""

    code = serializers.CharField(help_text="invalid, required, unknown_field, not_found, idempotency_key_reused, "
                                           "too_large, unsupported_media_type, not_acceptable, method_not_allowed, "
                                           "not_authenticated, permission_denied, throttled...")
    message = serializers.CharField(help_text="for people; starts with the field when there is one")
    field = serializers.CharField(required=False, help_text="the bad input, e.g. recipients[2].user_id")
    errors = serializers.JSONField(required=False, help_text="every message, by field (validation errors)")


# --------------------------------------------------------------------------- customers


class IdentityOut(serializers.Serializer):
    kind = serializers.CharField()
    value = serializers.CharField()


class ConsentOut(serializers.Serializer):
    channel_kind = serializers.CharField(help_text="empty = every channel")
    topic = serializers.CharField(allow_null=True, help_text="null = every topic")
    status = serializers.CharField()
    source = serializers.CharField()
    updated_at = serializers.DateTimeField()


class CustomerOut(serializers.Serializer):
    id = serializers.IntegerField()
    user_id = serializers.CharField()
    email = serializers.CharField()
    phone = serializers.CharField()
    timezone = serializers.CharField()
    locale = serializers.CharField()
    stage = serializers.CharField(help_text="lifecycle stage key")
    traits = serializers.DictField()
    first_seen = serializers.DateTimeField(allow_null=True)
    last_seen = serializers.DateTimeField(allow_null=True)
    identities = IdentityOut(many=True)
    consents = ConsentOut(many=True)
    merged_ids = serializers.ListField(child=serializers.IntegerField(), help_text="profiles merged into this one")


class CustomerListOut(serializers.Serializer):
    id = serializers.IntegerField()
    user_id = serializers.CharField(source="external_id")
    email = serializers.CharField()
    stage = serializers.CharField()
    last_seen = serializers.DateTimeField(allow_null=True)


class FilterQuery(serializers.Serializer):
    """The query parameters filtering a list: each optional; a bad value is a 400 naming it."""

    def to_internal_value(self, data):
        # An empty filter (?user_id=) would be read as no filter, listing everyone: refuse it.
        blank = next((name for name in self.fields if data.get(name) == ""), None)
        if blank:
            raise serializers.ValidationError({blank: ["may not be blank (leave the filter out to list everyone)"]})
        return super().to_internal_value(data)


class CustomerQuery(FilterQuery):
    user_id = serializers.CharField(required=False, max_length=255)
    email = serializers.CharField(required=False, max_length=320)
    phone = serializers.CharField(required=False, max_length=64)
    anonymous_id = serializers.CharField(required=False, max_length=255)


class TraitsIn(InputSerializer):
    traits = JSONObjectField(help_text="traits to set (others are kept); email and phone also fill the profile")

    def validate_traits(self, value: dict) -> dict:
        if not value:
            raise serializers.ValidationError("name at least one trait")
        try:
            return traits_zone_checked(value, stored=self.context.get("stored_traits"))
        except JourneyError as exc:  # 400 naming traits.timezone, nothing changed
            raise serializers.ValidationError({"timezone": [exc.message]}) from None


class TraitsOut(serializers.Serializer):
    changes = serializers.DictField(help_text="{trait: [old, new]} for the traits that changed")
    customer = CustomerOut()


class MergeIn(InputSerializer):
    merge = serializers.IntegerField(min_value=1, max_value=MAX_ID, help_text="id of the customer folded into this one")
    reason = serializers.CharField(required=False, allow_blank=True, max_length=255)


class EraseIn(InputSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=255,
                                   help_text="e.g. the request's ticket number")


# --------------------------------------------------------------------------- workflows


class WorkflowListOut(serializers.Serializer):
    """A workflow as listed: enough to trigger it (`id`) and to know whether it runs."""

    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=WorkflowStatus.choices, help_text="active, paused or archived")
    paused = serializers.BooleanField(help_text="true while ops have paused it (no new entries, sends wait)")
    live_version = serializers.IntegerField(source="live_number", allow_null=True,
                                            help_text="number of the live version; null: never published")
    trigger_kind = serializers.ChoiceField(choices=TriggerKind.choices, allow_null=True,
                                           help_text="the live version's trigger; null without a live version")
    trigger_event = serializers.CharField(allow_null=True, help_text="event name, for event triggers")
    updated_at = serializers.DateTimeField()


class WorkflowVersionOut(serializers.Serializer):
    number = serializers.IntegerField()
    state = serializers.ChoiceField(choices=VersionState.choices)
    trigger_kind = serializers.ChoiceField(choices=TriggerKind.choices)
    published_at = serializers.DateTimeField(allow_null=True, help_text="when it went live; null: never")
    retired_at = serializers.DateTimeField(allow_null=True)


class WorkflowOut(WorkflowListOut):
    description = serializers.CharField()
    business_unit = serializers.CharField(source="business_unit.slug")
    canary_version = serializers.IntegerField(source="canary_number", allow_null=True,
                                              help_text="number of a version taking a share of new entries")
    canary_percent = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    versions = WorkflowVersionOut(many=True, help_text="every version, by number")


# --------------------------------------------------------------------------- jobs


class JobOut(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = ("id", "kind", "status", "progress_done", "progress_total", "message", "result", "error",
                  "created_at", "started_at", "finished_at")


# --------------------------------------------------------------------------- triggers


class RecipientIn(InputSerializer):
    """One recipient: exactly one of user_id, email or customer_id."""

    user_id = serializers.CharField(required=False, max_length=255)
    email = serializers.EmailField(required=False, max_length=320)
    customer_id = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    data = JSONObjectField(required=False, max_bytes=16 * 1024,
                           help_text="this recipient's journey variables (journey.*)")

    def validate(self, attrs: dict) -> dict:
        given = [k for k in ("user_id", "email", "customer_id") if k in attrs]
        if len(given) != 1:
            raise serializers.ValidationError({"user_id": "name the recipient by exactly one of user_id, email or "
                                                          "customer_id"})
        return attrs


class TriggerIn(InputSerializer):
    idempotency_key = serializers.CharField(max_length=200, help_text="the same key and request return the same "
                                                                      "result and never enrol twice")
    recipients = RecipientIn(many=True, required=False, allow_empty=False)
    segment = serializers.CharField(required=False, max_length=5000, help_text="a rule over profile.* "
                                    "(e.g. 'profile.plan == \"pro\"'); everyone matching it is enrolled")
    data = JSONObjectField(required=False, max_bytes=16 * 1024, help_text="journey variables for every recipient")

    def validate_recipients(self, value: list) -> list:
        limit = settings.API["TRIGGER_MAX_RECIPIENTS"]
        if len(value) > limit:
            raise serializers.ValidationError(f"{len(value)} recipients; at most {limit} per request")
        return value

    def validate(self, attrs: dict) -> dict:
        if ("recipients" in attrs) == ("segment" in attrs):
            raise serializers.ValidationError({"recipients": "give either recipients or a segment"})
        return attrs


class TriggerOut(serializers.Serializer):
    job = JobOut()
    replayed = serializers.BooleanField(help_text="true when this key was seen before (nothing new was done)")
