"""Sending: message_send records a Delivery (the outbox row) inside the caller's
transaction, with holdout, consent and reachability decided and the content rendered;
after commit a task dispatches it (services/dispatch.py)."""

from __future__ import annotations

import json
import re
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.html import escape, strip_tags

from channels_app.choices import ChannelKind, DeliveryStatus, Reason
from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.models.deliveries import SUBJECT_MAX
from channels_app.services.consent import ConsentBook, consent_refusal, personalization_allowed
from journeys.engine.batch import instance_new, objects_insert, reserve_ids
from journeys.engine.queue import task_send, task_send_on_commit
from journeys.services.identity import phone_e164
from channels_app.providers.limits import size_problem, sms_segments
from channels_app.services.links import link_url
from channels_app.services.streaming import deliveries_stream
from channels_app.services.templates import template_render

MINIMAL_PROFILE = ("user_id", "first_name", "name", "email", "phone", "locale", "timezone")
ADDRESS_FIELDS = {
    ChannelKind.EMAIL: "email", ChannelKind.SMS: "phone", ChannelKind.VOICE: "phone",
    ChannelKind.PUSH: "push_token", ChannelKind.CHAT: "chat_id", ChannelKind.IN_APP: "user_id",
    ChannelKind.WEBHOOK: "user_id",
}


def channel_address(channel: Channel, profile: dict) -> str:
    """Where this channel reaches the customer (settings.address_field overrides the default)."""
    field = (channel.settings or {}).get("address_field") or ADDRESS_FIELDS.get(channel.kind, "user_id")
    return str(profile.get(field) or "")


def channel_pick(*, channel: Channel, profile: dict, customer=None, topic=None,
                 refuse=None) -> tuple[Channel | None, str, str]:
    """Follow the fallback chain past channels that are disabled, cannot reach the customer
    or that the customer refused; returns (channel, address, reason when none fits).
    `refuse(channel_kind, topic, address)` replaces the consent query (a batch's preloaded consents)."""
    seen: set[int] = set()
    current, first_reason = channel, ""
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        address = channel_address(current, profile)
        if current.enabled and address:
            if refuse is not None:
                refusal = refuse(current.kind, topic, address)
            else:
                refusal = consent_refusal(customer=customer, channel_kind=current.kind, topic=topic,
                                          address=address) if customer else None
            if refusal is None:
                return current, address, ""
            first_reason = first_reason or refusal
        current = current.fallback
    return None, "", first_reason or Reason.NO_ADDRESS


def message_context(*, customer, context: dict, now: datetime, personalized: bool | None = None) -> dict:
    """The data a template may read: profile, traits, scores, event, journey. Without the
    customer's personalization consent, only the minimal profile (no traits, no scores).
    `personalized` is that consent when the caller already knows it (a batch)."""
    from journeys.engine.runtime import profile_dict

    data = dict(context or {})
    profile = dict(data.get("profile") or profile_dict(customer, now))
    traits = dict(data.get("traits") or customer.traits or {})
    scores = dict(data.get("scores") or profile.get("scores") or {})
    scores.update({k: v for k, v in traits.items() if k.startswith("propensity") or k.endswith("_score")})
    if not (personalization_allowed(customer=customer) if personalized is None else personalized):
        profile = {k: profile.get(k) for k in MINIMAL_PROFILE if profile.get(k) is not None}
        traits, scores = {}, {}
    data.update(profile=profile, traits=traits, scores=scores, now=now)
    data.setdefault("event", {})
    data.setdefault("journey", {})
    return data


_HREF = re.compile(r'href="(https?://[^"]+)"', re.IGNORECASE)


def _track_html(html: str, delivery: Delivery, skip: set[str]) -> str:
    """Click links through signed redirects and add the open pixel."""
    from html import unescape

    def rewrite(match: re.Match) -> str:
        url = unescape(match.group(1))
        if url in skip:
            return match.group(0)
        return f'href="{escape(link_url(purpose="click", data={"d": delivery.pk, "u": url}))}"'

    html = _HREF.sub(rewrite, html)
    pixel = f'<img src="{escape(link_url(purpose="open", data={"d": delivery.pk}))}" width="1" height="1" alt="">'
    return html.replace("</body>", pixel + "</body>") if "</body>" in html else html + pixel


def unsubscribe_url(delivery: Delivery) -> str:
    """One-click unsubscribe from the message's topic on its channel (List-Unsubscribe, links.unsubscribe_url)."""
    topic_slug = delivery.topic.slug if delivery.topic_id else None
    return link_url(purpose="unsubscribe", data={"c": delivery.customer_id, "k": delivery.channel.kind,
                                                 "t": topic_slug, "d": delivery.pk})


