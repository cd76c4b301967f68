"""Consent: what a customer allowed, per channel kind x topic, checked at send time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from channels_app.choices import ChannelKind, ConsentStatus, Reason
from channels_app.models import Channel, Consent, Topic
from journeys.models import Customer, Identity
from journeys.services.identity import phone_e164, phone_lookup_values, phone_normalize

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "YES", "UNSTOP", "OPTIN"}
HELP_WORDS = {"HELP", "INFO"}
HELP_REPLY = "Reply STOP to unsubscribe, START to subscribe again."
# What people type around a keyword: ASCII punctuation, inverted marks, curly quotes, an ellipsis.
_KEYWORD_PUNCTUATION = ("".join(chr(c) for c in range(0x21, 0x7f) if not chr(c).isalnum())
                        + "\u00a1\u00bf\u2018\u2019\u201c\u201d\u2026")


def sms_keyword(body: str) -> str:
    """The keyword of an inbound SMS: its first word, upper case, without the punctuation people
    type around it ("Stop.", "STOP!", " stop ", "'stop'" -> "STOP"). Carriers and the FCC treat
    any such reply as the keyword; comparing the raw word would ignore a revocation."""
    words = (body or "").split()
    return words[0].strip(_KEYWORD_PUNCTUATION).upper() if words else ""


# A channel-wide opt-out recorded because the address bounced for good (or the vendor said the
# number does not exist): its source names the address (a digest), so a new address is not held.
# A customer's own opt-out of the channel is kept in the same row: its source comes first and the
# bounce's mark last ("complaint hard_bounce:<digest>"), so each holds what it holds (`consent_change`).
BOUNCE_SOURCE = "hard_bounce:"
PHONE_KINDS = (ChannelKind.SMS, ChannelKind.VOICE)


def address_digest(channel_kind: str, address: str) -> str:
    """What a bounce's consent row keeps of the address (not the address itself). A phone number
    is digested in one spelling (E.164, else normalised): a bounce names the number as it went out
    ('+44...'), the profile may hold it as typed ('0044 ...'), and both must be the same address."""
    canonical = (phone_e164(address) or phone_normalize(address)) if channel_kind in PHONE_KINDS else address
    return hashlib.sha256(canonical.strip().lower().encode()).hexdigest()[:16]


def _source_split(source: str) -> tuple[str, str]:
    """(the choice's own source, the bounce's mark or "") of a consent row's source."""
    head, _, tail = (source or "").rpartition(" ")
    return (head, tail) if tail.startswith(BOUNCE_SOURCE) else (source or "", "")


def consent_change(*, status_was: str, source_was: str, status: str, source: str) -> str | None:
    """The source to store when `status` (from `source`) comes to a row holding (status_was,
    source_was); None when the row stays as it is.

    An opt-out stays as it was first made, but a customer's own opt-out always lands on a row
    that only held a bounce (the bounce's mark stays, its address is still dead), and a bounce
    lands on a row the customer had opted out of (the opt-out's source stays). A later bounce of
    another address replaces the earlier one's mark (the profile moved on to it). Any other
    status lifts the bounce with the opt-out (an operator or the customer changed the consent)."""
    if status != ConsentStatus.OPTED_OUT:
        return None if status == status_was else source[:100]
    choice_was, bounce_was = _source_split(source_was) if status_was == ConsentStatus.OPTED_OUT else ("", "")
    choice, bounce = _source_split(source)
    choice, bounce = choice_was or choice, bounce or bounce_was
    joined = f"{choice[:99 - len(bounce)]} {bounce}" if choice and bounce else (choice or bounce)[:100]
    return None if status_was == ConsentStatus.OPTED_OUT and joined == source_was else joined


def _status(status: str, source: str) -> str:
    """A row's status as refusal_from reads it: a bounce's mark follows the status of a customer's
    own opt-out ("opted_out hard_bounce:<digest>"), or stands alone when the row holds only it."""
    choice, bounce = _source_split(source)
    if status != ConsentStatus.OPTED_OUT or not bounce:
        return status
    return f"{status} {bounce}" if choice else bounce


