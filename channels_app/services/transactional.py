"""One message sent on request through the API (receipts, password resets): a template to a
customer or to a raw address, with per-message data the template reads as `journey.*`.

It goes through `message_send`, so consent (the template's topic decides: a transactional
topic passes everything but global do-not-contact), reachability, idempotency and dispatch
apply as to any message. Idempotent by the client's key: the Delivery's own unique key, holding
the client's key as a keyed digest (`api:#<digest>`: keys often name the person).
"""

from __future__ import annotations

import re
from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from channels_app.choices import ChannelKind, Reason
from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.services.locales import locale_clean
from channels_app.services.sending import message_record
from journeys.choices import IdentityKind
from journeys.engine.runtime import profile_dict
from journeys.errors import JourneyError
from journeys.models import ApiToken, Customer
from journeys.services.api_jobs import idempotency_check, idempotency_key_forms, request_fingerprint
from journeys.services.customers_api import customer_for_address
from journeys.services.identity import phone_e164, phone_normalize

ADDRESS_KINDS = {ChannelKind.EMAIL: IdentityKind.EMAIL, ChannelKind.SMS: IdentityKind.PHONE,
                 ChannelKind.VOICE: IdentityKind.PHONE}
ADDRESS_FIELDS = {ChannelKind.EMAIL: "email", ChannelKind.SMS: "phone", ChannelKind.VOICE: "phone"}
MAX_EMAIL_LENGTH = 254  # RFC 5321's longest address path; identities hold at most 255
MAX_PHONE_DIGITS = 20  # E.164 has 15; room for an international prefix (00...) written out
# an RFC 6531 local part: dot-atoms of ASCII atext or any non-ASCII character
_UTF8_LOCAL = re.compile(r"[^\x00-\x20\x7f\"(),.:;<>@\[\\\]]+(?:\.[^\x00-\x20\x7f\"(),.:;<>@\[\\\]]+)*")


def _template_and_channel(template_name: str, channel_name: str | None) -> tuple[MessageTemplate, Channel]:
    template = MessageTemplate.objects.select_related("topic").filter(name=template_name).first()
    if template is None:
        raise JourneyError(f"no message template named {template_name!r}", field="template")
    if channel_name:
        channel = Channel.objects.select_related("fallback").filter(name=channel_name).first()
        if channel is None:
            raise JourneyError(f"no channel named {channel_name!r}", field="channel")
    elif template.channel_kind:
        channel = (Channel.objects.select_related("fallback").filter(kind=template.channel_kind, enabled=True)
                   .order_by("id").first())
        if channel is None:
            raise JourneyError(f"no enabled {template.channel_kind} channel for template {template.name!r}",
                               field="channel")
    else:
        raise JourneyError(f"template {template.name!r} fits any channel: name the channel", field="channel")
    if template.channel_kind and channel.kind != template.channel_kind:
        raise JourneyError(f"template {template.name!r} is for {template.channel_kind}, channel {channel.name!r} is "
                           f"{channel.kind}", field="channel")
    return template, channel


