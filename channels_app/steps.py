"""The send_message, send_best_channel and webhook step kinds."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from journeys.engine.durations import parse_duration
from channels_app import step_forms as forms
from journeys.engine.registry import Palette, StepKind, StepResult, register, require
from journeys.engine.runtime import StepContext, event_dict


MESSAGES = Palette(group="Messages", colour="#e3f2fd", order=10)


def step_channel(name: str | None, *, webhook: bool = False, field: str = "channel"):
    """The channel a step names, refused (a ValidationError on `field`) when there is none of that
    name or it is of the wrong kind: a webhook step calls a webhook channel only (before: an email
    channel in a webhook step "sent" the payload as an email to nobody, recorded as sent). A message
    step may send on any channel, a webhook channel included: it POSTs each message as JSON
    (README, "Webhook channel")."""
    from channels_app.choices import ChannelKind
    from channels_app.models import Channel

    channel = Channel.objects.filter(name=name or "").first()
    if channel is None:
        raise ValidationError({field: f"no channel named {name!r}"})
    if webhook and channel.kind != ChannelKind.WEBHOOK:
        raise ValidationError({field: _not_a_webhook(channel)})
    return channel


def _not_a_webhook(channel) -> str:
    return (f"{channel.name!r} is a channel of kind {channel.get_kind_display()}; a webhook step needs a channel "
            "of kind Webhook (Channels: add one)")


def _channel_and_template(channel: str | None, template: str | None):
    """A message step's channel and template, by name; a ValidationError names one that is gone."""
    from channels_app.models import MessageTemplate

    found_channel = step_channel(channel)
    found_template = MessageTemplate.objects.select_related("topic").filter(name=template or "").first()
    if found_template is None:
        raise ValidationError({"template": f"no template named {template!r}"})
    return found_channel, found_template


def _names(*values) -> set[str]:
    """The names among a config's values (a name, a list or a mapping of names)."""
    names = set()
    for value in values:
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        names.update(item for item in items if isinstance(item, str) and item)
    return names


def _not_sent(delivery) -> str:
    """The visit's error when its message failed as it was recorded (its template did not render,
    its address was refused): the run goes on, but its page and the workflow's graph show the step
    in error instead of a clean pass."""
    if delivery.status != "failed":
        return ""
    return f"message {delivery.pk} not sent: {delivery.get_reason_display()}: {delivery.error}"[:500]


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
    batch_safe = True  # in an engine batch its Delivery waits for the batch's INSERT (SendBatch)
    fields = {
        "channel": "channel name",
        "template": "template name",
        "min_gap_other_channel": "optional, e.g. 4h: not within this long of the last contact on another channel",
        "recent_contact_action": "defer (default) or suppress",
    }
    form = forms.SendMessageForm
    palette = MESSAGES
    sends_tests = True

    def summary(self, config):
        return ": ".join(v for v in (config.get("channel"), config.get("template")) if v)

    def references(self, config):
        return {"channel": _names(config.get("channel")), "template": _names(config.get("template"))}

    def test_send(self, *, config, to, now, locale=""):
        from channels_app.services.testsend import message_test_send

        channel, template = _channel_and_template(config.get("channel"), config.get("template"))
        return message_test_send(channel=channel, template=template, to=to, locale=locale, now=now).as_dict()

    def clean(self, config):
        from channels_app.models import MessageTemplate

        channel = require(config, "channel", str, "a channel name")
        template = require(config, "template", str, "a template name")
        kind = step_channel(channel).kind
        found = MessageTemplate.objects.filter(name=template).first()
        if found is None:
            raise ValidationError({"template": f"no template named {template!r}"})
        if found.channel_kind and found.channel_kind != kind:
            raise ValidationError({"template": f"template {template!r} is for {found.channel_kind}, "
                                               f"channel {channel!r} is {kind}"})
        return {"channel": channel, "template": template, **_gap(config)}

    def execute(self, ctx: StepContext) -> StepResult:
        from channels_app.models import Channel, MessageTemplate
        from channels_app.services import channel_pick, message_context, message_send, template_render
        from channels_app.services.sending import SendBatch

        batch = None if ctx.dry_run else SendBatch.current()
        if batch is not None:
            channel, template = batch.channel(ctx.config["channel"]), batch.template(ctx.config["template"])
        else:
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
        send = batch.message if batch is not None else message_send
        delivery = send(customer=ctx.customer, template=template, channel=channel,
                        idempotency_key=ctx.idempotency_key, context=context, run_id=ctx.run.pk,
                        step_key=ctx.step_key, policy_options=policy, now=ctx.now)
        return StepResult(outcome="next", detail={"delivery": delivery.pk, "channel": delivery.channel.name,
                                                  "status": delivery.status, "reason": delivery.reason,
                                                  **_event_ran_on(ctx)},
                          error=_not_sent(delivery))


