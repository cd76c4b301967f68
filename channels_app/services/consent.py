"""Consent: what a customer allowed, per channel kind x topic, checked at send time."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone

from channels_app.choices import ChannelKind, ConsentStatus, Reason
from channels_app.models import Channel, Consent, InboundMessage, Suppression, Topic
from journeys.choices import IdentityKind
from journeys.errors import JourneyError
from journeys.models import Customer, Identity
from journeys.selectors import customers_holding
from journeys.services.digests import personal_digest
from journeys.services.governance import history_stamp
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
M = TypeVar("M", bound=models.Model)


def _address_canonical(channel_kind: str, address: str) -> str:
    """An address in the one spelling its digests are made of: a phone number in E.164 (else
    normalised), as a bounce names it ('+44...') and the profile may hold it as typed ('0044 ...');
    an email address in lower case."""
    canonical = (phone_e164(address) or phone_normalize(address)) if channel_kind in PHONE_KINDS else address
    return canonical.strip().lower()


def address_digest(channel_kind: str, address: str) -> str:
    """What is kept of an address that must be recognised but not read: a hard bounce's mark on
    the consent row, and an erased person's suppressions (a keyed digest, journeys.services.digests)."""
    return personal_digest(_address_canonical(channel_kind, address), purpose="address")


LEGACY_MARK_CHARS = 16  # marks written before they were keyed: sha256 of the address, 16 hex digits