def _links(delivery: Delivery) -> dict:
    return {
        "unsubscribe_url": unsubscribe_url(delivery),
        "preferences_url": link_url(purpose="preferences", data={"c": delivery.customer_id}),
    }


def deliveries_cluster() -> str | None:
    """The q2 cluster whose workers send deliveries: Q_DELIVERY_CLUSTER (a cluster of their own, so
    a slow vendor never takes the event workers), else the main one; named either way, as work
    queued from a schedule or the web would otherwise land on that process's own cluster."""
    return getattr(settings, "Q_DELIVERY_CLUSTER", "") or settings.Q_CLUSTER.get("name")


def _enqueue(delivery: Delivery) -> None:
    task_send_on_commit("channels_app.tasks.delivery_send", delivery.pk, group="deliveries",
                        cluster=deliveries_cluster())


def _enqueue_collected(ids: list[int]) -> None:
    """One dispatch task, after commit, for the deliveries in `ids` then (its batch may add more
    until the commit; the dispatch sweeper finds them if the enqueue is lost)."""
    transaction.on_commit(lambda: task_send("channels_app.tasks.deliveries_send", list(ids), group="deliveries",
                                            cluster=deliveries_cluster()))


def _decide(*, customer, template: MessageTemplate, channel: Channel, context: dict, now: datetime,
            personalized: bool | None = None, refuse=None) -> tuple[dict, Channel | None, str, str]:
    """Holdout, consent and reachability: (template data, picked channel or None, address, refusal)."""
    data = message_context(customer=customer, context=context, now=now, personalized=personalized)
    picked, to, refusal = channel_pick(channel=channel, profile=data["profile"], customer=customer,
                                       topic=template.topic, refuse=refuse)
    if (data.get("journey") or {}).get("holdout"):
        picked, refusal = None, Reason.HOLDOUT
    return data, picked, to, refusal


def _new_delivery(*, customer, template: MessageTemplate, channel: Channel, picked: Channel | None, to: str,
                  refusal: str, idempotency_key: str, latest: int | None, run_id, step_key: str,
                  policy_options: dict | None, choice_reason: str, now: datetime, send_at: datetime | None,
                  pk: int | None = None) -> Delivery:
    topic = template.topic
    delivery = instance_new(Delivery, {  # no Model.__init__: a batch builds one per message
        "id": pk, "idempotency_key": idempotency_key, "template_version": latest,
        "transactional": bool(topic and topic.transactional), "run_id": run_id, "step_key": step_key, "to": to,
        "policy": policy_options or {}, "choice_reason": choice_reason[:255],
        "status": DeliveryStatus.QUEUED if picked else DeliveryStatus.SUPPRESSED,
        "reason": "" if picked else refusal, "error": "" if picked else Reason(refusal).label,
    }, {"customer": customer, "channel": picked or channel,
        "requested_channel": channel if picked and picked.pk != channel.pk else None,
        "template": template, "topic": topic})
    if picked and send_at is not None and send_at > now:
        delivery.status, delivery.reason, delivery.next_attempt_at = DeliveryStatus.DEFERRED, Reason.SEND_TIME, send_at
    return delivery


def _uses_links(template: MessageTemplate) -> bool:
    """Whether the template's texts can read `links` (signing them costs ~40 us a message).

    Known only when the variants were loaded with the template (a batch prefetches them);
    otherwise, and with content blocks (their bodies are not read here), assume yes.
    Cached on the instance: a batch renders one template instance many times."""
    found = getattr(template, "_uses_links", None)
    if found is None:
        variants = getattr(template, "_prefetched_objects_cache", {}).get("variants")
        if variants is None:
            return True
        texts = [template.subject, template.body, template.html_body,
                 *(t for v in variants for t in (v.subject, v.body, v.html_body))]
        found = template._uses_links = any(t and ("links" in t or "content_block" in t) for t in texts)
    return found


def phone_address(channel: Channel) -> bool:
    """Whether a channel reaches customers by phone number (SMS, voice, a chat channel whose
    settings.address_field is `phone`): its vendors take E.164 numbers only."""
    field = (channel.settings or {}).get("address_field") or ADDRESS_FIELDS.get(channel.kind, "user_id")
    return field == "phone"