def consent_refusal(*, customer: Customer, channel_kind: str, topic: Topic | None, address: str = "") -> Reason | None:
    """Why this customer may not get this message now (None = may).

    Order: global do-not-contact (always wins) -> the address bounced for good on this channel
    kind (every message, receipts too) -> an SMS opt-out (STOP) for any SMS -> transactional
    topics pass -> channel-wide opt-out ("unsubscribe from all email", a complaint) -> topic
    opt-out on this channel or on every channel -> topics that require an opt-in.
    """
    rows = list(Consent.objects.filter(customer=customer, channel_kind__in=["", channel_kind])
                .filter(Q(topic__isnull=True) | Q(topic=topic) if topic else Q(topic__isnull=True)))
    return refusal_from(status={(r.channel_kind, r.topic_id): _status(r.status, r.source) for r in rows},
                        channel_kind=channel_kind, topic=topic, address=address)


def refusal_from(*, status: dict[tuple[str, int | None], str], channel_kind: str, topic: Topic | None,
                 address: str = "") -> Reason | None:
    """consent_refusal over rows already loaded: {(channel kind or "", topic id or None): status}
    (a batch loads every consent of its customers with one query). A bounce (`_status`) holds
    `address`, or any address when none is given; another address of the customer is held only
    by the customer's own opt-out kept with it."""
    if status.get(("", None)) == ConsentStatus.OPTED_OUT:
        return Reason.DO_NOT_CONTACT
    held, _, bounce = (status.get((channel_kind, None)) or "").rpartition(" ")
    if bounce.startswith(BOUNCE_SOURCE):
        if not address or bounce == BOUNCE_SOURCE + address_digest(channel_kind, address):
            return Reason.UNDELIVERABLE
        status = {**status, (channel_kind, None): held or ConsentStatus.UNKNOWN}  # the customer's own opt-out
    if channel_kind == ChannelKind.SMS and status.get((channel_kind, None)) == ConsentStatus.OPTED_OUT:
        return Reason.CHANNEL_OPT_OUT  # after STOP the carriers refuse every message, receipts included
    if topic is not None and topic.transactional:
        return None
    if status.get((channel_kind, None)) == ConsentStatus.OPTED_OUT:
        return Reason.CHANNEL_OPT_OUT
    if topic is None:
        return None
    topic_rows = [status.get((channel_kind, topic.pk)), status.get(("", topic.pk))]
    if ConsentStatus.OPTED_OUT in topic_rows:
        return Reason.TOPIC_OPT_OUT
    if topic.requires_opt_in and ConsentStatus.OPTED_IN not in topic_rows:
        return Reason.NO_OPT_IN
    return None


def _book_row(row: tuple) -> tuple:
    kind, topic_id, status, slug, source = row
    return kind, topic_id, _status(status, source), slug


class ConsentBook:
    """The consents of many customers, loaded with one query on first use: consent_refusal and
    personalization_allowed for a batch (the engine's SendBatch, the dispatcher's claim)
    without a query per message. A customer outside the book is looked up on its own."""

    def __init__(self, customer_ids: Iterable[int]) -> None:
        self.customer_ids = set(customer_ids)
        self._rows: dict[int, list[tuple]] | None = None

    def rows(self, customer_id: int) -> list[tuple]:
        """(channel kind, topic id, status as refusal_from reads it, topic slug) of each of the
        customer's consents."""
        fields = ("channel_kind", "topic_id", "status", "topic__slug", "source")
        if self._rows is None:
            self._rows = {}
            for row in Consent.objects.filter(customer_id__in=self.customer_ids).values_list("customer_id", *fields):
                self._rows.setdefault(row[0], []).append(_book_row(row[1:]))
        if customer_id not in self.customer_ids:
            self.customer_ids.add(customer_id)
            self._rows[customer_id] = [_book_row(row) for row in
                                       Consent.objects.filter(customer_id=customer_id).values_list(*fields)]
        return self._rows.get(customer_id, [])

    def refusal(self, customer_id: int, channel_kind: str, topic: Topic | None, address: str = "") -> Reason | None:
        wanted = {None, topic.pk} if topic is not None else {None}
        status = {(kind, topic_id): st for kind, topic_id, st, _ in self.rows(customer_id)
                  if kind in ("", channel_kind) and topic_id in wanted}
        return refusal_from(status=status, channel_kind=channel_kind, topic=topic, address=address)

    def refuser(self, customer_id: int):
        """`refuse(channel_kind, topic, address)` for channel_pick."""
        return lambda channel_kind, topic, address="": self.refusal(customer_id, channel_kind, topic, address)

    def personalized(self, customer_id: int) -> bool:
        return not any(kind == "" and slug == Topic.PERSONALIZATION and status == ConsentStatus.OPTED_OUT
                       for kind, _, status, slug in self.rows(customer_id))