def bounce_holds(mark: str, channel_kind: str, address: str) -> bool:
    """Whether a hard bounce's mark (`hard_bounce:<digest>`) names `address`. A mark written before
    marks were keyed is a bare sha256 of the address, and still holds it."""
    digest = mark.removeprefix(BOUNCE_SOURCE)
    if len(digest) == LEGACY_MARK_CHARS:
        return digest == hashlib.sha256(_address_canonical(channel_kind, address).encode()).hexdigest()[:16]
    return digest == address_digest(channel_kind, address)


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
    opt-out on this channel or on every channel -> topics that require an opt-in. The customer's
    consents count with the suppressions an erasure kept for their addresses, and with what other
    live profiles holding the message's address opted out of (`ConsentBook`, `address_holders`).
    """
    return ConsentBook.of(customer).refusal(customer.pk, channel_kind, topic, address)


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
        if not address or bounce_holds(bounce, channel_kind, address):
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


def _status_parts(status: str) -> tuple[bool, str]:
    """(opted out by a choice, a bounce's mark or "") of a status as refusal_from reads it."""
    head, _, tail = status.rpartition(" ")
    if tail.startswith(BOUNCE_SOURCE):
        return head == ConsentStatus.OPTED_OUT, tail
    return status == ConsentStatus.OPTED_OUT, ""


def _status_joined(own: str, held: str) -> str:
    """A consent's status with a suppression's over it: out if either is out, with the mark of a
    bounce either holds (the suppression's first). A suppression holds until an explicit opt-in
    lifts it, so a later choice from elsewhere (an import's opt-in) does not undo it."""
    out_own, mark_own = _status_parts(own)
    out_held, mark_held = _status_parts(held)
    mark = mark_held or mark_own
    if out_own or out_held:
        return f"{ConsentStatus.OPTED_OUT} {mark}".rstrip()
    return mark or own


def profile_digests(*addresses: tuple[str, str]) -> set[str]:
    """The digests of (channel kind, address) pairs that are set: what suppressions are found by."""
    return {address_digest(kind, address) for kind, address in addresses if address and address.strip()}


def _suppressions(digests: Iterable[str]) -> tuple[dict[str, list[tuple]], dict[str, dict[tuple, datetime]]]:
    """The suppressions of these digests, as consent rows (kind, topic id, status, topic slug), and
    the explicit opt-ins kept under them ({(kind, topic id): since}, `address_opt_ins_record`)."""
    found: dict[str, list[tuple]] = {d: [] for d in digests}
    lifted: dict[str, dict[tuple, datetime]] = {d: {} for d in found}
    if found:
        for digest, kind, topic_id, status, slug, since in Suppression.objects.filter(digest__in=list(found)).values_list(
                "digest", "channel_kind", "topic_id", "status", "topic__slug", "created_at"):
            if status == ConsentStatus.OPTED_IN:
                lifted[digest][(kind, topic_id)] = since
            else:
                found[digest].append((kind, topic_id, status, slug))
    return found, lifted


# --------------------------------------------------------------------------- an address's opt-outs

# An opt-out holds for the address it was made with: what a live profile opted out of on the channel
# kinds that reach its email address (email) or phone number (SMS, voice), or on every channel, holds
# that address through any other profile that has it now (a visitor who typed it into a form), as it
# holds the profile's own messages. Read at send time from the profiles' current addresses, so it
# follows an address change; lifted only by an explicit opt-in from a profile with the address.
ADDRESS_CLASS = {ChannelKind.EMAIL: IdentityKind.EMAIL, ChannelKind.SMS: IdentityKind.PHONE,
                 ChannelKind.VOICE: IdentityKind.PHONE}
CLASS_KINDS = {IdentityKind.EMAIL: ("", ChannelKind.EMAIL), IdentityKind.PHONE: ("", *PHONE_KINDS)}
AddressKey = tuple[str, str]  # (IdentityKind.EMAIL or PHONE, the address as `_address_canonical` spells it)


def address_key(channel_kind: str, address: str) -> AddressKey | None:
    """The address a message of this channel kind goes to, in the one spelling holders are matched
    by; None for a kind no email address or phone number reaches, or no address."""
    kind = ADDRESS_CLASS.get(channel_kind)
    canonical = _address_canonical(channel_kind, address) if kind and address and address.strip() else ""
    return (kind, canonical) if canonical else None


def _key_digest(key: AddressKey) -> str:
    return address_digest(ChannelKind.EMAIL if key[0] == IdentityKind.EMAIL else ChannelKind.SMS, key[1])


def address_holders(keys: Iterable[AddressKey]) -> dict[AddressKey, set[int]]:
    """The live profiles (not merged away, not erased) whose email address or phone number is one of
    these now, with one query of indexed look-ups (`journeys.selectors.customers_holding`: the
    profile's email column in any capitalisation, its phone column in the spellings a number is
    stored in, and the profile the address's identity points at, when its own address is still
    that one)."""
    found: dict[AddressKey, set[int]] = {key: set() for key in keys}
    emails = {canonical for kind, canonical in found if kind == IdentityKind.EMAIL}
    phones = {v for kind, canonical in found if kind == IdentityKind.PHONE for v in phone_lookup_values(canonical)}
    if not emails and not phones:
        return found
    for pk, email, phone in customers_holding(emails=emails, phones=phones, fields=("pk", "email", "phone")):
        for key in (address_key(ChannelKind.EMAIL, email), address_key(ChannelKind.SMS, phone)):
            if key in found:
                found[key].add(pk)
    return found


def _opt_outs(customer_ids: Iterable[int]) -> dict[int, list[tuple]]:
    """The opt-outs (a bounce's mark with them) of these profiles: (kind, topic id, status as
    refusal_from reads it, topic slug, since)."""
    found: dict[int, list[tuple]] = {pk: [] for pk in customer_ids}
    if found:
        for pk, kind, topic_id, status, slug, source, since in Consent.objects.filter(
                customer_id__in=list(found), status=ConsentStatus.OPTED_OUT).values_list(
                "customer_id", "channel_kind", "topic_id", "status", "topic__slug", "source", "updated_at"):
            found[pk].append((kind, topic_id, _status(status, source), slug, since))
    return found


class ConsentBook:
    """The consents of many customers, loaded with one query on first use: consent_refusal and
    personalization_allowed for a batch (the engine's SendBatch, the dispatcher's claim)
    without a query per message. A customer outside the book is looked up on its own.

    An erased person's suppressions count as consents of whoever has their address now: the
    book reads those of its customers' email addresses and phone numbers with one more query
    (`addresses`: customer id -> (email, phone) when the caller has them, else read), and those
    of a message's own address when it is another one. So do the opt-outs of other live profiles
    holding a message's address (`address_rows`): the holders of every address of the book (its
    customers' own and the `destinations` a batch sends to: (customer id, channel kind, address))
    are read with one query on first use, and the opt-outs of those shared with one more."""

    def __init__(self, customer_ids: Iterable[int], addresses: dict[int, tuple[str, str]] | None = None,
                 destinations: Iterable[tuple[int, str, str]] = ()) -> None:
        self.customer_ids = set(customer_ids)
        self.addresses = dict(addresses or {})
        self.destinations = list(destinations)
        self._rows: dict[int, list[tuple]] | None = None
        self._digests: dict[int, set[str]] = {}
        self._held: dict[str, list[tuple]] = {}
        self._lifted: dict[str, dict[tuple, datetime]] = {}
        self._holders: dict[AddressKey, set[int]] | None = None
        self._askers: dict[AddressKey, set[int]] = defaultdict(set)
        self._opt_outs: dict[int, list[tuple]] = {}

    @classmethod
    def of(cls, customer: Customer) -> ConsentBook:
        """A book of one customer whose profile is at hand."""
        return cls([customer.pk] if customer.pk else [], {customer.pk: (customer.email, customer.phone)})

    def _held_load(self, digests: Iterable[str]) -> None:
        held, lifted = _suppressions(set(digests) - self._held.keys())
        self._held.update(held)
        self._lifted.update(lifted)

    def _load(self, customer_ids: set[int]) -> None:
        fields = ("channel_kind", "topic_id", "status", "topic__slug", "source")
        rows: dict[int, list[tuple]] = {pk: [] for pk in customer_ids}
        if customer_ids:
            for row in Consent.objects.filter(customer_id__in=customer_ids).values_list("customer_id", *fields):
                rows[row[0]].append(_book_row(row[1:]))
            unknown = customer_ids - self.addresses.keys()
            if unknown:
                self.addresses.update({pk: (email, phone) for pk, email, phone in
                                       Customer.objects.filter(pk__in=unknown).values_list("pk", "email", "phone")})
        for pk in customer_ids:
            email, phone = self.addresses.get(pk) or ("", "")
            self._digests[pk] = profile_digests((ChannelKind.EMAIL, email), (ChannelKind.SMS, phone))
        self._held_load({d for pk in customer_ids for d in self._digests[pk]})
        for pk in customer_ids:
            rows[pk] = self._overlaid(rows[pk], [r for d in sorted(self._digests[pk]) for r in self._held[d]])
        self._rows = {**(self._rows or {}), **rows}

    @staticmethod
    def _overlaid(rows: list[tuple], held: list[tuple]) -> list[tuple]:
        by_key = {(kind, topic_id): (kind, topic_id, status, slug) for kind, topic_id, status, slug in rows}
        for kind, topic_id, status, slug in held:
            own = by_key.get((kind, topic_id))
            by_key[(kind, topic_id)] = (kind, topic_id, _status_joined(own[2] if own else "", status), slug)
        return list(by_key.values())

    def rows(self, customer_id: int) -> list[tuple]:
        """(channel kind, topic id, status as refusal_from reads it, topic slug) of each of the
        customer's consents, with the suppressions of their addresses over them."""
        if self._rows is None:
            self._load(self.customer_ids)
        if customer_id not in self._rows:
            self.customer_ids.add(customer_id)
            self._load({customer_id})
        return self._rows.get(customer_id, [])

    def _address_load(self, wanted: list[tuple[int, str, str]]) -> None:
        """Read who holds the addresses of these (customer id, channel kind, address) not read
        yet, the opt-outs of those another profile holds too, and the opt-ins that lifted them."""
        keys: set[AddressKey] = set()
        for customer_id, channel_kind, address in wanted:
            if key := address_key(channel_kind, address):
                self._askers[key].add(customer_id)
                keys.add(key)
        self._holders = self._holders or {}
        self._holders.update(address_holders({k for k in keys if k not in self._holders}))
        shared = {k for k in keys if len(self._holders[k] | self._askers[k]) > 1}
        self._opt_outs.update(_opt_outs({h for k in shared for h in self._holders[k]} - self._opt_outs.keys()))
        held = {_key_digest(k) for k in shared if any(self._opt_outs[h] for h in self._holders[k])}
        self._held_load(held - self._held.keys())

    def address_rows(self, customer_id: int, channel_kind: str, address: str = "") -> list[tuple]:
        """What the other live profiles holding this address (the customer's own for the kind when
        none is given) opted out of on the channel kinds that reach it or on every channel, as
        consent rows: a bounce's mark only where it names this address, and nothing that an
        explicit opt-in from a profile with the address lifted later (`address_opt_ins_record`)."""
        self.rows(customer_id)
        email, phone = self.addresses.get(customer_id) or ("", "")
        address = address or (email if channel_kind == ChannelKind.EMAIL else phone)
        key = address_key(channel_kind, address)
        if key is None:
            return []
        if self._holders is None:  # first look-up: every address of the book at once
            self._address_load([(customer_id, channel_kind, address), *self.destinations, *(
                (pk, kind, value) for pk in self.customer_ids for kind, value in
                zip((ChannelKind.EMAIL, ChannelKind.SMS), self.addresses.get(pk) or ("", "")))])
        elif key not in self._holders or customer_id not in self._askers[key]:
            self._address_load([(customer_id, channel_kind, address)])
        lifted = self._lifted.get(_key_digest(key), {})
        found = []
        for holder in self._holders[key] - {customer_id}:
            for kind, topic_id, status, slug, since in self._opt_outs.get(holder, ()):
                if kind not in CLASS_KINDS[key[0]] or (lifted.get((kind, topic_id)) or since) > since:
                    continue  # not a kind this address is reached by, or lifted since
                out, mark = _status_parts(status)
                mark = mark if mark and bounce_holds(mark, kind or channel_kind, key[1]) else ""
                if out or mark:
                    found.append((kind, topic_id, f"{ConsentStatus.OPTED_OUT if out else ''} {mark}".strip(), slug))
        return found

    def refusal(self, customer_id: int, channel_kind: str, topic: Topic | None, address: str = "",
                holds: bool = True) -> Reason | None:
        """Why this message may not go (None = may); with `holds=False` only by the customer's own
        consents (and what an erasure kept for their addresses), not what other profiles holding
        the address opted out of: the preference centre's own choices."""
        wanted = {None, topic.pk} if topic is not None else {None}
        rows = self.rows(customer_id)
        digest = address_digest(channel_kind, address) if address and address.strip() else None
        if digest is not None and digest not in self._digests.get(customer_id, ()):
            if digest not in self._held:  # a message to another address than the profile's
                self._held_load([digest])
            rows = self._overlaid(rows, self._held[digest])
        if holds:
            rows = self._overlaid(rows, self.address_rows(customer_id, channel_kind, address))
        status = {(kind, topic_id): st for kind, topic_id, st, _ in rows
                  if kind in ("", channel_kind) and topic_id in wanted}
        return refusal_from(status=status, channel_kind=channel_kind, topic=topic, address=address)

    def refuser(self, customer_id: int):
        """`refuse(channel_kind, topic, address)` for channel_pick."""
        return lambda channel_kind, topic, address="": self.refusal(customer_id, channel_kind, topic, address)

    def personalized(self, customer_id: int) -> bool:
        return not any(kind == "" and slug == Topic.PERSONALIZATION and _status_parts(status)[0]
                       for kind, _, status, slug in self.rows(customer_id))

    def do_not_contact(self, customer_id: int) -> bool:
        """The customer's own do-not-contact (another profile's, held for a shared address, holds
        only that address: `address_rows`)."""
        return any(kind == "" and topic_id is None and _status_parts(status)[0]
                   for kind, topic_id, status, _ in self.rows(customer_id))


def personalization_allowed(*, customer: Customer) -> bool:
    """False when the customer opted out of the `personalization` purpose: messages then
    use only the minimal profile (name, locale, addresses), not traits or scores."""
    return ConsentBook.of(customer).personalized(customer.pk)


def _inserted(row: models.Model) -> bool:
    """Insert `row` in a savepoint; False when a unique constraint refuses it (the row of its key
    is there already, or a concurrent transaction has just inserted it: on PostgreSQL the insert
    waits for that one to end), and the caller's transaction goes on."""
    try:
        with transaction.atomic():
            row.save(force_insert=True)
    except IntegrityError:
        return False
    return True


def _locked_or_inserted(model: type[M], new: Callable[[], M], **key: Any) -> tuple[M, bool]:
    """The row of `key` locked (FOR UPDATE), and False; or, when there is none, `new()` inserted,
    and True. Writers that all found no row each try the insert: one goes in, the others read that
    row, locked, once it is committed, and go on as if they had found it (never an IntegrityError)."""
    rows = model.objects.select_for_update().filter(**key)
    found = rows.first()
    if found is None:
        row = new()
        if _inserted(row):
            return row, True
        found = rows.first()
        if found is None:  # refused by another constraint (a foreign key): not a concurrent writer
            row.save(force_insert=True)  # raises that IntegrityError
    return found, False


# --------------------------------------------------------------------------- suppressions


def suppressions_keep(*, customer_ids: list[int], emails: Iterable[str], phones: Iterable[str],
                      now: datetime | None = None) -> int:
    """What an erasure keeps of the person's objections (before their consents go): for each
    opt-out (a topic, a channel, do-not-contact, personalization) a suppression under the digest
    of each of their email addresses and phone numbers, and for a hard bounce one under the
    bounced address's. Opt-ins are not kept: they were permissions, and the person is gone.
    The explicit opt-ins kept under their addresses go too: they were permissions as well.
    Returns how many suppressions hold now."""
    now = now or timezone.now()
    digests = profile_digests(*((ChannelKind.EMAIL, e) for e in emails), *((ChannelKind.SMS, p) for p in phones))
    Suppression.objects.filter(digest__in=digests, status=ConsentStatus.OPTED_IN).delete()
    addresses = [(ChannelKind.EMAIL, e) for e in emails] + [(ChannelKind.SMS, p) for p in phones]
    kept: dict[tuple[str, str, int | None], str] = {}
    for kind, topic_id, status, source in Consent.objects.filter(customer_id__in=customer_ids).values_list(
            "channel_kind", "topic_id", "status", "source"):
        out, mark = _status_parts(_status(status, source))
        if out:
            for digest in digests:
                kept[(digest, kind, topic_id)] = ConsentStatus.OPTED_OUT
        if not mark:
            continue
        bounced = mark.removeprefix(BOUNCE_SOURCE)
        if len(bounced) == LEGACY_MARK_CHARS:  # a bare hash: the person's address it names, keyed
            named = [a for a in addresses if a[1] and bounce_holds(mark, kind or a[0], a[1])]
            bounced = address_digest(kind or named[0][0], named[0][1]) if named else ""
            mark = BOUNCE_SOURCE + bounced
        if bounced:
            key = (bounced, kind, topic_id)
            kept[key] = _status_joined(kept.get(key, ""), mark)
    for (digest, kind, topic_id), status in kept.items():
        held, inserted = _locked_or_inserted(
            Suppression, lambda: Suppression(digest=digest, channel_kind=kind, topic_id=topic_id, status=status,
                                             created_at=now),
            digest=digest, channel_kind=kind, topic_id=topic_id)
        if not inserted and _status_joined(held.status, status) != held.status:
            Suppression.objects.filter(pk=held.pk).update(status=_status_joined(held.status, status), created_at=now)
    return len(kept)


def suppressions_lift(*, customer: Customer, choices: Iterable[tuple[str, Topic | None]],
                      address_kinds: Iterable[str] = (ChannelKind.EMAIL, ChannelKind.SMS)) -> int:
    """The customer opted in again explicitly (the preference centre, SMS START, ops on the
    Consent form): the suppressions of those (channel kind, topic) choices kept for their
    addresses by an erasure go, and what other live profiles holding the customer's address
    opted out of for them no longer holds it (`address_opt_ins_record`) for the addresses of
    `address_kinds` (none: only the erasure's). Other ways in (an import, an API's traits) lift
    nothing. Returns how many suppressions went or were recorded."""
    choices = list(choices)
    emails = Identity.objects.filter(customer=customer, kind="email").values_list("value", flat=True)
    phones = Identity.objects.filter(customer=customer, kind="phone").values_list("value", flat=True)
    digests = profile_digests((ChannelKind.EMAIL, customer.email), (ChannelKind.SMS, customer.phone),
                              *((ChannelKind.EMAIL, e) for e in emails), *((ChannelKind.SMS, p) for p in phones))
    match = Q()
    for kind, topic in choices:
        match |= Q(channel_kind=kind, topic=topic) if topic is not None else Q(channel_kind=kind, topic__isnull=True)
    kept = Suppression.objects.filter(match, digest__in=digests).exclude(status=ConsentStatus.OPTED_IN)  # not a lift
    gone = kept.delete()[0] if digests and match else 0
    return gone + address_opt_ins_record(customer=customer, choices=choices, address_kinds=address_kinds)


def address_opt_ins_record(*, customer: Customer, choices: Iterable[tuple[str, Topic | None]],
                           address_kinds: Iterable[str] = (ChannelKind.EMAIL, ChannelKind.SMS),
                           now: datetime | None = None) -> int:
    """An explicit opt-in (`suppressions_lift`) from a profile with an address, for these (channel
    kind, topic) choices: another live profile's opt-out of one of them made before now no longer
    holds the address (one made later does). Kept where such an opt-out holds now, as a
    suppression of the address's digest with the status `opted_in` since now: it names no one,
    and an erasure of someone with the address drops it (`suppressions_keep`). Returns how many."""
    now = now or timezone.now()
    book = ConsentBook.of(customer)
    recorded = 0
    for channel_kind in {ChannelKind.SMS if k in PHONE_KINDS else k for k in address_kinds}:
        held = {(kind, topic_id) for kind, topic_id, status, _ in book.address_rows(customer.pk, channel_kind)}
        key = address_key(channel_kind, customer.email if channel_kind == ChannelKind.EMAIL else customer.phone)
        for kind, topic in choices:
            if (kind, topic.pk if topic is not None else None) in held and kind in CLASS_KINDS[key[0]]:
                Suppression.objects.update_or_create(digest=_key_digest(key), channel_kind=kind, topic=topic,
                                                     defaults={"status": ConsentStatus.OPTED_IN, "created_at": now})
                recorded += 1
    return recorded


@transaction.atomic
def consent_set(*, customer: Customer, channel_kind: str, topic: Topic | None, status: str, source: str,
                at: datetime | None = None, reason: str = "", actor: Any = None) -> Consent:
    """Record one choice; the previous one stays in the history (with `reason`, else the source,
    and `actor`, the user who recorded it, when one did). A choice over a stored one follows
    `consent_change` (a bounce and an opt-out are both kept)."""
    at = at or timezone.now()

    def new() -> Consent:
        first = Consent(customer=customer, channel_kind=channel_kind, topic=topic, status=status,
                        source=source[:100], updated_at=at)
        return history_stamp(first, actor=actor, reason=reason or first.source)

    consent, inserted = _locked_or_inserted(Consent, new, customer=customer, channel_kind=channel_kind, topic=topic)
    if inserted:
        return consent
    source = consent_change(status_was=consent.status, source_was=consent.source, status=status, source=source)
    if source is None:
        return consent
    consent.status, consent.source, consent.updated_at = status, source, at
    history_stamp(consent, actor=actor, reason=reason or source)
    consent.save()
    return consent


def consent_record_by_operator(*, customer: Customer, channel_kind: str, topic: Topic | None, status: str,
                               actor: Any, reason: str) -> Consent:
    """A choice ops record on the admin's Consent form (the customer asked by phone, by letter):
    its source names the operator (`admin:<username>`) and its time is now, both set here rather
    than typed, so what the API and the export show is who recorded it and when; the reason and
    the user are on the history row. An opt-in recorded so is explicit: it lifts what an erasure
    kept for that choice (`suppressions_lift`)."""
    if not reason.strip():
        raise JourneyError("say why the consent changes (e.g. the customer's request)", field="reason")
    consent = consent_set(customer=customer, channel_kind=channel_kind, topic=topic, status=status,
                          source=f"admin:{actor.get_username()}", at=timezone.now(), reason=reason, actor=actor)
    if status == ConsentStatus.OPTED_IN:
        suppressions_lift(customer=customer, choices=[(channel_kind, topic)])
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


def _preference_cells(customer: Customer) -> tuple[ConsentBook, list[str], list[dict]]:
    """The preference centre's cells (topic x channel kind): `own` is the customer's own choice
    (with what an erasure kept for their addresses), `held` names what another profile holding
    the address the kind reaches opted out of when that holds the message though the customer's
    own choice would let it go (`ConsentBook.address_rows`); `on` is what is sent now."""
    kinds = preference_kinds()
    topics = list(Topic.objects.filter(transactional=False).exclude(slug=Topic.PERSONALIZATION).order_by("name"))
    book = ConsentBook.of(customer)
    rows = []
    for topic in topics:
        cells = []
        for kind in kinds:
            own = book.refusal(customer.pk, kind, topic, holds=False) is None
            held = own and book.refusal(customer.pk, kind, topic) is not None
            cells.append({"kind": kind, "field": f"t:{topic.slug}:{kind}", "own": own, "held": held,
                          "on": own and not held})
        rows.append({"topic": topic, "cells": cells})
    return book, kinds, rows


def preferences_get(*, customer: Customer) -> dict:
    """What the preference centre shows: each non-transactional topic x channel kind, on or off by
    the customer's own choices (with what an erasure kept for their addresses, `ConsentBook`), and
    do-not-contact as the customer chose it. A cell that another profile holding the address
    opted out of is shown off and marked `held` (a note says so: ticking it subscribes this
    address again, README's explicit opt-in); it is never shown as the customer's own choice."""
    book, kinds, rows = _preference_cells(customer)
    return {
        "kinds": kinds,
        "rows": rows,
        "held": any(cell["held"] for row in rows for cell in row["cells"]),
        "do_not_contact": book.do_not_contact(customer.pk),
        "personalization": book.personalized(customer.pk),
    }


@transaction.atomic
def preferences_save(*, customer: Customer, checked: set[str], do_not_contact: bool, personalization: bool,
                     source: str = "preference_centre") -> None:
    """Store the preference centre form: every shown cell becomes an explicit choice, except a
    `held` one left off: that off is another profile's opt-out of the address, not this
    customer's, so nothing is written for it (never copied onto this profile, nor onto its
    other addresses).

    Turning a topic on for a channel also lifts a channel-wide opt-out of that channel
    (the customer just said they want messages there). What the customer turns on, or off for
    do-not-contact, is an explicit choice: it lifts the suppressions an erasure kept for it; a
    held cell ticked lifts, for the address of its kind only, what holds it there
    (`address_opt_ins_record`)."""
    _, _, rows = _preference_cells(customer)
    lifted: list[tuple[str, Topic | None]] = []
    for row in rows:
        topic = row["topic"]
        for cell in row["cells"]:
            kind, on = cell["kind"], cell["field"] in checked
            if cell["held"] and not on:
                continue
            consent_set(customer=customer, channel_kind=kind, topic=topic, source=source,
                        status=ConsentStatus.OPTED_IN if on else ConsentStatus.OPTED_OUT)
            if not on:
                continue
            choices = [(kind, topic), (kind, None), ("", topic)]
            if cell["held"]:
                suppressions_lift(customer=customer, choices=[*choices, ("", None)], address_kinds=[kind])
            else:
                lifted += choices
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
    if not do_not_contact:
        lifted.append(("", None))
    if personalization:
        lifted.append(("", purpose))
    suppressions_lift(customer=customer, choices=lifted, address_kinds=())


def customers_by_phone(phone: str) -> list[Customer]:
    """The customers a phone number belongs to (its identity, or the profile's number), matched
    normalised as numbers are stored, or in the spelling an identity stored before that holds
    (`phone_lookup_values`); nobody for an empty number (never every phone-less customer)."""
    values = phone_lookup_values(phone)
    if not phone_normalize(phone):
        return []
    return list(Customer.objects.filter(pk__in=set(customers_holding(phones=values, live=False))))


# Other apps hear inbound SMS through these (registered in their AppConfig.ready()): each is called
# as hook(channel=, customers=, body=, message_id=, reopen=) and returns a dict of what it did, or
# None. The agents app puts the text on the case an agent last texted the sender about.
INBOUND_SMS_HOOKS: list[Callable[..., dict | None]] = []


def sms_keyword_action(*, channel: Channel, body: str) -> dict:
    """What a text asks for as a keyword, applied nowhere: {"action": opted_out / opted_in / help
    (with the channel's HELP `reply`) / ignored}. inbound_sms_handle applies it; a retried
    webhook's answer (the same confirmation again) reads it too."""
    word = sms_keyword(body)
    if word in STOP_WORDS:
        return {"action": ConsentStatus.OPTED_OUT}
    if word in START_WORDS:
        return {"action": ConsentStatus.OPTED_IN}
    if word in HELP_WORDS:
        return {"action": "help", "reply": str((channel.settings or {}).get("help_reply") or HELP_REPLY)}
    return {"action": "ignored"}


@transaction.atomic
def inbound_sms_handle(*, channel: Channel, from_number: str, body: str, message_id: str = "") -> dict:
    """SMS keywords (`sms_keyword`: the first word, case and punctuation aside): STOP (and
    synonyms) opts the sender out of all SMS; START opts back in; HELP/INFO is answered with
    how to stop (the channel's settings.help_reply, else HELP_REPLY), as carriers require.
    Every text, keyword or not, is then offered to INBOUND_SMS_HOOKS ("Cancel it" is a STOP and
    may answer an agent too); a bare keyword ("STOP", "Yes") may join an open case but never
    reopens a resolved one. `message_id` (Twilio's MessageSid) makes a retried webhook count
    once: a message already handled (or being handled right now) is answered with
    {"action": "repeated"} and changes nothing, nor is offered to the hooks again (its
    `InboundMessage` key, inserted in the transaction that does what the message says).
    Returns what was done: the keyword's action, else "to_case" or "ignored"."""
    if message_id and not _inserted(InboundMessage(channel=channel, message_id=message_id[:200],
                                                   received_at=timezone.now())):
        return {"action": "repeated", "customers": []}
    customers = customers_by_phone(from_number)
    result = sms_keyword_action(channel=channel, body=body)
    if result["action"] in (ConsentStatus.OPTED_OUT, ConsentStatus.OPTED_IN):
        for customer in customers:
            consent_set(customer=customer, channel_kind=channel.kind, topic=None, status=result["action"],
                        source=f"sms_keyword:{sms_keyword(body)}")
            if result["action"] == ConsentStatus.OPTED_IN:  # the person texted START: their own, explicit choice
                suppressions_lift(customer=customer, choices=[(channel.kind, None)])
    bare_keyword = result["action"] != "ignored" and len(body.split()) == 1
    for hook in INBOUND_SMS_HOOKS:
        if customers and (done := hook(channel=channel, customers=customers, body=body, message_id=message_id,
                                       reopen=not bare_keyword)):
            result = {**result, **done} if result["action"] == "ignored" else {**done, **result}  # a keyword's action stays
            break
    return {**result, "customers": [c.pk for c in customers]}