def _address_into(delivery: Delivery) -> None:
    """A phone number as it goes out (E.164, `phone_e164`); one without a country code fails the
    delivery for good, saying so, rather than reaching a vendor that would guess its country."""
    if delivery.status not in (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED) or not phone_address(delivery.channel):
        return
    number = phone_e164(delivery.to)
    if number:
        delivery.to = number
        return
    delivery.status, delivery.reason, delivery.next_attempt_at = DeliveryStatus.FAILED, Reason.PERMANENT_ERROR, None
    delivery.error = (f"the phone number {delivery.to!r} has no country code: SMS and voice numbers go out in "
                      "E.164 ('+' and the country code first); fix it on the profile")[:4000]


def message_metadata(delivery: Delivery) -> dict:
    """What a provider gets beside the content (`OutgoingMessage.metadata`; a push sends it as data,
    so its size is checked at render with it)."""
    return {"customer": delivery.customer.external_id, "run_id": delivery.run_id, "step": delivery.step_key}


def _render_into(delivery: Delivery, *, template: MessageTemplate, data: dict, customer, notes: dict | None,
                 locale: str | None = None) -> None:
    """Content of a delivery that has its primary key (links carry it); a template that fails
    to render fails the delivery (recorded), not the caller. `locale` (the messages API's)
    picks the variant instead of the customer's locale."""
    _address_into(delivery)
    if delivery.status == DeliveryStatus.FAILED:
        return
    links = _links(delivery) if _uses_links(template) else {}
    try:
        rendered = template_render(template=template, context={**data, "links": links}, locale=customer.locale or "" if locale is None else locale,
                                   json_body=delivery.channel.kind == ChannelKind.WEBHOOK)
    except Exception as exc:  # a template saved around the admin's check, or a filter that raised
        delivery.status, delivery.reason = DeliveryStatus.FAILED, Reason.TEMPLATE_ERROR
        delivery.error = f"{type(exc).__name__}: {exc}"[:4000]
        return
    if not (rendered.subject.strip() or rendered.body.strip() or strip_tags(rendered.html_body).strip()):
        # every part came from data that is not there: nothing worth sending (a blank email)
        delivery.status, delivery.reason = DeliveryStatus.FAILED, Reason.TEMPLATE_ERROR
        delivery.error = ("the message rendered empty" + (f": no value for {', '.join(rendered.missing)}"
                                                          if rendered.missing else ""))[:4000]
        delivery.notes = {**(notes or {}), "missing": rendered.missing}
        return
    if problem := size_problem(kind=delivery.channel.kind, subject=rendered.subject, body=rendered.body,
                               delivery_id=delivery.pk, metadata=message_metadata(delivery)):
        delivery.status, delivery.reason, delivery.error = DeliveryStatus.FAILED, Reason.TEMPLATE_ERROR, problem
        return
    if delivery.channel.kind == ChannelKind.SMS:
        notes = {**(notes or {}), "sms": dict(zip(("encoding", "segments"), sms_segments(rendered.body)))}
    html = rendered.html_body
    if html and delivery.channel.kind == ChannelKind.EMAIL and (delivery.channel.settings or {}).get("track", True):
        html = _track_html(html, delivery, set(links.values()))
    # one line (a value with a line break, such as a name typed with Enter, would break the header),
    # as long as a subject may be; a longer one is cut, and the notes say so
    subject = " ".join(part.strip() for part in rendered.subject.splitlines())
    if len(subject) > SUBJECT_MAX:
        notes = {**(notes or {}), "subject_cut": len(subject)}
    delivery.subject, delivery.body, delivery.html_body = subject[:SUBJECT_MAX], rendered.body, html
    delivery.locale, delivery.content_hash = rendered.locale, rendered.content_hash
    delivery.notes = {**(notes or {}),
                      **{k: v for k, v in (("missing", rendered.missing), ("render_errors", rendered.errors)) if v}}


def _latest_version(template: MessageTemplate) -> int | None:
    return template.history.order_by("-history_id").values_list("history_id", flat=True).first()


def delivery_never_rendered(delivery: Delivery) -> bool:
    """A message with no content: its template failed to render, or its address was refused
    before rendering (a phone number without a country code). Sent as it is, it would go out
    blank; a rendered message always has some content (`_render_into` fails an empty one)."""
    return not (delivery.subject or delivery.body or delivery.html_body)


