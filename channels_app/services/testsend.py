"""Test sends: a message step's message, rendered with sample data, sent once to an address a
person types, to see it as customers will before (or after) the version goes live.

It goes straight to the channel's provider, within the request, and leaves nothing behind in
the channels app: no Delivery (so no quiet hours, frequency cap, rate limit or pause holds it,
and no cap counts it), no customer profile for the address (nobody's profile is created or
changed), no attempt in the channel's health or breaker (a test says nothing about the
channel). Only consent is asked: an address that belongs to a customer who may not get this
message is refused, so a "test" cannot reach someone who opted out. The subject (or, without
one, the text) starts with TEST_PREFIX. Who may send one, and the audit log entry, belong to
the journeys service that calls it (journeys.services.testsend).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime

from django.core.exceptions import ValidationError
from django.utils import timezone

from channels_app.choices import ChannelKind, Reason
from channels_app.models import Channel, MessageTemplate
from channels_app.providers import OutgoingMessage, ProviderError, get_provider
from channels_app.services.consent import consent_refusal
from channels_app.services.locales import locale_clean
from channels_app.services.preview import PREVIEW_LINKS, SAMPLE_PROFILE
from channels_app.services.sending import ADDRESS_FIELDS
from channels_app.services.templates import TemplateRenderError, template_render
from channels_app.services.transactional import ADDRESS_KINDS, address_clean
from journeys.errors import JourneyError
from journeys.models import Identity

TEST_PREFIX = "[Test] "


@dataclass
class SendTestResult:
    """What a test send did: sent (the provider took it) or not, and why."""

    channel: str
    template: str
    to: str
    subject: str
    sent: bool
    provider_message_id: str = ""
    error: str = ""
    missing: list[str] = field(default_factory=list)  # template variables the sample data has no value for
    locale: str = ""  # the variant sent ("" : the template itself)

    def as_dict(self) -> dict:
        return asdict(self)


def channel_takes_address(*, channel: Channel, to: str) -> bool:
    """Whether a test to `to` can go out on `channel` (an email address on email, a phone number on
    SMS or voice, anything on the other kinds, whose addresses are tokens and ids)."""
    try:
        _address(channel, to)
    except JourneyError:
        return False
    return True


def _address(channel: Channel, to: str) -> str:
    if channel.kind in ADDRESS_KINDS:
        return address_clean(channel=channel, to=to)
    if not to.strip():
        raise JourneyError(f"give the {channel.kind} address (token or id) to send the test to", field="to")
    return to.strip()


def _owner_refusal(channel: Channel, template: MessageTemplate, address: str) -> str:
    """Why the customer this address belongs to (if anyone) may not get this message, else ""."""
    kind = ADDRESS_KINDS.get(channel.kind)
    if kind is None:
        return ""
    owner = Identity.objects.filter(kind=kind, value=address.lower() if channel.kind == ChannelKind.EMAIL
                                    else address).select_related("customer").first()
    if owner is None:
        return ""
    refusal = consent_refusal(customer=owner.customer, channel_kind=channel.kind, topic=template.topic,
                              address=address)
    return Reason(refusal).label.lower() if refusal else ""


def message_test_send(*, channel: Channel, template: MessageTemplate, to: str, locale: str = "",
                      now: datetime | None = None) -> SendTestResult:
    """Render `template` with the sample profile (its address field set to `to`) and hand it to
    `channel`'s provider once. `locale` (a language tag) chooses the variant as a customer's locale
    does (`fr_CA` gets fr-CA, else fr), so that a test shows what those customers get; the sample
    profile's locale is it too. Without one, the template itself. Raises ValidationError / JourneyError (field "to") for what the
    person can fix (a disabled channel, an address the channel cannot take, a template that cannot
    be rendered, an address whose owner opted out); a provider's refusal or failure is returned
    (`sent` False, `error`), as it would be recorded for a delivery."""
    now = now or timezone.now()
    locale = locale_clean(locale)
    if not channel.enabled:
        raise ValidationError(f"channel {channel.name!r} is disabled: the step's messages go to its fallback; "
                              "test that step once the channel is enabled")
    address = _address(channel, to)
    if refusal := _owner_refusal(channel, template, address):
        raise JourneyError(f"{address} belongs to a customer who may not get this message ({refusal}); send the test "
                           "to your own address", field="to")
    field_name = (channel.settings or {}).get("address_field") or ADDRESS_FIELDS.get(channel.kind, "user_id")
    profile = {**SAMPLE_PROFILE, **({"locale": locale} if locale else {}), field_name: address}
    context = {"profile": profile, "traits": {}, "scores": {},
               "event": {"name": "Sample Event", "properties": {}}, "journey": {}, "links": PREVIEW_LINKS, "now": now}
    try:
        rendered = template_render(template=template, context=context, locale=locale,
                                   json_body=channel.kind == ChannelKind.WEBHOOK)
    except TemplateRenderError as exc:
        raise ValidationError(f"template {template.name!r} cannot be rendered: {exc}") from None
    subject, body = rendered.subject, rendered.body
    if subject:
        subject = TEST_PREFIX + subject
    else:
        body = TEST_PREFIX + body
    result = SendTestResult(channel=channel.name, template=template.name, to=address, subject=subject, sent=False,
                            missing=list(rendered.missing), locale=rendered.locale)
    message = OutgoingMessage(delivery_id=0, idempotency_key=f"test:{uuid.uuid4().hex}", kind=channel.kind,
                              to=address, subject=subject, body=body, html_body=rendered.html_body,
                              metadata={"test": True, "template": template.name})
    try:
        with get_provider(channel.provider, channel.settings) as provider:
            answer = provider.send(message)
    except (ProviderError, OSError) as exc:
        result.error = str(exc) or type(exc).__name__
        return result
    result.sent, result.provider_message_id = True, answer.provider_message_id
    return result
