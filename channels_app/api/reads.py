"""Read-only management API views of the channels app (/api/v1): channels, message templates
and deliveries, so that a platform team finds ids and names and follows messages without the
admin. Thin: a query serializer checks the filters, a selector reads, an output serializer renders."""

from __future__ import annotations

from rest_framework import serializers

from channels_app import selectors
from channels_app.api.views import DeliveryOut
from channels_app.choices import BreakerState, ChannelKind, DeliveryStatus
from channels_app.models import Channel, MessageTemplate
from journeys.api.fields import MAX_ID
from journeys.api.management import ReadOnlyViewSet, read_schema, refusal
from journeys.api.management_serializers import FilterQuery
from journeys.choices import ApiScope


class ChannelOut(serializers.ModelSerializer):
    """A channel as the API shows it: never its settings (provider configuration) or secrets."""

    breaker_state = serializers.ChoiceField(choices=BreakerState.choices,
                                            help_text="closed (sending), open (failing: sends wait or fall back), "
                                                      "half_open (probing)")
    breaker_opened_at = serializers.DateTimeField(allow_null=True)
    fallback_id = serializers.IntegerField(allow_null=True, help_text="channel used when this one cannot send")

    class Meta:
        model = Channel
        fields = ("id", "name", "kind", "provider", "enabled", "paused", "fallback_id", "breaker_state",
                  "breaker_opened_at")


class TemplateOut(serializers.ModelSerializer):
    channel_kind = serializers.ChoiceField(choices=ChannelKind.choices, allow_blank=True,
                                           help_text="empty: any channel kind")
    topic = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True,
                                         help_text="subscription topic (consent); null: none")

    class Meta:
        model = MessageTemplate
        fields = ("id", "name", "channel_kind", "topic")


class DeliveryReadOut(DeliveryOut):
    workflow_id = serializers.IntegerField(allow_null=True, help_text="the workflow whose run sent it; "
                                                                      "null: sent through the API")
    topic = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)

    class Meta(DeliveryOut.Meta):
        fields = (*DeliveryOut.Meta.fields, "workflow_id", "run_id", "step_key", "topic", "transactional")


class DeliveryQuery(FilterQuery):
    customer_id = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID,
                                           help_text="a merged-away profile's id reads its survivor's deliveries")
    workflow_id = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID,
                                           help_text="deliveries sent by this workflow's runs")
    status = serializers.ChoiceField(required=False, choices=DeliveryStatus.choices)
    since = serializers.DateTimeField(required=False, help_text="created at or after this ISO 8601 time; only with "
                                                                "customer_id or workflow_id")


@read_schema(list_out=ChannelOut, list_summary="List channels (by id, pages)", noun="channel", one_out=ChannelOut,
             one_summary="A channel")
class ChannelViewSet(ReadOnlyViewSet):
    """Channels: name, kind, provider, paused, breaker state (no settings, no secrets)."""

    scope = ApiScope.CHANNELS_READ
    serializer_class = list_serializer = ChannelOut

    def get_queryset(self):
        return selectors.channels_list()


@read_schema(list_out=TemplateOut, list_summary="List message templates (by id, pages)", noun="template",
             one_out=TemplateOut, one_summary="A message template")
class TemplateViewSet(ReadOnlyViewSet):
    """Message templates: the names /api/v1/messages takes, their channel kind and topic."""

    scope = ApiScope.CHANNELS_READ
    serializer_class = list_serializer = TemplateOut

    def get_queryset(self):
        return selectors.templates_list()


@read_schema(list_out=DeliveryReadOut, parameters=[DeliveryQuery], noun="delivery", one_out=DeliveryReadOut,
             list_summary="List deliveries, oldest first, by customer, workflow, status and time",
             list_refusal=refusal("a bad `limit` (not 1 to 500), `cursor` or filter (also `since` without "
                                  "customer_id or workflow_id); `field` names it"),
             one_summary="A delivery: status and reason, channel, template, attempts, timestamps")
class DeliveryViewSet(ReadOnlyViewSet):
    """Every delivery (journeys' and the API's): status, reason, channel, template, timestamps."""

    scope = ApiScope.DELIVERIES_READ
    serializer_class = list_serializer = DeliveryReadOut

    def get_queryset(self):
        if self.action != "list":
            return selectors.deliveries_lookup()
        query = DeliveryQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        try:
            return selectors.deliveries_lookup(**query.validated_data)
        except selectors.DeliveryFilterRefused as exc:
            raise serializers.ValidationError({exc.field: [str(exc)]}) from None
