"""The send_message step kind."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from journeys.engine.registry import StepKind, StepResult, register, require
from journeys.engine.runtime import StepContext, event_dict


@register
class SendMessage(StepKind):
    kind = "send_message"
    label = "Send a message"
    help = "Renders a template and sends it on a channel (falling back along the channel's fallback chain)."
    side_effects = True
    fields = {"channel": "channel name", "template": "template name"}

    def clean(self, config):
        from channels_app.models import Channel, MessageTemplate

        channel = require(config, "channel", str, "a channel name")
        template = require(config, "template", str, "a template name")
        if not Channel.objects.filter(name=channel).exists():
            raise ValidationError({"channel": f"no channel named {channel!r}"})
        if not MessageTemplate.objects.filter(name=template).exists():
            raise ValidationError({"template": f"no template named {template!r}"})
        return {"channel": channel, "template": template}

    def execute(self, ctx: StepContext) -> StepResult:
        from channels_app.models import Channel, MessageTemplate
        from channels_app.services import channel_pick, message_send, template_render

        channel = Channel.objects.get(name=ctx.config["channel"])
        template = MessageTemplate.objects.get(name=ctx.config["template"])
        context = {"profile": ctx.profile, "event": event_dict(ctx.event), "journey": ctx.run.variables}
        if ctx.dry_run:
            picked, to = channel_pick(channel=channel, profile=ctx.profile)
            subject, _ = template_render(template=template, context=context)
            return StepResult(outcome="next", detail={"would_send": template.name, "channel": picked.name if picked else None,
                                                      "to": to, "subject": subject})
        delivery = message_send(customer=ctx.customer, template=template, channel=channel,
                                idempotency_key=ctx.idempotency_key, context=context,
                                run_id=ctx.run.pk, step_key=ctx.step_key)
        return StepResult(outcome="next", detail={"delivery": delivery.pk, "channel": delivery.channel.name,
                                                  "status": delivery.status})