def personalization_allowed(*, customer: Customer) -> bool:
    """False when the customer opted out of the `personalization` purpose: messages then
    use only the minimal profile (name, locale, addresses), not traits or scores."""
    return not Consent.objects.filter(customer=customer, channel_kind="", topic__slug=Topic.PERSONALIZATION,
                                      status=ConsentStatus.OPTED_OUT).exists()


@transaction.atomic
def consent_set(*, customer: Customer, channel_kind: str, topic: Topic | None, status: str, source: str,
                at: datetime | None = None, reason: str = "") -> Consent:
    """Record one choice; the previous one stays in the history (with `reason`, else the source).
    A choice over a stored one follows `consent_change` (a bounce and an opt-out are both kept)."""
    at = at or timezone.now()
    consent = (Consent.objects.select_for_update()
               .filter(customer=customer, channel_kind=channel_kind, topic=topic).first())
    if consent is None:
        consent = Consent(customer=customer, channel_kind=channel_kind, topic=topic)
        source = source[:100]
    else:
        source = consent_change(status_was=consent.status, source_was=consent.source, status=status, source=source)
        if source is None:
            return consent
    consent.status, consent.source, consent.updated_at = status, source, at
    consent._change_reason = reason or source
    consent.save()
    return consent


def address_suppress(*, customer: Customer, channel_kind: str, address: str, detail: str) -> Consent:
    """The address bounced for good (an SMTP 5xx about the mailbox, a vendor's permanent
    'unknown number'): no message on this channel kind goes to it again, receipts included (a
    mailbox that does not exist gets nothing, and every try costs the sender's reputation). Kept
    as a channel-wide opt-out whose source names the address (a digest), with its history; a
    new address on the profile is not held (unless the customer opted out of the channel too: that
    opt-out is kept with the bounce), and an operator lifts it by changing the consent."""
    return consent_set(customer=customer, channel_kind=channel_kind, topic=None, status=ConsentStatus.OPTED_OUT,
                       source=BOUNCE_SOURCE + address_digest(channel_kind, address),
                       reason=f"hard bounce: {detail}"[:300])


def complaint_apply(*, customer: Customer, channel_kind: str, detail: str) -> Consent:
    """The customer marked a message as spam (a feedback loop, a vendor's complaint event): out of
    everything but transactional messages on that channel kind, as an unsubscribe from all."""
    return consent_set(customer=customer, channel_kind=channel_kind, topic=None, status=ConsentStatus.OPTED_OUT,
                       source="complaint", reason=f"complaint: {detail}"[:300])


def unsubscribe_apply(*, customer: Customer, channel_kind: str, topic_slug: str | None, source: str) -> Consent:
    """One-click unsubscribe: out of the message's topic on its channel, or the whole
    channel when the message had no topic."""
    topic = Topic.objects.filter(slug=topic_slug).first() if topic_slug else None
    return consent_set(customer=customer, channel_kind=channel_kind, topic=topic,
                       status=ConsentStatus.OPTED_OUT, source=source)


def preference_kinds() -> list[str]:
    """The channel kinds a customer can choose about: those of enabled channels (not webhooks)."""
    kinds = set(Channel.objects.filter(enabled=True).values_list("kind", flat=True)) - {ChannelKind.WEBHOOK}
    return [k for k in ChannelKind.values if k in kinds]


def preferences_get(*, customer: Customer) -> dict:
    """What the preference centre shows: each non-transactional topic x channel kind, on or off."""
    kinds = preference_kinds()
    topics = list(Topic.objects.filter(transactional=False).exclude(slug=Topic.PERSONALIZATION).order_by("name"))
    rows = []
    for topic in topics:
        cells = []
        for kind in kinds:
            refused = consent_refusal(customer=customer, channel_kind=kind, topic=topic)
            cells.append({"kind": kind, "field": f"t:{topic.slug}:{kind}", "on": refused is None})
        rows.append({"topic": topic, "cells": cells})
    return {
        "kinds": kinds,
        "rows": rows,
        "do_not_contact": Consent.objects.filter(customer=customer, channel_kind="", topic__isnull=True,
                                                 status=ConsentStatus.OPTED_OUT).exists(),
        "personalization": personalization_allowed(customer=customer),
    }


