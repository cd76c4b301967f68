"""Identity resolution: many ids in, one canonical customer out."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import update_wrapper

from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.utils import timezone

from journeys.choices import IdentityKind
from journeys.engine.batch import IdMap, customer_waves, ids_q, objects_insert, rows_move, rows_set
from journeys.models import Customer, CustomerMerge, Event, Identity, MergeRefusal, Source
from journeys.services.bulk_ingest import identities_find, identities_insert
from journeys.timezones import zone_canonical

MergePairs = list[tuple[Customer, Customer]]  # (merged, target), each customer in at most one pair


def merge_hook(move: Callable[[MergePairs], None]) -> Callable[[Customer, Customer], None]:
    """A MERGE_HOOKS entry made of a function that moves an app's rows for many (merged, target)
    pairs at once (in a fixed number of statements; no customer is in two pairs): called as
    hook(merged, target) it moves one profile's, and `hook.pairs(pairs)` is its batch form."""

    def hook(merged: Customer, target: Customer) -> None:
        move([(merged, target)])

    update_wrapper(hook, move)
    hook.pairs = move  # type: ignore[attr-defined]
    return hook


# Other apps append hooks here (in AppConfig.ready) to move their own rows (cases,
# deliveries, consents) from a merged profile to the survivor; `merge_hook` gives them their
# batch form, which merges of many profiles at once call (a plain hook is called per pair).
MERGE_HOOKS: list[Callable[[Customer, Customer], None]] = []

