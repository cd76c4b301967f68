"""Template previews: one service and one permission rule for the admin's preview page and the
console's step-form preview, so both show a real customer's data only to those who may see it.

Rule: previewing needs channels_app.view_messagetemplate; naming a customer needs what the
Customer 360 needs (journeys.selectors.user_can_view_customers). Anyone else (an editor or an
approver reading templates) sees the sample profile, and naming a customer is refused (403).
What is shown is what would be sent: the channels app's own message_context (personalization
consent included) and template_render."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from channels_app.choices import ChannelKind
from channels_app.models import MessageTemplate
from channels_app.services.locales import locale_clean
from channels_app.services.sending import message_context
from channels_app.services.templates import ROOTS, TemplateRenderError, template_render
from journeys.errors import JourneyError
from journeys.models import Customer, Event
from journeys.selectors import customer_find, user_can_view_customers

SAMPLE_PROFILE = {"first_name": "Sam", "email": "sam@example.com"}
PREVIEW_LINKS = {"unsubscribe_url": "#unsubscribe", "preferences_url": "#preferences"}


def template_may_preview(*, user: Any) -> bool:
    return bool(user.is_active and (user.is_superuser or user.has_perm("channels_app.view_messagetemplate")))


def template_preview(*, user: Any, template: MessageTemplate | str, customer_ref: str = "",
                     event: dict | None = None, event_name: str = "", journey: dict | None = None,
                     locale: str = "", now: datetime | None = None) -> dict:
    """Render `template` (an object or a name) for the customer `customer_ref` names (any id,
    email or #number) or, without one, the most recently seen customer (for those who may view
    customers) or the sample profile. `event` is the event the template reads; without it,
    `event_name` picks the customer's latest such event (never another customer's).

    Returns {"ok": True, "template", "customer", "subject", "body", "html", "locale", "missing",
    "errors", "unknown" (the missing ones under a root no data has: `trait.x`)} or {"ok": False, "field", "error"} with "status": 403 for a refusal."""
    if not template_may_preview(user=user):
        return {"ok": False, "status": 403, "field": "template", "error": "you may not preview templates"}
    try:
        locale = locale_clean(locale)
    except JourneyError as exc:
        return {"ok": False, "field": "locale", "error": exc.message}
    found = template if isinstance(template, MessageTemplate) else \
        MessageTemplate.objects.filter(name=str(template)).first()
    if found is None:
        return {"ok": False, "field": "template", "error": f"no template named {template!r}"}
    now = now or timezone.now()
    may_view_customers = user_can_view_customers(user)
    customer: Customer | None = None
    if customer_ref.strip():
        if not may_view_customers:
            return {"ok": False, "status": 403, "field": "customer", "error": "you may not view customers"}
        customer = customer_find(value=customer_ref)
        if customer is None:
            return {"ok": False, "field": "customer", "error": f"no customer with id or email {customer_ref.strip()!r}"}
    elif may_view_customers:
        customer = Customer.objects.filter(merged_into__isnull=True).order_by("-last_seen", "-id").first()
    if event is None:
        latest = (Event.objects.filter(name=event_name, customer=customer).order_by("-id").first()
                  if customer is not None and event_name else None)
        event = {"name": latest.name, "properties": latest.properties or {}} if latest else \
            {"name": event_name or "Sample Event", "properties": {}}
    context = {"event": event, "journey": journey or {}, "links": PREVIEW_LINKS}
    if customer is not None:
        context = message_context(customer=customer, now=now, context=context)
    else:
        context = {**context, "profile": dict(SAMPLE_PROFILE), "now": now}
    try:
        rendered = template_render(template=found, context=context, json_body=found.channel_kind == ChannelKind.WEBHOOK,
                                   locale=locale or (customer.locale if customer else ""))
    except TemplateRenderError as exc:
        return {"ok": False, "field": "template", "error": f"the template cannot be rendered: {exc}"}
    return {"ok": True, "template": found.name,
            "customer": (customer.external_id or f"#{customer.pk}") if customer else "sample",
            "subject": rendered.subject, "body": rendered.body, "html": rendered.html_body,
            "locale": rendered.locale or "default", "missing": rendered.missing, "errors": rendered.errors,
            "unknown": [name for name in rendered.missing if name.split(".")[0] not in ROOTS]}