@transaction.atomic
def preferences_save(*, customer: Customer, checked: set[str], do_not_contact: bool, personalization: bool,
                     source: str = "preference_centre") -> None:
    """Store the preference centre form: every shown cell becomes an explicit choice.

    Turning a topic on for a channel also lifts a channel-wide opt-out of that channel
    (the customer just said they want messages there)."""
    for kind in preference_kinds():
        for topic in Topic.objects.filter(transactional=False).exclude(slug=Topic.PERSONALIZATION):
            on = f"t:{topic.slug}:{kind}" in checked
            consent_set(customer=customer, channel_kind=kind, topic=topic, source=source,
                        status=ConsentStatus.OPTED_IN if on else ConsentStatus.OPTED_OUT)
            if on:
                wide = Consent.objects.filter(customer=customer, channel_kind=kind, topic__isnull=True,
                                              status=ConsentStatus.OPTED_OUT).first()
                if wide:
                    consent_set(customer=customer, channel_kind=kind, topic=None, source=source,
                                status=ConsentStatus.UNKNOWN)
    consent_set(customer=customer, channel_kind="", topic=None, source=source,
                status=ConsentStatus.OPTED_OUT if do_not_contact else ConsentStatus.UNKNOWN)
    purpose, _ = Topic.objects.get_or_create(slug=Topic.PERSONALIZATION, defaults={"name": "Personalization"})
    consent_set(customer=customer, channel_kind="", topic=purpose, source=source,
                status=ConsentStatus.OPTED_IN if personalization else ConsentStatus.OPTED_OUT)


def customers_by_phone(phone: str) -> list[Customer]:
    """The customers a phone number belongs to (its identity, or the profile's number), matched
    normalised as numbers are stored, or in the spelling an identity stored before that holds
    (`phone_lookup_values`); nobody for an empty number (never every phone-less customer)."""
    values = phone_lookup_values(phone)
    if not phone_normalize(phone):
        return []
    ids = set(Identity.objects.filter(kind="phone", value__in=values).values_list("customer_id", flat=True))
    ids |= set(Customer.objects.filter(phone__in=values[:2], merged_into__isnull=True).values_list("pk", flat=True))
    return list(Customer.objects.filter(pk__in=ids))


# Other apps hear inbound SMS through these (registered in their AppConfig.ready()): each is called
# as hook(channel=, customers=, body=, message_id=, reopen=) and returns a dict of what it did, or
# None. The agents app puts the text on the case an agent last texted the sender about.
INBOUND_SMS_HOOKS: list[Callable[..., dict | None]] = []


def inbound_sms_handle(*, channel: Channel, from_number: str, body: str, message_id: str = "") -> dict:
    """SMS keywords (`sms_keyword`: the first word, case and punctuation aside): STOP (and
    synonyms) opts the sender out of all SMS; START opts back in; HELP/INFO is answered with
    how to stop (the channel's settings.help_reply, else HELP_REPLY), as carriers require.
    Every text, keyword or not, is then offered to INBOUND_SMS_HOOKS ("Cancel it" is a STOP and
    may answer an agent too); a bare keyword ("STOP", "Yes") may join an open case but never
    reopens a resolved one. `message_id` (Twilio's MessageSid) makes a retried webhook count
    once. Returns what was done: the keyword's action, else "to_case" or "ignored"."""
    word = sms_keyword(body)
    customers = customers_by_phone(from_number)
    if word in STOP_WORDS:
        result = {"action": ConsentStatus.OPTED_OUT}
    elif word in START_WORDS:
        result = {"action": ConsentStatus.OPTED_IN}
    elif word in HELP_WORDS:
        result = {"action": "help", "reply": str((channel.settings or {}).get("help_reply") or HELP_REPLY)}
    else:
        result = {"action": "ignored"}
    if result["action"] in (ConsentStatus.OPTED_OUT, ConsentStatus.OPTED_IN):
        for customer in customers:
            consent_set(customer=customer, channel_kind=channel.kind, topic=None, status=result["action"],
                        source=f"sms_keyword:{word}")
    bare_keyword = result["action"] != "ignored" and len(body.split()) == 1
    for hook in INBOUND_SMS_HOOKS:
        if customers and (done := hook(channel=channel, customers=customers, body=body, message_id=message_id,
                                       reopen=not bare_keyword)):
            result = {**result, **done} if result["action"] == "ignored" else {**done, **result}  # a keyword's action stays
            break
    return {**result, "customers": [c.pk for c in customers]}
