"""Sending messages: render, pick the channel (fallback), record a Delivery, hand it to the provider."""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.template import Context, Engine, TemplateSyntaxError
from django.utils import timezone

from channels_app.models import Channel, ChannelKind, Delivery, DeliveryStatus, MessageTemplate

logger = logging.getLogger(__name__)

# A private engine: no builtins beyond the defaults, no app template tags, autoescape on.
_ENGINE = Engine(autoescape=True, string_if_invalid="")


def template_render(*, template: MessageTemplate, context: dict) -> tuple[str, str]:
    """Render subject and body with plain-dict context only (no model objects, no settings)."""
    ctx = Context(context, autoescape=True)
    return _ENGINE.from_string(template.subject).render(ctx), _ENGINE.from_string(template.body).render(ctx)


def template_check(*, text: str) -> str | None:
    try:
        _ENGINE.from_string(text)
    except TemplateSyntaxError as exc:
        return str(exc)
    return None


def _address(channel: Channel, profile: dict) -> str:
    if channel.kind == ChannelKind.EMAIL:
        return profile.get("email") or ""
    if channel.kind in (ChannelKind.SMS, ChannelKind.VOICE):
        return profile.get("phone") or ""
    return str(profile.get("user_id") or "")


def channel_pick(*, channel: Channel, profile: dict) -> tuple[Channel | None, str]:
    """Follow fallbacks past disabled channels and ones without an address for this customer."""
    seen = set()
    current = channel
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        if current.enabled and _address(current, profile):
            return current, _address(current, profile)
        current = current.fallback
    return None, ""


@transaction.atomic
def message_send(*, customer, template: MessageTemplate, channel: Channel, idempotency_key: str, context: dict,
                 run_id=None, step_key: str = "") -> Delivery:
    """Record a delivery once per idempotency key and send it after commit."""
    existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing
    picked, to = channel_pick(channel=channel, profile=context.get("profile", {}))
    subject, body = template_render(template=template, context=context)
    try:
        with transaction.atomic():
            delivery = Delivery.objects.create(
                idempotency_key=idempotency_key, customer=customer, channel=picked or channel, template=template,
                run_id=run_id, step_key=step_key, to=to, subject=subject, body=body,
                status=DeliveryStatus.QUEUED if picked else DeliveryStatus.SUPPRESSED,
                error="" if picked else "no enabled channel can reach this customer",
            )
    except IntegrityError:
        return Delivery.objects.get(idempotency_key=idempotency_key)
    if picked:
        transaction.on_commit(lambda: delivery_send(delivery_id=delivery.pk))
    return delivery


def delivery_send(*, delivery_id: int) -> Delivery:
    """Hand a queued delivery to its provider (the console provider logs it)."""
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().select_related("channel").get(pk=delivery_id)
        if delivery.status != DeliveryStatus.QUEUED:
            return delivery
        logger.info("[%s via %s] to %s: %s | %s", delivery.channel.kind, delivery.channel.provider,
                    delivery.to, delivery.subject, delivery.body[:200])
        delivery.status = DeliveryStatus.SENT
        delivery.sent_at = timezone.now()
        delivery.save(update_fields=["status", "sent_at"])
    return delivery