# The profile columns a merge changes besides the traits (which an absorbed profile loses).
MERGE_SAVED_COLUMNS = ("external_id", "email", "phone", "timezone", "locale", "first_seen", "last_seen")
PROFILE_TRAIT_FIELDS = {"email": "email", "phone": "phone", "timezone": "timezone", "locale": "locale"}
# What Python's \s matches, spelled out, so that the same patterns give the same result in
# PostgreSQL's regexp_replace (journeys.services.phones rewrites stored numbers in SQL with them).
PHONE_SPACES = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Dashes as documents and OS autoformat write them (U+2010-2015: hyphen, non-breaking hyphen, en/em
# dash; U+2212 minus) and the slash of the German national format ('030/12345678') separate too.
PHONE_SEPARATOR = f"[-./(){PHONE_SPACES}\u2010-\u2015\u2212]"
# Written around a number, not part of it: a `tel:` URI's scheme and an extension ('x123',
# 'ext. 12', 'extension 12', RFC 3966 ';ext=12'). The trait keeps them; the number is without.
# Letters spelled as classes, not a flag, so that PostgreSQL reads the pattern the same way.
PHONE_AFFIX = (f"^[{PHONE_SPACES}]*[tT][eE][lL]:|[{PHONE_SPACES}]*(?:;[{PHONE_SPACES}]*[eE][xX][tT][{PHONE_SPACES}]*="
               f"|[xX]|[eE][xX][tT](?:[eE][nN][sS][iI][oO][nN])?[.:]?)[{PHONE_SPACES}]*[0-9]+[{PHONE_SPACES}]*$")
# A stored number `phone_normalize` would still change (journeys.services.phones finds them with it)
PHONE_UNNORMALISED = f"{PHONE_SEPARATOR}|{PHONE_AFFIX}"
# '+44 (0)20 7946 0010': the national trunk 0 written after a country code is not dialled from abroad
PHONE_TRUNK = f"^([{PHONE_SPACES}]*\\+[0-9]{{1,3}})[-.{PHONE_SPACES}]*\\([{PHONE_SPACES}]*0[{PHONE_SPACES}]*\\)"
PHONE_SEPARATORS = re.compile(PHONE_SEPARATOR)
PHONE_TRUNK_ZERO = re.compile(PHONE_TRUNK)
PHONE_AFFIXES = re.compile(PHONE_AFFIX)


def phone_normalize(value: str) -> str:
    """A phone number as it is stored and matched: without the spaces, dashes, dots and
    parentheses, slashes and unicode dashes people write in it ('+1 (555) 777-0001' ->
    '+15557770001'), a leading + kept, without a `tel:` scheme or an extension ('tel:+1...',
    '... x123', '...;ext=12'), and without the trunk '(0)' written after a country code
    ('+44 (0)20 7946 0010' -> '+442079460010', as a carrier sends it). One person's number
    written two ways is one profile, and a carrier's STOP from '+15557770001' finds the customer
    whose number was typed with spaces."""
    return PHONE_SEPARATORS.sub("", PHONE_TRUNK_ZERO.sub(r"\1", PHONE_AFFIXES.sub("", value or "")))


def phone_number(value: str) -> str:
    """The number a phone trait gives the profile and its identity: `phone_normalize`d, "" when
    what is left is not a number (digits, at least 3 for short codes, after an optional +). Such
    a value stays a trait only: nobody is texted at, or merged by, 'call me after 6'."""
    number = phone_normalize(value)
    digits = number[1:] if number.startswith("+") else number
    return number if digits.isascii() and digits.isdigit() and len(digits) >= 3 else ""


def phone_e164(value: str) -> str:
    """The number in E.164, as SMS and voice vendors take it ('+', the country code and the
    number, 15 digits at most): `phone_normalize`d, an international '00' prefix written as '+'
    ('0044 20 7946 0011' -> '+442079460011'); "" when it has no country code ('(415) 555-0199')
    or is not a number, which a vendor would refuse or route relative to the sender's country."""
    number = phone_normalize(value)
    if number.startswith("00"):
        number = "+" + number[2:]
    digits = number[1:]
    if number[:1] == "+" and digits.isascii() and digits.isdigit() and 2 <= len(digits) <= 15 and digits[0] != "0":
        return number
    return ""


def phone_lookup_values(value: str) -> list[str]:
    """The phone identity values a number is looked up by, best first: the normalised number,
    then the number exactly as given. An identity stored before numbers were normalised keeps
    its typed spelling when its normalised form belongs to another customer (migration 0028,
    `manage.py phones_normalise --collisions` lists them); it is still found by that spelling,
    so the number's owner is not given a new, empty profile. A number written with the
    international '00' prefix and the same number in E.164 ('0044...' and '+44...', as carriers
    write a STOP's sender) find each other: a customer who typed 00 is still reached and opted out."""
    number = phone_normalize(value)
    other = ("00" + number[1:]) if number.startswith("+") else phone_e164(number) if number.startswith("00") else ""
    return [v for v in dict.fromkeys((number, other, value or "")) if v]


def phone_owner(value: str) -> int | None:
    """The id of the customer a phone identity (see `phone_lookup_values`) points at, if any."""
    values = phone_lookup_values(value)
    found = dict(Identity.objects.filter(kind=IdentityKind.PHONE, value__in=values).values_list("value", "customer_id"))
    return next((found[v] for v in values if v in found), None)


class IdentityMap:
    """Resolves (kind, value) pairs to customers for one batch.

    Loads every identity the batch mentions in one query, then keeps the
    answers (and the customers, locked by `customers_lock`) in memory, so a
    batch of N events costs a handful of queries rather than N.
    """

    def __init__(self, keys: set[tuple[str, str]]):
        self.ids: dict[tuple[str, str], int] = {}  # as loaded or claimed; a merged owner: see `survivor`
        self.customers: dict[int, Customer] = {}
        self.dirty: set[int] = set()
        self.redirects: dict[int, int] = {}  # merged customer -> survivor, for rows not yet written
        self.later: dict[tuple[str, str], int] = {}  # claims written by claims_flush (contact keys)
        self.merges: list[Merge] = []  # decided (profiles folded in memory), written by merges_flush
        self.merges_saved: dict[int, dict] = {}  # survivor -> its profile columns just after its merge
        self._user_ids: dict[int, set[str]] | None = None  # customer -> its user id identities
        if keys:
            self._load(keys)

    def _load(self, keys: set[tuple[str, str]]) -> None:
        self.ids.update(identities_find(keys))

    def customers_lock(self, ids: set[int]) -> None:
        """Load the customers `ids` not loaded yet, locked (FOR NO KEY UPDATE, in id order) until
        the batch commits: what the batch writes back (`customers_save`) is what it read plus its
        own changes, and no concurrent merge moves their events or identities meanwhile.

        A customer a concurrent batch merged away while this one waited for its row is not used:
        its identities moved with the merge (in the same commit), so they are read again and their
        survivor is locked instead; the events of this batch never land on a merged-away profile."""
        seen: set[int] = set()
        wanted = ids - self.customers.keys() - self.redirects.keys()  # not those this batch merged
        while wanted:
            seen |= wanted
            merged: set[int] = set()
            for customer in Customer.objects.select_for_update(no_key=True).filter(pk__in=wanted).order_by("pk"):
                if customer.merged_into_id is None:
                    self.customers[customer.pk] = customer
                else:
                    merged.add(customer.pk)
                    self.customers[customer.pk] = customer  # kept only if its identities did not move
            stale = [key for key, cid in self.ids.items() if cid in merged]
            if not stale:
                return
            moved = identities_find(stale)
            for key, cid in moved.items():
                if cid != self.ids[key]:
                    self.customers.pop(self.ids[key], None)
                    self.ids[key] = cid
            wanted = {cid for cid in moved.values() if cid not in seen} - self.customers.keys()

    def refresh(self, keys: list[tuple[str, str]]) -> None:
        """Look `keys` up again: after waiting for their locks (`identity_keys_lock`) a concurrent
        batch may have stored some, and this batch must resolve (and merge) as if it came after.
        Their customers are loaded by `customers_lock`."""
        self._load(set(keys))

    def survivor(self, customer_id: int) -> int:
        while customer_id in self.redirects:
            customer_id = self.redirects[customer_id]
        return customer_id

    def get(self, kind: str, value: str) -> Customer | None:
        customer_id = self.ids.get((kind, value))
        return self.customers.get(self.survivor(customer_id)) if customer_id else None

    def claim(self, kind: str, value: str, customer: Customer) -> Customer:
        """Point (kind, value) at `customer` unless someone got there first; returns the owner."""
        existing = self.get(kind, value)
        if existing is not None:
            return existing
        try:
            with transaction.atomic():
                Identity.objects.create(kind=kind, value=value, customer=customer)
        except IntegrityError:
            # A concurrent request created it after we loaded the map: theirs wins.
            owner_id = Identity.objects.filter(kind=kind, value=value).values_list("customer_id", flat=True).get()
            self.ids[(kind, value)] = owner_id
            self.customers_lock({owner_id})  # follows a merge committed meanwhile
            # a profile this batch merged: its survivor (its rows move at merges_flush)
            owner = self.customers[self.survivor(self.ids[(kind, value)])]
            self.ids[(kind, value)] = owner.pk
            self._user_id_add(kind, value, owner.pk)
            return owner
        self.ids[(kind, value)] = customer.pk
        self.customers[customer.pk] = customer
        self._user_id_add(kind, value, customer.pk)
        return customer

    def claim_later(self, kind: str, value: str, customer: Customer) -> None:
        """Like `claim`, for keys whose owner is already decided (a known person's new device,
        an email, a phone): the first claimant in the batch wins in memory at once, and the rows
        are written together by `claims_flush` (one INSERT in key order instead of a savepoint
        and an INSERT each, in event order, which deadlocked between concurrent batches)."""
        if (kind, value) not in self.ids:
            self.ids[(kind, value)] = customer.pk
            self.later[(kind, value)] = customer.pk

    def claims_flush(self) -> None:
        """Write the deferred claims, in (kind, value) order so that concurrent batches cannot
        deadlock; a key a concurrent request stored first stays theirs (ON CONFLICT DO NOTHING)."""
        identities_insert([(k, v, self.survivor(cid)) for (k, v), cid in self.later.items()])
        self.later.clear()

    def new_customer(self, *, user_id: str, seen_at: datetime) -> Customer:
        customer = Customer.objects.create(external_id=user_id, first_seen=seen_at, last_seen=seen_at)
        self.customers[customer.pk] = customer
        if self._user_ids is not None:
            self._user_ids[customer.pk] = set()
        return customer

    def user_ids(self, customer: Customer) -> set[str]:
        """The user ids `customer`'s identities hold, as the database would answer with this batch's
        merges written: read once for every customer of the batch (not once per merge decided),
        then kept up to date by `claim` and `merge`."""
        if self._user_ids is None:
            self._user_ids = defaultdict(set)
            ids = list(self.customers)
            for customer_id, value in Identity.objects.filter(
                    ids_q("customer_id", ids), kind=IdentityKind.USER_ID).values_list("customer_id", "value"):
                self._user_ids[customer_id].add(value)
            for customer_id in ids:
                self._user_ids.setdefault(customer_id, set())
        if customer.pk not in self._user_ids:  # a profile met after the batch's were read (a lost race)
            self._user_ids[customer.pk] = set(Identity.objects.filter(
                customer=customer, kind=IdentityKind.USER_ID).values_list("value", flat=True))
        return self._user_ids[customer.pk]

    def _user_id_add(self, kind: str, value: str, customer_id: int) -> None:
        if kind == IdentityKind.USER_ID and self._user_ids is not None and customer_id in self._user_ids:
            self._user_ids[customer_id].add(value)

    def has_other_user_id(self, customer: Customer, user_id: str) -> bool:
        """Whether `customer` is known under a user id other than `user_id`."""
        if customer.external_id and customer.external_id != user_id:
            return True
        return any(value != user_id for value in self.user_ids(customer))

    def merge(self, *, target: Customer, merged: Customer, reason: str, actor: str) -> None:
        """Fold `merged` into `target` now, in memory (the batch's later events see the merged
        profile), and keep the merge for `merges_flush`, which moves the rows of all of them.
        Refused here, for the event that decided it, when either profile is merged away already
        (`customers_merge_batch` would refuse the whole batch)."""
        if target.pk == merged.pk or {target.pk, merged.pk} & self.redirects.keys():
            raise ValueError(f"customer {merged.pk} or {target.pk} is merged away already in this batch")
        self.user_ids(target).update(self.user_ids(merged))
        customer_fold(target=target, merged=merged)
        # the profile as its own merge of this batch (a survivor then) saved it: see Merge.profile
        profile = self.merges_saved.pop(merged.pk, None)
        self.merges.append(Merge(target=target, merged=merged, reason=reason, actor=actor, profile=profile))
        self.merges_saved[target.pk] = {column: getattr(target, column) for column in MERGE_SAVED_COLUMNS}
        self.dirty.add(target.pk)
        self.forget(merged)

    def merges_flush(self) -> list[CustomerMerge]:
        """Write the merges decided so far (before `claims_flush`, as each was written when decided)."""
        merges, self.merges = self.merges, []
        return customers_merge_batch(merges=merges) if merges else []

    def forget(self, customer: Customer) -> None:
        """After a merge, every key that pointed at `customer` points at its survivor (`get` follows
        the redirect: rewriting every key of the batch per merge made a batch of merges quadratic)."""
        self.redirects[customer.pk] = customer.merged_into_id
        self.customers.pop(customer.pk, None)
        self.dirty.discard(customer.pk)


def _alias_refusal(*, imap: IdentityMap, other: Customer, previous_kind: str, previous_id: str, user_id: str,
                   allow_known_merge: bool) -> str:
    """Why an alias must not fold `other` (found by previousId) into the event's customer; '' = merge.

    An anonymous profile merges. A known user merges into another known user only when the
    previousId *is* their user id and the source allows known-to-known merges; an anonymous id
    that belongs to a known user (a shared device) never merges two known users."""
    if not imap.has_other_user_id(other, user_id):
        return ""
    if previous_kind == IdentityKind.ANONYMOUS_ID:
        return (f"anonymous id {previous_id} belongs to known user {other.external_id or f'#{other.pk}'}: "
                f"an alias through it never merges two known users")
    if not (allow_known_merge and user_id):
        return (f"alias of known user {previous_id} into {user_id or 'an anonymous profile'}: the source does not "
                f"allow known-to-known merges")
    return ""


def customer_resolve(
    *,
    imap: IdentityMap,
    user_id: str,
    anonymous_id: str,
    previous_id: str = "",
    seen_at: datetime,
    actor: str,
    allow_known_merge: bool = False,
    source: Source | None = None,
    message_id: str = "",
) -> Customer:
    """Find or create the canonical customer for an event's ids, merging where they meet.

    An anonymous profile is merged into the known one when an event carries
    both ids (or an alias names the previous id), unless the anonymous profile
    already belongs to a different known user (a shared device): then the
    event goes to the known user and nothing is merged. An alias that would fold
    one known user into another is refused (a MergeRefusal row records it) unless
    `allow_known_merge` (the source's setting) and its previousId is that user's id.
    An alias from a known user's id to a userId nobody has yet merges nobody: the new id
    becomes that user's.
    """
    known = imap.get(IdentityKind.USER_ID, user_id) if user_id else None
    anon = imap.get(IdentityKind.ANONYMOUS_ID, anonymous_id) if anonymous_id else None
    previous, previous_kind = None, ""
    if previous_id:
        for kind in (IdentityKind.USER_ID, IdentityKind.ANONYMOUS_ID):
            if (previous := imap.get(kind, previous_id)) is not None:
                previous_kind = kind
                break

    if known is None and user_id and previous is not None and previous_kind == IdentityKind.USER_ID:
        # A known user changes their id (alias(newId, previousId=their old userId)): nobody has the
        # new id yet, so no two people meet. It becomes theirs (the old one stays an identity of the
        # profile); an empty profile for it would cut their later events off from their history.
        known = imap.claim(IdentityKind.USER_ID, user_id, previous)
        if known.pk == previous.pk and known.external_id != user_id:
            known.external_id = user_id
            imap.dirty.add(known.pk)
    if known is None and user_id and anon is not None and not imap.has_other_user_id(anon, user_id):
        known = imap.claim(IdentityKind.USER_ID, user_id, anon)
        if not known.external_id:
            known.external_id = user_id
            imap.dirty.add(known.pk)
    if known is None:
        known = anon if (anon is not None and not user_id) else None
    if known is None:
        created = imap.new_customer(user_id=user_id, seen_at=seen_at)
        if user_id:
            known = imap.claim(IdentityKind.USER_ID, user_id, created)
        else:
            known = imap.claim(IdentityKind.ANONYMOUS_ID, anonymous_id, created)
        if known.pk != created.pk:  # lost a race for the identity: no orphan profile left behind
            imap.customers.pop(created.pk, None)
            Customer.objects.filter(pk=created.pk).delete()

    for other, reason in ((anon, "anonymousId and userId on one event"), (previous, f"alias of {previous_id}")):
        if other is None:
            continue
        # the profile as it is now: analytics.js sends alias with previousId == anonymousId, whose
        # profile the first pass of this loop has just merged into `known`
        other = imap.customers.get(imap.survivor(other.pk), other)
        if other.pk == known.pk:
            continue
        if user_id and imap.has_other_user_id(other, user_id) and reason.startswith("anonymousId"):
            continue  # shared device: do not fold one known user into another
        if reason.startswith("alias") and (refusal := _alias_refusal(
                imap=imap, other=other, previous_kind=previous_kind, previous_id=previous_id, user_id=user_id,
                allow_known_merge=allow_known_merge)):
            MergeRefusal.objects.create(customer=known, other=other, source=source, message_id=message_id[:255],
                                        user_id=user_id[:255], previous_id=previous_id[:255], reason=refusal[:255])
            continue
        imap.merge(target=known, merged=other, reason=reason, actor=actor)

    if anonymous_id and imap.get(IdentityKind.ANONYMOUS_ID, anonymous_id) is None:
        # A new device of a known person: written with the batch's other claims, in key order
        # (one at a time in event order, two batches claiming the same ids deadlocked).
        imap.claim_later(IdentityKind.ANONYMOUS_ID, anonymous_id, known)
    if previous_id and previous is None and previous_id not in (user_id, anonymous_id):
        # An alias naming an id nobody has yet (the app's events from before the sign-in are still
        # queued on the device): the id is the person's from now on, so those events find them.
        imap.claim_later(IdentityKind.ANONYMOUS_ID, previous_id, known)
    return known


def _fits(column: str, value: str) -> bool:
    """Whether `value` fits the profile column (PostgreSQL refuses a longer one: the whole batch)."""
    return len(value) <= Customer._meta.get_field(column).max_length


def customer_apply_traits(*, imap: IdentityMap, customer: Customer, traits: dict, context: dict) -> dict:
    """Copy identify traits onto the profile; well-known traits also fill the typed columns.

    Returns {trait: [old, new]} for traits whose value changed (attribute triggers use it).
    """
    changed = False
    changes: dict = {}
    if traits:
        changes = {k: [customer.traits.get(k), v] for k, v in traits.items() if customer.traits.get(k) != v}
        if changes:
            customer.traits = {**customer.traits, **traits}
            changed = True
        for trait, column in PROFILE_TRAIT_FIELDS.items():
            value = traits.get(trait)
            if column == "timezone" and value is not None:
                value = zone_canonical(value)  # a name no one reads stays a trait: the zone is kept (journeys.timezones)
            if column == "phone" and isinstance(value, str):
                value = phone_number(value)  # the trait keeps what was sent; "": not a number
            if isinstance(value, str) and not _fits(column, value):
                continue  # kept as a trait: cut short it would be someone else's number or address
            if isinstance(value, str) and value and getattr(customer, column) != value:
                setattr(customer, column, value)
                changed = True
        email = traits.get("email")
        if isinstance(email, str) and email:
            imap.claim_later(IdentityKind.EMAIL, email.strip().lower()[:255], customer)
        typed = traits.get("phone")
        phone = phone_number(typed) if isinstance(typed, str) else ""
        # a number someone's identity holds as typed (a collision 0028 left) is theirs: not claimed again
        if phone and _fits("phone", phone) and (IdentityKind.PHONE, typed[:255]) not in imap.ids:
            imap.claim_later(IdentityKind.PHONE, phone, customer)
    # The device's timezone/locale fill the profile only where nothing better is known. A device
    # zone is forgiven its case and spaces; one no one reads is not used (the SDK sets it, not a person).
    for column in ("timezone", "locale"):
        value = context.get(column)
        if column == "timezone":
            value = zone_canonical(value)
        if (isinstance(value, str) and value and _fits(column, value) and getattr(customer, column) in ("", "UTC")
                and value != getattr(customer, column)):
            setattr(customer, column, value)
            changed = True
    if changed:
        imap.dirty.add(customer.pk)
    return changes


@dataclass(frozen=True, slots=True)
class Merge:
    """One merge decided: `merged` folds into `target` (see `customers_merge_batch`)."""

    target: Customer
    merged: Customer
    reason: str
    actor: str
    # The absorbed profile's columns to store with it, when it absorbed another profile earlier in
    # the same batch (a chain: a into b, then b into c): b's row keeps what that merge saved, as
    # when each merge was written at once. None: its row keeps its columns.
    profile: dict | None = None


def customer_fold(*, target: Customer, merged: Customer) -> None:
    """The profile half of a merge, in memory: the known profile's traits win and the absorbed
    one fills gaps (email, phone, locale; its device's zone where the survivor has none); first
    and last seen span both. `merged` points at `target` and keeps no traits. The caller saves
    `target`; `customers_merge_batch` writes `merged`."""
    target.traits = {**merged.traits, **target.traits}
    for column in ("email", "phone", "locale"):
        if not getattr(target, column) and getattr(merged, column):
            setattr(target, column, getattr(merged, column))
    if target.timezone in ("", "UTC") and merged.timezone not in ("", "UTC"):  # the device's zone, as on identify
        target.timezone = merged.timezone
    if merged.first_seen and (not target.first_seen or merged.first_seen < target.first_seen):
        target.first_seen = merged.first_seen
    if merged.last_seen and (not target.last_seen or merged.last_seen > target.last_seen):
        target.last_seen = merged.last_seen
    merged.merged_into = target
    merged.traits = {}


@transaction.atomic
def customer_merge(*, target: Customer, merged: Customer, reason: str, actor: str) -> CustomerMerge:
    """Fold `merged` into `target`: identities, events and traits move; the merge is recorded."""
    if target.pk == merged.pk:
        raise ValueError("cannot merge a customer into itself")
    customer_fold(target=target, merged=merged)
    (record,) = customers_merge_batch(merges=[Merge(target=target, merged=merged, reason=reason, actor=actor)])
    target.save()
    return record


@transaction.atomic
def customers_merge_batch(*, merges: Sequence[Merge]) -> list[CustomerMerge]:
    """Write merges whose profiles are folded already (`customer_fold`, in memory, when each was
    decided: the later events of an ingested batch see the merged profile; the caller saves the
    survivors): identities, events and runs move, the MERGE_HOOKS move the other apps' rows, the
    absorbed profiles point at their survivors, and one CustomerMerge row each records what moved.

    A fixed number of statements per wave, not per merge: merges are written in waves in which
    each customer appears at most once (`customer_waves`), so a chain within one batch (a into b,
    then b into c) or a survivor absorbing several profiles acts as merged one after the other."""
    from journeys.engine.runner import runs_merge
    from journeys.services.rechecks import customers_recheck

    absorbed_before: set[int] = set()
    for merge in merges:
        if merge.target.pk == merge.merged.pk:
            raise ValueError("cannot merge a customer into itself")
        if absorbed_before & {merge.target.pk, merge.merged.pk}:
            raise ValueError(f"customer {merge.merged.pk} or {merge.target.pk} is merged earlier in the list")
        absorbed_before.add(merge.merged.pk)
    # Both sides locked (in id order, as ingestion locks its batch's customers) before any row
    # moves: a batch storing events for them meanwhile commits first and its events move too.
    involved = sorted({m.merged.pk for m in merges} | {m.target.pk for m in merges})
    list(Customer.objects.select_for_update(no_key=True).filter(ids_q("pk", involved)).order_by("pk")
         .values_list("pk", flat=True))
    now = timezone.now()
    details: dict[int, dict] = {}  # absorbed customer id -> what moved
    for wave in customer_waves(list(merges), lambda m: (m.merged.pk, m.target.pk)):
        survivors = {m.merged.pk: m.target.pk for m in wave}
        absorbed = list(survivors)
        pairs = [(m.merged, m.target) for m in wave]
        identities: dict[int, list[str]] = defaultdict(list)
        for customer_id, kind, value in Identity.objects.filter(ids_q("customer_id", absorbed)).order_by(
                "pk").values_list("customer_id", "kind", "value"):
            identities[customer_id].append(f"{kind}:{value}")
        if identities:
            rows_move(Identity.objects.all(), pairs)
        moved_events = dict(Event.objects.filter(ids_q("customer_id", absorbed)).order_by().values_list(
            "customer_id").annotate(n=Count("pk")))
        if moved_events:
            rows_move(Event.objects.all(), pairs)
        # the runs before the customer rows, the order the engine locks them in
        moved_runs = runs_merge(pairs=pairs, now=now)
        if moved_events:  # counts of events change without a column a trigger sees
            customers_recheck([(survivors[pk], None) for pk in moved_events])
        for hook in MERGE_HOOKS:
            if (pairs_hook := getattr(hook, "pairs", None)) is not None:
                pairs_hook(pairs)
            else:
                for merged, target in pairs:
                    hook(merged, target)
        if profiles := [{"id": m.merged.pk, **m.profile} for m in wave if m.profile]:
            rows_set(Customer, profiles, MERGE_SAVED_COLUMNS, stamp=now)
        Customer.objects.filter(ids_q("pk", absorbed)).update(merged_into=IdMap(F("id"), survivors), traits={},
                                                              updated_at=now)
        for pk in absorbed:
            details[pk] = {"identities": identities.get(pk, []), "events_moved": moved_events.get(pk, 0),
                           "runs_moved": moved_runs.get(pk, 0)}
    records = [CustomerMerge(target=m.target, merged=m.merged, reason=m.reason, actor=m.actor,
                             details=details[m.merged.pk]) for m in merges]
    ids = {merged_id: pk for pk, merged_id in objects_insert(CustomerMerge, records, returning=["id", "merged_id"])}
    for record in records:  # a profile is absorbed once (checked above)
        record.pk = ids[record.merged_id]
    return records
