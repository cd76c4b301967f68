"""The send_message and webhook step kinds."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from journeys.engine.durations import parse_duration
from journeys.engine.registry import StepKind, StepResult, register, require
from journeys.engine.runtime import StepContext, event_dict


def _gap(config: dict) -> dict:
    """Optional pressure settings shared by messaging steps."""
    out = {}
    raw = config.get("min_gap_other_channel")
    if raw not in (None, "", 0):
        try:
            out["min_gap_other_channel"] = int(parse_duration(raw, field="min_gap_other_channel").total_seconds())
        except ValueError as exc:
            raise ValidationError({"min_gap_other_channel": str(exc).split(": ", 1)[-1]}) from None
        action = config.get("recent_contact_action") or "defer"
        if action not in ("defer", "suppress"):
            raise ValidationError({"recent_contact_action": "must be defer or suppress"})
        out["recent_contact_action"] = action
    return out


@register
class SendMessage(StepKind):
    kind = "send_message"
    label = "Send a message"
    help = ("Renders a template and sends it on a channel (falling back along the channel's fallback chain). "
            "Consent, quiet hours and frequency caps apply; a holdout customer's message is suppressed.")
    side_effects = True
    fields = {
        "channel": "channel name",
        "template": "template name",
        "min_gap_other_channel": "optional, e.g. 4h: not within this long of the last contact on another channel",
        "recent_contact_action": "defer (default) or suppress",
    }

    def clean(self, config):
        from channels_app.models import Channel, MessageTemplate

        channel = require(config, "channel", str, "a channel name")
        template = require(config, "template", str, "a template name")
        if not Channel.objects.filter(name=channel).exists():
            raise ValidationError({"channel": f"no channel named {channel!r}"})
        found = MessageTemplate.objects.filter(name=template).first()
        if found is None:
            raise ValidationError({"template": f"no template named {template!r}"})
        kind = Channel.objects.get(name=channel).kind
        if found.channel_kind and found.channel_kind != kind:
            raise ValidationError({"template": f"template {template!r} is for {found.channel_kind}, "
                                               f"channel {channel!r} is {kind}"})
        return {"channel": channel, "template": template, **_gap(config)}

    def execute(self, ctx: StepContext) -> StepResult:
        from channels_app.models import Channel, MessageTemplate
        from channels_app.services import channel_pick, message_context, message_send, template_render

        channel = Channel.objects.get(name=ctx.config["channel"])
        template = MessageTemplate.objects.get(name=ctx.config["template"])
        context = {"profile": ctx.profile, "event": event_dict(ctx.event), "journey": ctx.run.variables}
        if ctx.dry_run:
            real = ctx.customer if getattr(ctx.customer, "pk", None) else None
            picked, to, refusal = channel_pick(channel=channel, profile=ctx.profile, customer=real,
                                               topic=template.topic)
            data = message_context(customer=real, context=context, now=ctx.now) if real else {**context, "now": ctx.now}
            rendered = template_render(template=template, context=data, locale=getattr(ctx.customer, "locale", ""))
            return StepResult(outcome="next", detail={
                "would_send": template.name, "channel": picked.name if picked else None, "to": to,
                "subject": rendered.subject, "holdout": bool(ctx.run.variables.get("holdout")),
                **({"suppressed": refusal} if refusal else {}),
                **({"missing": rendered.missing} if rendered.missing else {}),
            })
        policy = {"min_gap_other_channel_s": ctx.config["min_gap_other_channel"],
                  "recent_contact_action": ctx.config["recent_contact_action"]} \
            if ctx.config.get("min_gap_other_channel") else {}
        delivery = message_send(customer=ctx.customer, template=template, channel=channel,
                                idempotency_key=ctx.idempotency_key, context=context, run_id=ctx.run.pk,
                                step_key=ctx.step_key, policy_options=policy, now=ctx.now)
        return StepResult(outcome="next", detail={"delivery": delivery.pk, "channel": delivery.channel.name,
                                                  "status": delivery.status, "reason": delivery.reason})


@register
class Webhook(StepKind):
    kind = "webhook"
    label = "Call a webhook"
    help = ("POSTs a signed JSON payload to a webhook channel, sent after commit with retries and the channel's "
            "breaker. Payload values may be templates ({{ profile.email }}). Suppressed for holdout customers.")
    side_effects = True
    fields = {"channel": "a webhook channel name", "payload": '{"plan": "{{ profile.plan }}"}'}

    def clean(self, config):
        from channels_app.models import Channel
        from channels_app.services import template_check

        channel = require(config, "channel", str, "a channel name")
        if not Channel.objects.filter(name=channel).exists():
            raise ValidationError({"channel": f"no channel named {channel!r}"})
        payload = config.get("payload") or {}
        if not isinstance(payload, dict):
            raise ValidationError({"payload": "must be an object of name -> value"})
        for key, value in payload.items():
            if isinstance(value, str) and (error := template_check(text=value)):
                raise ValidationError({"payload": f"{key}: template error: {error}"})
        return {"channel": channel, "payload": payload}

    def _payload(self, ctx: StepContext) -> dict:
        from channels_app.services.templates import _ENGINE, plain
        from django.template import Context

        from channels_app.services import message_context

        context = {"event": event_dict(ctx.event), "journey": ctx.run.variables, "profile": ctx.profile}
        if getattr(ctx.customer, "pk", None):  # only the data the customer allowed (personalization consent)
            context = message_context(customer=ctx.customer, context=context, now=ctx.now)
        data = plain({k: context[k] for k in ("profile", "event", "journey")})
        out = {}
        for key, value in ctx.config["payload"].items():
            out[key] = _ENGINE.from_string(value).render(Context(data, autoescape=False)) if isinstance(value, str) else value
        out.setdefault("event", (event_dict(ctx.event) or {}).get("name"))
        out.setdefault("user_id", ctx.profile.get("user_id"))
        return out

    def execute(self, ctx: StepContext) -> StepResult:
        from channels_app.models import Channel
        from channels_app.services import webhook_send

        channel = Channel.objects.get(name=ctx.config["channel"])
        payload = self._payload(ctx)
        if ctx.dry_run:
            return StepResult(outcome="next", detail={"would_call": channel.name, "payload": payload})
        delivery = webhook_send(customer=ctx.customer, channel=channel, idempotency_key=ctx.idempotency_key,
                                payload=payload, run_id=ctx.run.pk, step_key=ctx.step_key,
                                suppress_reason="holdout" if ctx.run.variables.get("holdout") else "")
        return StepResult(outcome="next", detail={"delivery": delivery.pk, "status": delivery.status,
                                                  "reason": delivery.reason})