def address_clean(*, channel: Channel, to: str) -> str:
    """An email address or phone number typed for `channel`, checked and normalised (a phone
    number as inbound SMS will name it); raises JourneyError(field="to") saying what is wrong."""
    kind = ADDRESS_KINDS.get(channel.kind)
    if kind is None:
        raise JourneyError(f"a raw address needs an email, SMS or voice channel, not {channel.kind}", field="to")
    to = to.strip()
    if kind == IdentityKind.EMAIL:
        if len(to) > MAX_EMAIL_LENGTH:
            raise JourneyError(f"is too long for an email address (at most {MAX_EMAIL_LENGTH} characters)",
                               field="to")
        local, _, domain = to.rpartition("@")
        try:
            # a non-ASCII local part (RFC 6531) is valid: sent with SMTPUTF8 where the mail server offers it,
            # else failed saying so, as the same address from a journey (Django's validator knows only ASCII)
            validate_email(to if local.isascii() else f"x@{domain}")
            if not local.isascii() and not _UTF8_LOCAL.fullmatch(local):
                raise ValidationError("bad local part")
        except ValidationError:
            raise JourneyError("is not a valid email address", field="to") from None
    else:
        to = phone_normalize(to)  # stored and matched as inbound SMS (STOP) will name it
        digits = to.removeprefix("+")
        if not (digits.isascii() and digits.isdigit()):
            raise JourneyError("is not a phone number (digits, optionally after + and with spaces, dashes, dots "
                               "or parentheses)", field="to")
        if len(digits) > MAX_PHONE_DIGITS:
            raise JourneyError(f"is too long for a phone number (at most {MAX_PHONE_DIGITS} digits)", field="to")
        to = phone_e164(to)
        if not to:
            raise JourneyError("has no country code: SMS and voice numbers go out in E.164, '+' and the country "
                               "code first (e.g. +14155550199; an international 00 prefix is taken as +)", field="to")
    return to


def _address_customer(channel: Channel, to: str, now: datetime) -> tuple[Customer, str]:
    """The customer `to` belongs to (found by the spelling typed too: a number an older release
    stored as typed, journeys 0028), and `to` checked and normalised."""
    address = address_clean(channel=channel, to=to)
    return customer_for_address(kind=ADDRESS_KINDS[channel.kind], value=to.strip(), now=now), address


def transactional_send(*, template_name: str, token: ApiToken, key: str, data: dict, customer: Customer | None = None,
                       to: str = "", channel_name: str | None = None, locale: str = "",
                       now: datetime | None = None) -> tuple[Delivery, bool]:
    """Record the message (sent after commit by the dispatcher); returns (delivery, created).
    A replay of the key returns the first delivery; the same key for another message is refused.
    `locale` (a language tag, `pt-BR` or `pt_BR`) picks the template's variant instead of the
    customer's locale; one that is no language tag is refused (JourneyError, field "locale")."""
    locale = locale_clean(locale)
    request = {"template": template_name, "channel": channel_name, "data": data,
               "customer": customer.pk if customer else None, "to": to}
    if locale:  # (a request without one keeps the fingerprint it always had: replays of older keys)
        request["locale"] = locale
    stored, *older = idempotency_key_forms(f"api:{key}")
    existing = Delivery.objects.filter(idempotency_key__in=[stored, *older]).order_by("pk").first()
    if existing is not None:
        idempotency_check(stored_hash=(existing.notes or {}).get("api_request"), request=request, what="message")
        return existing, False
    now = now or timezone.now()
    template, channel = _template_and_channel(template_name, channel_name)
    context: dict = {"journey": data}
    with transaction.atomic():
        if customer is None:
            customer, address = _address_customer(channel, to, now)
            context["profile"] = {**profile_dict(customer, now), ADDRESS_FIELDS[channel.kind]: address}
        stamp = {"api_token": token.name, "api_request": request_fingerprint(request)}
        delivery, created = message_record(customer=customer, template=template, channel=channel,
                                           idempotency_key=stored, context=context, now=now, notes=stamp,
                                           locale=locale or None)
        if created and delivery.reason == Reason.TEMPLATE_ERROR:  # the caller can fix it: refused, nothing kept
            unfilled = [m.split(".", 1)[1] for m in (delivery.notes or {}).get("missing", [])
                        if m.startswith("journey.")]
            raise JourneyError(f"template {template.name!r} cannot be sent: {delivery.error}",
                               field=f"data.{unfilled[0]}" if unfilled else "template")
        if "api_request" not in (delivery.notes or {}):  # a template that failed to render keeps no notes
            delivery.notes = {**(delivery.notes or {}), **stamp}
            Delivery.objects.filter(pk=delivery.pk).update(notes=delivery.notes)
    # a concurrent request with this key stored it first: the same message is a replay (200), another is refused
    idempotency_check(stored_hash=delivery.notes["api_request"], request=request, what="message")
    return delivery, created