def _event_sent_on(delivery: Delivery, run) -> tuple[object, str]:
    """The event the engine rendered a journey's message with: the one its send step ran on
    (recorded on the step's execution: the trigger, or after wait_for_event the awaited event).
    An execution recorded before that was kept: the trigger event, unless the run had resumed on
    an awaited event before that step (then it cannot be known: returns why)."""
    from journeys.models import Event, StepExecution

    step = (StepExecution.objects.filter(run_id=run.pk, step_key=delivery.step_key, detail__delivery=delivery.pk)
            .values("detail", "started_at").first())
    if step is not None and "event" in step["detail"]:
        pk = step["detail"]["event"]
        event = Event.objects.filter(pk=pk).first() if pk is not None else None
        if pk is not None and event is None:
            return None, "never rendered, and the event it was sent on is gone"
        return event, ""
    awaited = StepExecution.objects.filter(run_id=run.pk, step_kind="wait_for_event", outcome="event")
    if step is not None:
        awaited = awaited.filter(started_at__lte=step["started_at"])
    if awaited.exists():
        return None, ("never rendered, and the event it was to be rendered from (a waited-for event, not the "
                      "trigger) was not recorded")
    return run.trigger_event, ""


def delivery_render_again(delivery: Delivery, *, now: datetime) -> str:
    """Render a message that never was (`delivery_never_rendered`) as the engine renders it: the
    delivery's template as it is now (fixed since, perhaps), with its run's data (the event its send
    step ran on, `_event_sent_on`, and the journey's variables) and the customer's profile, consents and address as they are now.
    Sets the content (and address, template version) on `delivery`, not saved, and returns ''; or
    returns why it cannot be sent (then nothing the caller would save has changed).
    Only messages of journey runs: an API or agent message's data is not kept."""
    from journeys.engine.runtime import event_dict, profile_dict
    from journeys.models import JourneyRun

    if delivery.template_id is None:
        return "never rendered, and it has no template to render it from"
    if delivery.run_id is None:
        return "never rendered, and it was not sent by a journey run: the data it was to be rendered from is not kept"
    run = JourneyRun.objects.select_related("trigger_event").filter(pk=delivery.run_id).first()
    if run is None:
        return "never rendered, and its journey run is gone"
    customer = delivery.customer
    if customer.erased_at is not None:
        return "the customer was erased"
    event, why = _event_sent_on(delivery, run)
    if why:
        return why
    template = MessageTemplate.objects.select_related("topic").get(pk=delivery.template_id)
    context = {"profile": profile_dict(customer, now), "event": event_dict(event), "journey": run.variables or {}}
    data = message_context(customer=customer, context=context, now=now)
    to = channel_address(delivery.channel, data["profile"])
    if not to:
        return "never rendered, and the customer has no address on this channel now"
    trial = Delivery(pk=delivery.pk, idempotency_key=delivery.idempotency_key, customer=customer,
                     channel=delivery.channel, template=template, topic=delivery.topic, run_id=delivery.run_id,
                     step_key=delivery.step_key, to=to, status=DeliveryStatus.QUEUED)
    notes = {k: v for k, v in (delivery.notes or {}).items() if k not in ("missing", "render_errors", "sms")}
    _render_into(trial, template=template, data=data, customer=customer, notes=notes)
    if trial.status == DeliveryStatus.FAILED:
        return f"never rendered, and it still fails: {trial.error}"
    for name in ("to", "subject", "body", "html_body", "locale", "content_hash", "notes"):
        setattr(delivery, name, getattr(trial, name))
    delivery.template, delivery.template_version = template, _latest_version(template)
    return ""


@transaction.atomic
def message_send(*, customer, template: MessageTemplate, channel: Channel, idempotency_key: str, context: dict,
                 run_id=None, step_key: str = "", policy_options: dict | None = None,
                 now: datetime | None = None, send_at: datetime | None = None, notes: dict | None = None,
                 choice_reason: str = "") -> Delivery:
    """Record a message once per idempotency key; it is sent after commit (`message_record`)."""
    return message_record(customer=customer, template=template, channel=channel, idempotency_key=idempotency_key,
                          context=context, run_id=run_id, step_key=step_key, policy_options=policy_options, now=now,
                          send_at=send_at, notes=notes, choice_reason=choice_reason)[0]