def _event_ran_on(ctx: StepContext) -> dict:
    """The event a send step rendered its message with (the trigger, or after wait_for_event the
    awaited one), by id, so "send again" renders a message that never was from the same data
    (`delivery_render_again`). Nothing when it was no stored event."""
    if ctx.event is None:
        return {"event": None}
    pk = getattr(ctx.event, "pk", None)
    return {"event": pk} if pk is not None else {}


@register
class Webhook(StepKind):
    kind = "webhook"
    label = "Call a webhook"
    help = ("POSTs a signed JSON payload to a webhook channel, sent after commit with retries and the channel's "
            "breaker. Payload values may be templates ({{ profile.email }}). Suppressed for holdout customers.")
    side_effects = True
    batch_safe = True  # in an engine batch its Delivery waits for the batch's INSERT (SendBatch)
    fields = {"channel": "a webhook channel name", "payload": '{"plan": "{{ profile.plan }}"}'}
    palette = Palette(group="Messages", colour="#e3f2fd", order=12)

    def summary(self, config):
        return config.get("channel") or ""

    def references(self, config):
        return {"channel": _names(config.get("channel"))}

    def clean(self, config):
        from channels_app.services import template_check

        channel = require(config, "channel", str, "a channel name")
        step_channel(channel, webhook=True)
        payload = config.get("payload") or {}
        if not isinstance(payload, dict):
            raise ValidationError({"payload": "must be an object of name -> value"})
        for key, value in payload.items():
            if isinstance(value, str) and (error := template_check(text=value)):
                raise ValidationError({"payload": f"{key}: template error: {error}"})
        return {"channel": channel, "payload": payload}

    def _payload(self, ctx: StepContext, personalized: bool | None = None) -> dict:
        from channels_app.services import message_context
        from channels_app.services.templates import payload_render

        context = {"event": event_dict(ctx.event), "journey": ctx.run.variables, "profile": ctx.profile}
        if getattr(ctx.customer, "pk", None):  # only the data the customer allowed (personalization consent)
            context = message_context(customer=ctx.customer, context=context, now=ctx.now, personalized=personalized)
        data = {k: context[k] for k in ("profile", "event", "journey")}
        out = payload_render(payload=ctx.config["payload"], data=data)
        out.setdefault("event", (event_dict(ctx.event) or {}).get("name"))
        out.setdefault("user_id", ctx.profile.get("user_id"))
        return out

    def execute(self, ctx: StepContext) -> StepResult:
        from channels_app.choices import ChannelKind
        from channels_app.models import Channel
        from channels_app.services import webhook_send
        from channels_app.services.sending import SendBatch

        batch = None if ctx.dry_run else SendBatch.current()
        if batch is None:
            channel = Channel.objects.get(name=ctx.config["channel"])
            payload = self._payload(ctx)
        else:
            channel = batch.channel(ctx.config["channel"])
            payload = self._payload(ctx, personalized=batch.consents.personalized(ctx.customer.pk))
        if channel.kind != ChannelKind.WEBHOOK:  # a version published before clean() refused it: nothing is sent
            return StepResult(outcome="next", detail={"channel": channel.name}, error=f"not called: {_not_a_webhook(channel)}")
        if ctx.dry_run:
            return StepResult(outcome="next", detail={"would_call": channel.name, "payload": payload})
        send = batch.webhook if batch is not None else webhook_send
        delivery = send(customer=ctx.customer, channel=channel, idempotency_key=ctx.idempotency_key,
                        payload=payload, run_id=ctx.run.pk, step_key=ctx.step_key,
                        suppress_reason="holdout" if ctx.run.variables.get("holdout") else "")
        return StepResult(outcome="next", detail={"delivery": delivery.pk, "status": delivery.status,
                                                  "reason": delivery.reason})


