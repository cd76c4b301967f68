"""Messages API (/api/v1/messages): send one transactional message, read its status."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response

from channels_app.models import Delivery
from channels_app.services.transactional import transactional_send
from journeys.api.base import TokenApiView
from journeys.api.fields import MAX_ID, InputSerializer, JSONObjectField
from journeys.api.management import INPUT_REFUSALS, REFUSALS, refusal
from journeys.choices import ApiScope
from journeys.models import Customer
from journeys.services import customers_api


class MessageIn(InputSerializer):
    """A template to a customer (user_id or customer_id) or to a raw address (`to`)."""

    idempotency_key = serializers.CharField(max_length=190, help_text="a replay returns the same delivery")
    template = serializers.CharField(max_length=100, help_text="message template name")
    channel = serializers.CharField(required=False, max_length=100,
                                    help_text="channel name; default: the first enabled channel of the template's kind")
    user_id = serializers.CharField(required=False, max_length=255)
    customer_id = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    to = serializers.CharField(required=False, max_length=320, help_text="an email address or phone number")
    data = JSONObjectField(required=False, max_bytes=16 * 1024, help_text="read by the template as journey.*")
    locale = serializers.CharField(required=False, max_length=255, allow_blank=True,
                                   help_text="language tag (fr, pt-BR; pt_BR is read as pt-BR) choosing the "
                                             "template's variant instead of the customer's locale: the tag, then "
                                             "less specific ones (pt-BR, then pt), else the template itself")

    def validate(self, attrs: dict) -> dict:
        given = [k for k in ("user_id", "customer_id", "to") if k in attrs]
        if len(given) != 1:
            raise serializers.ValidationError({"to": "name the recipient by exactly one of user_id, customer_id or to"})
        return attrs


class DeliveryOut(serializers.ModelSerializer):
    channel = serializers.CharField(source="channel.name")
    channel_kind = serializers.CharField(source="channel.kind")
    template = serializers.CharField(source="template.name", allow_null=True, default=None)
    reason_label = serializers.CharField(source="get_reason_display")
    missing = serializers.SerializerMethodField(help_text="template variables that had no value (rendered empty)")

    class Meta:
        model = Delivery
        fields = ("id", "status", "reason", "reason_label", "error", "attempts", "channel", "channel_kind", "template",
                  "customer_id", "created_at", "sent_at", "delivered_at", "opened_at", "clicked_at", "next_attempt_at",
                  "missing")

    def get_missing(self, delivery: Delivery) -> list[str]:
        return list((delivery.notes or {}).get("missing", []))


class MessageOut(serializers.Serializer):
    delivery = DeliveryOut()
    replayed = serializers.BooleanField()


class MessageViewSet(TokenApiView, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Transactional messages sent through the API, and their status."""

    scope = ApiScope.SEND
    serializer_class = DeliveryOut
    lookup_value_regex = r"[0-9]+"

    def get_queryset(self):
        return Delivery.objects.filter(idempotency_key__startswith="api:").select_related("channel", "template")

    @extend_schema(request=MessageIn, responses={202: MessageOut, 200: MessageOut, **INPUT_REFUSALS},
                   summary="Send one message (consent, caps and dispatch apply); returns the delivery")
    def create(self, request):
        body = MessageIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        customer = None
        if "customer_id" in data or "user_id" in data:
            found = (customers_api.customers_lookup(user_id=data["user_id"]).first() if "user_id" in data else
                     Customer.objects.filter(pk=data["customer_id"]).first())
            if found is None:
                field = "user_id" if "user_id" in data else "customer_id"
                raise serializers.ValidationError({field: "no such customer"})
            customer = customers_api.customer_writable(customer=customers_api.customer_get(pk=found.pk),
                                                       field="user_id" if "user_id" in data else "customer_id")
        delivery, created = transactional_send(
            template_name=data["template"], channel_name=data.get("channel"), token=request.auth,
            key=data["idempotency_key"], data=data.get("data") or {}, customer=customer, to=data.get("to", ""),
            locale=data.get("locale", ""),
        )
        return Response({"delivery": DeliveryOut(delivery).data, "replayed": not created},
                        status=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)

    @extend_schema(responses={200: DeliveryOut, 404: refusal("no such message"), **REFUSALS},
                   summary="A message's status: queued, deferred, sent, delivered, failed, suppressed (with reason)")
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)
