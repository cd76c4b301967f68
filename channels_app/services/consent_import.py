"""Consent in bulk: the `consent.*` columns of the customer import job (an unsubscribe list, a
CRM's opt-ins), checked row by row and written set-based.

A column names what the choice is about, as a Consent row does (docs/PRIVACY.md):
`consent.<kind>` a whole channel kind ("unsubscribe from all email"), `consent.<kind>.<topic>`
one topic on it, `consent.all` every channel and topic (opted out: global do-not-contact) and
`consent.all.<topic>` a topic on every channel. A cell holds `opted_in`, `opted_out` or
`unknown` (also `granted`/`revoked`, `yes`/`no`, `true`/`false`); an empty cell changes nothing.

The rules are consent_set's (`consent_change`), for many rows at once: a choice equal to the
stored one writes nothing (an opt-out over a bounce is stored, the bounce kept); a new or changed
one stores the status, the source and the time, and its history row carries the source as the
change reason and the job's author as the user.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone
from simple_history.utils import bulk_create_with_history, bulk_update_with_history

from channels_app.choices import ChannelKind, ConsentStatus
from channels_app.models import Consent, Topic
from channels_app.services.consent import consent_change
from journeys.choices import IdentityKind
from journeys.errors import EventValidationError
from journeys.models import Customer, Identity

PREFIX = "consent"
EVERY_CHANNEL = "all"
KINDS = tuple(k for k in ChannelKind.values if k != ChannelKind.WEBHOOK)  # a webhook call asks no consent
WORDS = {
    ConsentStatus.OPTED_IN: ("opted_in", "opt_in", "in", "granted", "yes", "true", "1"),
    ConsentStatus.OPTED_OUT: ("opted_out", "opt_out", "out", "revoked", "no", "false", "0"),
    ConsentStatus.UNKNOWN: ("unknown",),
}
STATUS_OF = {word: status for status, words in WORDS.items() for word in words}


@dataclass(frozen=True)
class ConsentChoice:
    """One consent cell of a row: channel kind ("" = every channel) x topic (None = every topic)."""

    channel_kind: str
    topic_id: int | None
    status: str


def is_consent_column(name: str) -> bool:
    return name == PREFIX or name.startswith(PREFIX + ".")


def _flatten(name: str, value: Any) -> Iterable[tuple[str, Any]]:
    """A JSON row may nest them: {"consent": {"email": "opted_out", "all": {"news": "no"}}}."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{name}.{key}", inner)
    else:
        yield name, value


class ConsentColumns:
    """The consent columns of one import (topics read once): `parse` a row, `apply` a batch."""

    def __init__(self) -> None:
        self.topics = dict(Topic.objects.values_list("slug", "pk"))

    def parse(self, row: dict[str, Any]) -> list[ConsentChoice]:
        """The row's consent cells as choices; a bad one is refused naming its column."""
        choices = []
        for key, raw in row.items():
            if not isinstance(key, str) or not is_consent_column(key.strip()):
                continue
            for name, value in _flatten(key.strip(), raw):
                choice = self._choice(name, value)
                if choice is not None:
                    choices.append(choice)
        return choices

    def _choice(self, name: str, value: Any) -> ConsentChoice | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        parts = name.split(".")
        if len(parts) not in (2, 3) or parts[0] != PREFIX:
            raise EventValidationError(f"a consent column is consent.<channel kind or all>[.<topic>], e.g. "
                                       f"consent.email or consent.email.newsletter", field=name)
        kind = parts[1].strip().lower()
        if kind != EVERY_CHANNEL and kind not in KINDS:
            raise EventValidationError(f"unknown channel kind {parts[1]!r}: one of {', '.join(KINDS)} or "
                                       f"{EVERY_CHANNEL}", field=name)
        topic_id = None
        if len(parts) == 3:
            topic_id = self.topics.get(parts[2].strip())
            if topic_id is None:
                raise EventValidationError(f"no topic with the slug {parts[2]!r}", field=name)
        word = ("true" if value else "false") if isinstance(value, bool) else str(value).strip().lower()
        status = STATUS_OF.get(word)
        if status is None:
            raise EventValidationError(f"{str(value)[:40]!r} is not a consent: opted_in (granted), opted_out "
                                       f"(revoked) or unknown", field=name)
        return ConsentChoice("" if kind == EVERY_CHANNEL else kind, topic_id, status)

    @transaction.atomic
    def apply(self, *, rows: list[tuple[str, list[ConsentChoice]]], source: str, actor: Any = None,
              at: datetime | None = None) -> int:
        """Store the choices of rows (user id, choices) whose customers exist (the import stored
        them just before, in the same transaction); a later row wins over an earlier one. Returns
        how many consents were created or changed."""
        at = at or timezone.now()
        source = source[:100]
        customer_of = _customers_by_user_id({user_id for user_id, choices in rows if choices})
        wanted: dict[tuple[int, str, int | None], str] = {}
        for user_id, choices in rows:
            customer_id = customer_of.get(user_id)
            for choice in choices if customer_id is not None else ():
                wanted[(customer_id, choice.channel_kind, choice.topic_id)] = choice.status
        if not wanted:
            return 0
        stored = {(c.customer_id, c.channel_kind, c.topic_id): c for c in
                  Consent.objects.select_for_update().filter(customer_id__in={k[0] for k in wanted})}
        created, changed = [], []
        for (customer_id, kind, topic_id), status in wanted.items():
            consent = stored.get((customer_id, kind, topic_id))
            if consent is None:
                created.append(Consent(customer_id=customer_id, channel_kind=kind, topic_id=topic_id, status=status,
                                       source=source, updated_at=at))
            elif (kept := consent_change(status_was=consent.status, source_was=consent.source, status=status,
                                         source=source)) is not None:
                consent.status, consent.source, consent.updated_at = status, kept, at
                changed.append(consent)
        user = actor if getattr(actor, "pk", None) else None
        if created:
            bulk_create_with_history(created, Consent, default_user=user, default_change_reason=source,
                                     default_date=at)
        if changed:
            bulk_update_with_history(changed, Consent, ["status", "source", "updated_at"], default_user=user,
                                     default_change_reason=source, default_date=at)
        return len(created) + len(changed)


def _customers_by_user_id(user_ids: set[str]) -> dict[str, int]:
    """user id -> the profile that holds it now (an absorbed profile leads to its survivor)."""
    found = dict(Identity.objects.filter(kind=IdentityKind.USER_ID, value__in=user_ids)
                 .values_list("value", "customer_id"))
    for _ in range(10):  # merge chains are short
        merged = dict(Customer.objects.filter(pk__in=set(found.values()), merged_into__isnull=False)
                      .values_list("pk", "merged_into_id"))
        if not merged:
            break
        found = {value: merged.get(pk, pk) for value, pk in found.items()}
    return found