def message_record(*, customer, template: MessageTemplate, channel: Channel, idempotency_key: str, context: dict,
                   run_id=None, step_key: str = "", policy_options: dict | None = None,
                   now: datetime | None = None, send_at: datetime | None = None, notes: dict | None = None,
                   choice_reason: str = "", locale: str | None = None) -> tuple[Delivery, bool]:
    """Record a message once per idempotency key; it is sent after commit. Returns the delivery and
    whether this call stored it: False when the key was there already, or when a concurrent call
    with the same key stored it first (the unique key decided; what it stored is returned).

    Holdout, consent and reachability are decided here (a refused message is stored as
    suppressed with its reason); quiet hours, caps, pauses and breakers at send time.
    `send_at` (later than now) holds the message until then (reason `send_time`);
    `notes` and `choice_reason` record why a best-channel step chose this channel; `locale`
    (a language tag) chooses the template's variant instead of the customer's locale.
    (The engine's send_message step uses `SendBatch.message`, the same decisions for a
    whole batch of events.)
    """
    existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing, False
    now = now or timezone.now()
    data, picked, to, refusal = _decide(customer=customer, template=template, channel=channel, context=context, now=now)
    try:
        with transaction.atomic():
            delivery = _new_delivery(
                customer=customer, template=template, channel=channel, picked=picked, to=to, refusal=refusal,
                idempotency_key=idempotency_key, latest=_latest_version(template), run_id=run_id, step_key=step_key,
                policy_options=policy_options, choice_reason=choice_reason, now=now, send_at=send_at,
            )
            delivery.save(force_insert=True)
    except IntegrityError:
        return Delivery.objects.get(idempotency_key=idempotency_key), False
    _render_into(delivery, template=template, data=data, customer=customer, notes=notes, locale=locale)
    delivery.save()
    if delivery.status == DeliveryStatus.QUEUED:
        _enqueue(delivery)
    else:
        deliveries_stream(deliveries=[delivery], at=now)  # suppressed (with its reason) or failed
    return delivery, True


class SendBatch:
    """message_send for one engine batch (`journeys.engine.batch`): channels, templates and
    the customers' consents are loaded once per batch, each Delivery is built in memory
    with a reserved primary key, and `flush()` inserts them all with one statement and
    queues one dispatch task for the batch instead of one per message.

    Per-batch caches only: a channel disabled or a consent withdrawn is seen by the next
    batch, and dispatch checks consent, pauses and breakers again at send time.
    """

    KEY = "channels.send"
    RESERVE = 64

    def __init__(self, batch) -> None:
        self.consents = ConsentBook(batch.customer_ids)
        self._channels: dict[str, Channel] = {}
        self._templates: dict[str, tuple[MessageTemplate, int | None]] = {}
        self._ids: list[int] = []
        self.pending: dict[str, Delivery] = {}
        self._channel_lists: dict[tuple, list[Channel]] = {}
        self._breakers: dict[int, object] | None = None
        self._queued: list[int] = []  # what the batch's one dispatch task sends (it grows until commit)

    @classmethod
    def current(cls) -> SendBatch | None:
        from journeys.engine.batch import current_batch

        batch = current_batch()
        return batch.extension(cls.KEY, cls) if batch is not None else None

    def channel(self, name: str) -> Channel:
        if name not in self._channels:
            self._channels[name] = Channel.objects.select_related("fallback").get(name=name)
        return self._channels[name]

    def template(self, name: str) -> MessageTemplate:
        if name not in self._templates:
            template = MessageTemplate.objects.select_related("topic").prefetch_related("variants").get(name=name)
            self._templates[name] = (template, _latest_version(template))
        return self._templates[name][0]

    def channels(self, names: tuple[str, ...], load) -> list[Channel]:
        """A step's channel list (`load()` reads it), once per batch."""
        if names not in self._channel_lists:
            self._channel_lists[names] = load()
        return self._channel_lists[names]

    def breakers(self) -> dict:
        """Channel id -> its breaker row, read once per batch (send_best_channel's look at them)."""
        if self._breakers is None:
            from channels_app.models import ChannelBreaker

            self._breakers = {b.channel_id: b for b in ChannelBreaker.objects.all()}
        return self._breakers

    def _next_id(self) -> int:
        if not self._ids:  # about one message per customer of the batch: one statement, not one per 64
            self._ids = reserve_ids(Delivery, max(self.RESERVE, len(self.consents.customer_ids)))
        return self._ids.pop(0)

    def message(self, *, customer, template: MessageTemplate, channel: Channel, idempotency_key: str, context: dict,
                run_id=None, step_key: str = "", policy_options: dict | None = None, now: datetime,
                notes: dict | None = None, send_at: datetime | None = None, choice_reason: str = "") -> Delivery:
        """What message_send decides and records, kept for the batch's INSERT."""
        if idempotency_key in self.pending:
            return self.pending[idempotency_key]
        data, picked, to, refusal = _decide(customer=customer, template=template, channel=channel, context=context,
                                            now=now, personalized=self.consents.personalized(customer.pk),
                                            refuse=self.consents.refuser(customer.pk))
        latest = self._templates[template.name][1] if template.name in self._templates else _latest_version(template)
        delivery = _new_delivery(
            customer=customer, template=template, channel=channel, picked=picked, to=to, refusal=refusal,
            idempotency_key=idempotency_key, latest=latest, run_id=run_id, step_key=step_key,
            policy_options=policy_options, choice_reason=choice_reason, now=now, send_at=send_at, pk=self._next_id(),
        )
        _render_into(delivery, template=template, data=data, customer=customer, notes=notes)
        self.pending[idempotency_key] = delivery
        return delivery

    def webhook(self, *, customer, channel: Channel, idempotency_key: str, payload: dict, run_id=None,
                step_key: str = "", suppress_reason: str = "") -> Delivery:
        """What webhook_send records, kept for the batch's INSERT."""
        if idempotency_key in self.pending:
            return self.pending[idempotency_key]
        delivery = self.pending[idempotency_key] = _webhook_delivery(
            customer=customer, channel=channel, idempotency_key=idempotency_key, payload=payload, run_id=run_id,
            step_key=step_key, suppress_reason=suppress_reason, pk=self._next_id())
        return delivery

    def flush(self) -> None:
        if not self.pending:
            return
        deliveries = list(self.pending.values())
        self.pending = {}
        # Never expected (the keys belong to runs of this transaction), but a second row for
        # a key must not happen: raising replays the batch event by event through message_send.
        if Delivery.objects.filter(idempotency_key__in=[d.idempotency_key for d in deliveries]).exists():
            raise IntegrityError("a delivery of this batch was already recorded")
        objects_insert(Delivery, deliveries)
        queued = [d.pk for d in deliveries if d.status == DeliveryStatus.QUEUED]
        if queued:
            # One dispatch task for the engine batch however often it is flushed (a step that is
            # not batch-safe, e.g. start_workflow, flushes it before each of its visits): the task
            # is queued at commit with every id collected by then. Ids of a rolled-back savepoint
            # are not queued rows, which the dispatcher leaves alone.
            if not self._queued:
                _enqueue_collected(self._queued)
            self._queued.extend(queued)
        deliveries_stream(deliveries=[d for d in deliveries if d.status != DeliveryStatus.QUEUED])