@register
class SendBestChannel(StepKind):
    kind = "send_best_channel"
    label = "Send on the best channel"
    help = ("Picks the channel for the customer: by urgency (urgent: push or SMS first; triage: chat first), their "
            "stated preference (trait preferred_channel), the channel they last engaged on, then skips channels "
            "that consent, quiet hours or caps would refuse or hold. Non-urgent messages wait for the customer's "
            "most frequent engagement hour when there is enough history. Why is recorded on the delivery.")
    side_effects = True
    batch_safe = True  # in an engine batch its Delivery waits for the batch's INSERT (SendBatch)
    fields = {
        "template": "template name (for any channel kind)",
        "templates": 'optional per-kind templates, e.g. {"sms": "short-text"}',
        "channels": "optional list of channel names to choose from (default: every enabled channel but webhooks)",
        "urgency": "normal (default), urgent, triage, or event (read event.properties.urgency)",
        "send_time": "best_hour (default: wait for the customer's usual hour) or now",
        "min_engagements": "engagements needed before a best hour is trusted (default 5)",
        "min_gap_other_channel": "optional, e.g. 4h: not within this long of the last contact on another channel",
        "recent_contact_action": "defer (default) or suppress",
    }
    form = forms.SendBestChannelForm
    palette = Palette(group="Messages", colour="#e3f2fd", order=11)
    sends_tests = True

    def test_send(self, *, config, to, now, locale=""):
        """On the first of the step's channels that takes the address (an email address: email; a
        phone number: SMS, then voice), with that channel kind's template."""
        from channels_app.services.testsend import channel_takes_address, message_test_send

        channel = next((c for c in self._channels(config) if c.enabled and channel_takes_address(channel=c, to=to)),
                       None)
        if channel is None:
            raise ValidationError({"to": "none of this step's enabled channels sends to that address; type an email "
                                         "address or a phone number one of them takes"})
        _, template = _channel_and_template(channel.name, (config.get("templates") or {}).get(channel.kind)
                                            or config.get("template"))
        return message_test_send(channel=channel, template=template, to=to, locale=locale, now=now).as_dict()

    def summary(self, config):
        urgency = config.get("urgency")
        return (config.get("template") or "") + (f" ({urgency})" if urgency and urgency != "normal" else "")

    def references(self, config):
        return {"channel": _names(config.get("channels")),
                "template": _names(config.get("template"), config.get("templates"))}

    def clean(self, config):
        from channels_app.choices import ChannelKind, Urgency
        from channels_app.models import MessageTemplate

        name = require(config, "template", str, "a template name")
        templates = config.get("templates") or {}
        if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
            raise ValidationError({"templates": 'must be an object of channel kind -> template name'})
        for kind, template in {"": name, **templates}.items():
            if kind and kind not in ChannelKind.values:
                raise ValidationError({"templates": f"unknown channel kind {kind!r}"})
            if not MessageTemplate.objects.filter(name=template).exists():
                raise ValidationError({"templates" if kind else "template": f"no template named {template!r}"})
        channels = config.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ValidationError({"channels": "must be a list of channel names"})
        for channel in channels:
            step_channel(channel, field="channels")
        cleaned = {"template": name, **({"templates": templates} if templates else {}),
                   **({"channels": channels} if channels else {})}
        for candidate in self._channels(cleaned):
            template = MessageTemplate.objects.get(name=templates.get(candidate.kind) or name)
            if template.channel_kind and template.channel_kind != candidate.kind:
                raise ValidationError({"templates": f"channel {candidate.name!r} is {candidate.kind}: template "
                                                    f"{template.name!r} is for {template.channel_kind}; add "
                                                    f'"templates": {{"{candidate.kind}": "..."}}'})
        urgency = str(config.get("urgency") or Urgency.NORMAL)
        if urgency not in (*Urgency.values, "event"):
            raise ValidationError({"urgency": f"must be one of {', '.join(Urgency.values)} or event"})
        send_time = str(config.get("send_time") or "best_hour")
        if send_time not in ("best_hour", "now"):
            raise ValidationError({"send_time": "must be best_hour or now"})
        minimum = config.get("min_engagements", 5)
        if isinstance(minimum, bool) or not str(minimum).isdigit() or int(minimum) < 1:
            raise ValidationError({"min_engagements": "must be a whole number >= 1"})
        return {**cleaned, "urgency": urgency, "send_time": send_time, "min_engagements": int(minimum), **_gap(config)}

    @staticmethod
    def _channels(config: dict) -> list:
        from channels_app.choices import ChannelKind
        from channels_app.models import Channel

        names = config.get("channels")
        if names:
            found = {c.name: c for c in Channel.objects.filter(name__in=names)}
            return [found[n] for n in names if n in found]
        return list(Channel.objects.exclude(kind=ChannelKind.WEBHOOK).filter(enabled=True).order_by("pk"))

    @staticmethod
    def _urgency(ctx: StepContext) -> str:
        from channels_app.choices import Urgency

        urgency = ctx.config.get("urgency") or Urgency.NORMAL
        if urgency == "event":
            value = str((event_dict(ctx.event).get("properties") or {}).get("urgency") or "").lower()
            urgency = value if value in Urgency.values else Urgency.NORMAL
        return urgency

    def execute(self, ctx: StepContext) -> StepResult:
        from channels_app.models import MessageTemplate
        from channels_app.services import message_context, message_send, template_render
        from channels_app.services.choice import EngagementBook, PressureCache, channel_choose
        from channels_app.services.sending import SendBatch

        batch = None if ctx.dry_run else SendBatch.current()
        if batch is not None:
            channels = batch.channels(tuple(ctx.config.get("channels") or ()), lambda: self._channels(ctx.config))
            main = batch.template(ctx.config["template"])
        else:
            channels = self._channels(ctx.config)
            main = MessageTemplate.objects.get(name=ctx.config["template"])
        urgency = self._urgency(ctx)
        policy = {"min_gap_other_channel_s": ctx.config["min_gap_other_channel"],
                  "recent_contact_action": ctx.config["recent_contact_action"]} \
            if ctx.config.get("min_gap_other_channel") else {}
        real = ctx.customer if getattr(ctx.customer, "pk", None) else None
        batched = {}
        if batch is not None and real is not None:  # (caps and gaps count sent messages, not this batch's)
            batched = {"refuse": batch.consents.refuser(real.pk), "breakers": batch.breakers(),
                       "history": EngagementBook.current(), "pressure": PressureCache.current()}
        choice = channel_choose(customer=ctx.customer, profile=ctx.profile, channels=channels, urgency=urgency,
                                topic=main.topic, send_time=ctx.config.get("send_time", "best_hour"), now=ctx.now,
                                min_engagements=ctx.config.get("min_engagements", 5), policy_options=policy,
                                **batched)
        channel = choice.channel or (channels[0] if channels else None)
        if channel is None:
            return StepResult(outcome="next", detail={"urgency": urgency, "why": ["no channel is configured"]},
                              error="send_best_channel: no channel to choose from")
        name = (ctx.config.get("templates") or {}).get(channel.kind) or ctx.config["template"]
        template = batch.template(name) if batch is not None else MessageTemplate.objects.get(name=name)
        context = {"profile": ctx.profile, "event": event_dict(ctx.event), "journey": ctx.run.variables}
        summary = {"urgency": urgency, "chosen_by": choice.chosen_by, "why": choice.reasons,
                   "send_at": choice.send_at.isoformat() if choice.send_at else None}
        if ctx.dry_run:
            data = message_context(customer=real, context=context, now=ctx.now) if real else {**context, "now": ctx.now}
            rendered = template_render(template=template, context=data, locale=getattr(ctx.customer, "locale", ""))
            return StepResult(outcome="next", detail={
                "would_send": template.name, "channel": choice.channel.name if choice.channel else None,
                "to": choice.to, "subject": rendered.subject, "holdout": bool(ctx.run.variables.get("holdout")),
                "considered": choice.considered, **summary,
                **({"suppressed": choice.refusal} if choice.channel is None else {}),
            })
        send = batch.message if batch is not None else message_send
        delivery = send(customer=ctx.customer, template=template, channel=channel,
                        idempotency_key=ctx.idempotency_key, context=context, run_id=ctx.run.pk,
                        step_key=ctx.step_key, policy_options=policy, now=ctx.now, send_at=choice.send_at,
                        notes={"channel_choice": {**choice.as_dict(), "urgency": urgency}},
                        choice_reason=choice.summary)
        return StepResult(outcome="next", detail={"delivery": delivery.pk, "channel": delivery.channel.name,
                                                  "status": delivery.status, "reason": delivery.reason, **summary,
                                                  **_event_ran_on(ctx)},
                          error=_not_sent(delivery))