def _webhook_delivery(*, customer, channel: Channel, idempotency_key: str, payload: dict, run_id, step_key: str,
                      suppress_reason: str, pk: int | None = None) -> Delivery:
    settings = channel.settings or {}
    return instance_new(Delivery, {
        "id": pk, "idempotency_key": idempotency_key, "run_id": run_id, "step_key": step_key,
        "to": str(settings.get("url") or settings.get("base_url") or ""),
        "body": json.dumps(payload, sort_keys=True, default=str), "transactional": True,
        "status": DeliveryStatus.SUPPRESSED if suppress_reason else DeliveryStatus.QUEUED, "reason": suppress_reason,
    }, {"customer": customer, "channel": channel})


@transaction.atomic
def webhook_send(*, customer, channel: Channel, idempotency_key: str, payload: dict, run_id=None,
                 step_key: str = "", suppress_reason: str = "") -> Delivery:
    """Record a webhook call (an integration, not a message to the customer: no consent
    topic), sent like any delivery: after commit, retried, behind the breaker. (The engine's
    webhook step uses `SendBatch.webhook`, the same row for a whole batch of events.)"""
    existing = Delivery.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing
    delivery = _webhook_delivery(customer=customer, channel=channel, idempotency_key=idempotency_key,
                                 payload=payload, run_id=run_id, step_key=step_key, suppress_reason=suppress_reason)
    try:
        with transaction.atomic():
            delivery.save(force_insert=True)
    except IntegrityError:
        return Delivery.objects.get(idempotency_key=idempotency_key)
    if delivery.status == DeliveryStatus.QUEUED:
        _enqueue(delivery)
    else:
        deliveries_stream(deliveries=[delivery])  # suppressed (a holdout customer)
    return delivery


def _event_properties(delivery: Delivery) -> dict:
    return {"delivery_id": delivery.pk, "channel": delivery.channel.name, "channel_kind": delivery.channel.kind,
            "template": delivery.template.name if delivery.template_id else None,
            "topic": delivery.topic.slug if delivery.topic_id else None, "run_id": delivery.run_id,
            "step": delivery.step_key}
