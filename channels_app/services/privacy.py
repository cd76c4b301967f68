"""Data-subject requests: export everything held about a customer, and erase them.

The erasure policy (also in docs/PRIVACY.md):

- Events of the customer (and of profiles merged into it) are **deleted**: their
  properties, traits and context are personal data. Except the events that an
  aggregate still counts (EVENTS_KEPT hooks, e.g. the goal event that converted an
  experiment assignment): those keep their name, source, type, times and the
  tombstone, and lose everything else (ids, properties, traits, context, address).
- Identities are **deleted**; consents and their history are **deleted**, but each opt-out
  and hard bounce leaves a suppression: a keyed digest of each of the person's addresses with
  the channel kind x topic objected to, which sending honours for whoever has that address
  until they opt in again explicitly (consent.suppressions_keep).
- The Customer row is **kept as an anonymous tombstone** (user id `erased-<id>`, no
  email, phone, locale or traits) so that aggregate numbers (runs, conversions,
  experiment counts, delivery statistics) keep adding up.
- Journey runs are kept with their variables and step details cleared; open runs
  are exited.
- Deliveries are **anonymised**: address, subject, bodies, provider id and errors are
  cleared; channel, status, timestamps and the content hash stay for reporting.
  Queued or deferred deliveries are suppressed (reason `erased`).
- Merge audit rows keep who/when but lose their details; refused merges (which name
  both user ids) are **deleted**.
- Exports of the customer (`Job` results) lose the copy and the user id, whatever
  their age; the job and its section counts stay. The inputs of jobs still kept (an import's
  upload, an API trigger's recipients) lose the person's rows and entries, emptied in place;
  clients' idempotency keys about them are digested (journeys.services.job_inputs).
- A profile merged into another is refused (its survivor holds its data).
- An ErasureRecord (customer id, actor, reason, counts) proves the erasure happened.
- Other apps add their own rows through ERASERS / EXPORTERS (callables registered in
  their AppConfig.ready()).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.forms.models import model_to_dict
from django.utils import timezone

from channels_app.choices import ChannelKind, DeliveryStatus, Reason
from channels_app.models import Consent, Delivery, DeliveryAttempt, ErasureRecord, Suppression
from channels_app.services.consent import profile_digests, suppressions_keep
from journeys.choices import RunStatus
from journeys.engine.runner import runs_end
from journeys.errors import JourneyError
from journeys.models import (
    Customer, CustomerMerge, EntryGate, Event, Identity, JourneyRun, MergeRefusal, StageTransition, StepExecution,
)
from journeys.services.api_jobs import idempotency_key_hidden
from journeys.services.customers_api import customer_get
from journeys.services.digests import DIGEST_CHARS
from journeys.services.job_inputs import job_inputs_erase, person_keys
from journeys.services.jobs import jobs_erase_exports

# (customer) -> (section name, JSON-able data); (customer) -> {what: count}
EXPORTERS: list[Callable[[Customer], tuple[str, object]]] = []
ERASERS: list[Callable[[Customer], dict]] = []
# (profile ids) -> ids of their events that an aggregate counts: kept, stripped of everything personal
EVENTS_KEPT: list[Callable[[list[int]], Iterable[int]]] = []

# What an event kept by an erasure still says: its name, source, type, times (when it happened and
# was received, its processing) and the tombstone; every other column goes back to empty.
EVENT_STRIPPED = {
    "message_id": "erased", "user_id": "", "anonymous_id": "", "previous_id": "", "group_id": "", "category": "",
    "channel": "", "version": "", "properties": {}, "traits": {}, "context": {}, "integrations": {}, "metadata": {},
    "other": {}, "violations": [], "changes": {}, "original_timestamp": None, "sent_at": None, "ip": None, "error": "",
}


def _json(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


def _row(obj, exclude=()) -> dict:
    row = model_to_dict(obj, exclude=exclude)
    for f in obj._meta.fields:
        if f.name not in exclude and f.name not in row:
            row[f.name] = getattr(obj, f.attname)
    return _json(row)


def _rows(queryset, exclude=()) -> list[dict]:
    return [_row(obj, exclude) for obj in queryset]


def _paged(queryset, exclude=()) -> Iterator[dict]:
    """The rows of a section that can be long (events, runs, deliveries), a page at a time."""
    return (_row(obj, exclude) for obj in queryset.iterator(chunk_size=EXPORT_PAGE))


def customer_profile_ids(customer: Customer) -> list[int]:
    """The customer and every profile merged into it (their data is the same person's)."""
    ids, frontier = {customer.pk}, [customer.pk]
    while frontier:
        frontier = list(Customer.objects.filter(merged_into_id__in=frontier).exclude(pk__in=ids)
                        .values_list("pk", flat=True))
        ids.update(frontier)
    return sorted(ids)


def _runs_with_steps(ids: list[int]) -> Iterator[dict]:
    """The profiles' journey runs, each with its step executions: a page of runs, then one query
    for all the steps of that page (a customer with thousands of runs is a few queries, not one
    per run, and only a page of them is in memory)."""
    runs = JourneyRun.objects.filter(customer_id__in=ids).order_by("created_at", "id")
    page: list[dict] = []
    for row in _paged(runs):
        page.append(row)
        if len(page) == EXPORT_PAGE:
            yield from _with_steps(page)
            page = []
    yield from _with_steps(page)


def _with_steps(runs: list[dict]) -> list[dict]:
    steps: dict[int, list[dict]] = {}
    if runs:
        for row in _rows(StepExecution.objects.filter(run_id__in=[r["id"] for r in runs])):  # per run: started_at, id
            steps.setdefault(row["run"], []).append(row)
    return [{**row, "steps": steps.get(row["id"], [])} for row in runs]


def _consents(ids: list[int]) -> list[dict]:
    consents = Consent.objects.filter(customer_id__in=ids).select_related("topic")
    return [{**_row(c), "topic": c.topic.slug if c.topic_id else None} for c in consents]


def _consent_history(ids: list[int]) -> Iterator[dict]:
    history = Consent.history.filter(customer_id__in=ids).order_by("history_date")
    return (_json({"channel_kind": h.channel_kind, "topic_id": h.topic_id, "status": h.status, "source": h.source,
                   "at": h.history_date, "change": h.history_type})
            for h in history.iterator(chunk_size=EXPORT_PAGE))


def _suppressions(ids: list[int]) -> list[dict]:
    """What an earlier erasure kept of objections made under these profiles' addresses (a person
    who came back), and the explicit opt-ins that lifted other profiles' opt-outs of them (status
    `opted_in`): the channel kind x topic and since when; the digest is not theirs to read."""
    emails, phones = [], []
    for kind, value in Identity.objects.filter(customer_id__in=ids, kind__in=["email", "phone"]).values_list(
            "kind", "value"):
        (emails if kind == "email" else phones).append(value)
    for email, phone in Customer.objects.filter(pk__in=ids).values_list("email", "phone"):
        emails.append(email)
        phones.append(phone)
    digests = profile_digests(*((ChannelKind.EMAIL, e) for e in emails), *((ChannelKind.SMS, p) for p in phones))
    held = Suppression.objects.filter(digest__in=digests).select_related("topic").order_by("created_at", "id")
    return [{"channel_kind": h.channel_kind, "topic": h.topic.slug if h.topic_id else None, "status": h.status,
             "since": _json(h.created_at)} for h in held]


EXPORT_FORMAT = "journey-console/data-subject-export@1"
EXPORT_PAGE = 500  # rows of a long section read (and held) at a time


def customer_export_sections(*, customer: Customer) -> Iterator[tuple[str, Any]]:
    """Everything held about a customer, section by section, in the export's order: a section
    is a value, or an iterator of rows for those that can be long (read a page at a time)."""
    ids = customer_profile_ids(customer)
    yield "format", EXPORT_FORMAT
    yield "customer", _rows(Customer.objects.filter(pk=customer.pk))[0]
    yield "merged_profiles", _rows(Customer.objects.filter(pk__in=ids).exclude(pk=customer.pk))
    yield "identities", _rows(Identity.objects.filter(customer_id__in=ids))
    yield "merges", _rows(CustomerMerge.objects.filter(Q(target_id__in=ids) | Q(merged_id__in=ids)))
    yield "events", _paged(Event.objects.filter(customer_id__in=ids).order_by("timestamp", "id"))
    yield "journey_runs", _runs_with_steps(ids)
    yield "deliveries", _paged(Delivery.objects.filter(customer_id__in=ids).order_by("created_at", "id"))
    yield "consents", _consents(ids)
    yield "consent_history", _consent_history(ids)
    yield "suppressions", _suppressions(ids)
    yield "workflow_entries", [
        {"workflow": workflow_id, "workflow_name": name, "entered_at": _json(at)}
        for workflow_id, name, at in EntryGate.objects.filter(customer_id__in=ids).order_by("entered_at", "id")
        .values_list("workflow_id", "workflow__name", "entered_at")]
    yield "stage_transitions", _rows(StageTransition.objects.filter(customer_id__in=ids).order_by("at", "id"))
    for exporter in EXPORTERS:
        name, section = exporter(customer)
        yield name, _json(section)


def customer_export(*, customer: Customer) -> dict:
    """Everything held about a customer, as JSON-able data (right of access / portability)."""
    return {name: list(value) if isinstance(value, Iterator) else value
            for name, value in customer_export_sections(customer=customer)}


def customer_export_write(*, customer: Customer, write: Callable[[str], None]) -> dict[str, int]:
    """The export as JSON text handed to `write` piece by piece while it is read, the same text
    as `json.dumps(customer_export(...), indent=2, default=str)`; holds a page of rows at a time
    (a background job stores the pieces, see journeys.services.jobs). Returns each list
    section's number of rows."""
    counts: dict[str, int] = {}
    write("{")
    for number, (name, value) in enumerate(customer_export_sections(customer=customer)):
        write(("," if number else "") + "\n  " + json.dumps(name) + ": ")
        if not isinstance(value, (list, Iterator)):
            write(_dumps(value, "  "))
            continue
        count = 0
        for count, row in enumerate(value, 1):
            write(("[" if count == 1 else ",") + "\n    " + _dumps(row, "    "))
        write("\n  ]" if count else "[]")
        counts[name] = count
    write("\n}")
    return counts


def _dumps(value: Any, indent: str) -> str:
    """`value` as json.dumps(indent=2) writes it nested at `indent` (JSON text has no raw line
    break inside a string, so every line break is the layout's)."""
    return json.dumps(value, indent=2, default=str).replace("\n", "\n" + indent)


def _api_messages_keep_replays(messages: list[tuple[int, str, Any]]) -> None:
    """The person's API messages (pk, stored key, request fingerprint), anonymised: a replay of the
    client's key still finds its message and is compared with its request, so the key (digested if
    it was stored as sent, before keys were: it may name the person) and the keyed fingerprint
    stay; a bare-hash fingerprint of older messages (of the request with its address) does not."""
    rows = [Delivery(pk=pk, idempotency_key=idempotency_key_hidden(key),
                     notes={"api_request": fingerprint} if isinstance(fingerprint, str)
                     and len(fingerprint) == DIGEST_CHARS else {}) for pk, key, fingerprint in messages]
    Delivery.objects.bulk_update(rows, ["idempotency_key", "notes"], batch_size=500)


def data_subjects(customers: Iterable[Customer]) -> list[Customer]:
    """The people behind these profiles, each once: a profile merged into another stands for the
    profile holding its data now (as the management API's and the commands' lookups do)."""
    people: dict[int, Customer] = {}
    for customer in customers:
        person = customer_get(pk=customer.pk) if customer.merged_into_id else customer
        people.setdefault(person.pk, person)
    return list(people.values())


@transaction.atomic
def customer_erase(*, customer: Customer, actor: str, reason: str = "") -> ErasureRecord:
    """Erase a customer per the policy in this module's docstring (right to erasure).

    A profile merged into another is refused, naming the survivor: it is an empty shell whose
    data is the survivor's now, and erasing it would record an erasure that erased nobody."""
    if customer.merged_into_id:
        survivor = customer_get(pk=customer.pk)
        raise JourneyError(f"customer #{customer.pk} was merged into #{survivor.pk} ({survivor}), which holds its "
                           f"data: erase #{survivor.pk}", field="customer")
    ids = customer_profile_ids(customer)
    keys = person_keys(customer_ids=ids)  # before their identities go: what names them in jobs, their addresses
    counts: dict[str, int] = {}
    for exporter_counts in (eraser(customer) for eraser in ERASERS):
        for key, value in (exporter_counts or {}).items():
            counts[key] = counts.get(key, 0) + int(value)
    kept = sorted({pk for keeper in EVENTS_KEPT for pk in keeper(ids)})
    events = Event.objects.filter(customer_id__in=ids)
    counts["events"] = events.exclude(pk__in=kept).delete()[1].get("journeys.Event", 0)
    counts["events_kept_stripped"] = events.filter(pk__in=kept).update(**EVENT_STRIPPED)
    counts["identities"] = Identity.objects.filter(customer_id__in=ids).delete()[0]
    counts["suppressions"] = suppressions_keep(customer_ids=ids, emails=keys.emails, phones=keys.phones)
    counts["consents"] = Consent.objects.filter(customer_id__in=ids).delete()[0]
    Consent.history.filter(customer_id__in=ids).delete()
    runs = JourneyRun.objects.filter(customer_id__in=ids)
    counts["runs_cleared"] = runs.update(variables={})
    runs_end(runs, status=RunStatus.EXITED, now=timezone.now(), error="customer erased")  # open ones; streamed
    StepExecution.objects.filter(run__customer_id__in=ids).update(detail={}, error="")
    deliveries = Delivery.objects.filter(customer_id__in=ids)
    api_messages = list(deliveries.filter(idempotency_key__startswith="api:").values_list(
        "pk", "idempotency_key", "notes__api_request"))
    deliveries.filter(status__in=[DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED]).update(
        status=DeliveryStatus.SUPPRESSED, reason=Reason.ERASED, next_attempt_at=None)
    counts["deliveries_anonymised"] = deliveries.update(
        to="", subject="", body="", html_body="", provider_message_id="", error="", notes={}, policy={},
        choice_reason="")
    DeliveryAttempt.objects.filter(delivery__customer_id__in=ids).update(error="")
    _api_messages_keep_replays(api_messages)
    CustomerMerge.objects.filter(Q(target_id__in=ids) | Q(merged_id__in=ids)).update(details={})
    # The profiles' rows, in id order, before the exports (as run_job: customer, then job), and only
    # now: every other path locks its own rows (events, runs, deliveries, cases) before the customer's,
    # so taking it first would deadlock with them. An export finishing meanwhile stores its copy
    # before this (and it is dropped here) or after, seeing the profiles erased.
    list(Customer.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))
    counts["exports_dropped"] = jobs_erase_exports(customer_ids=ids)
    counts.update({f"job_input_{what}": n for what, n in job_inputs_erase(keys=keys).items()})
    # a refused alias names both user ids (and the other profile's page shows it): it goes too
    counts["merge_refusals"] = MergeRefusal.objects.filter(Q(customer_id__in=ids) | Q(other_id__in=ids)).delete()[0]
    erased_at = timezone.now()
    for pk in ids:
        Customer.objects.filter(pk=pk).update(
            external_id=f"erased-{pk}", email="", phone="", locale="", timezone="UTC", traits={},
            first_seen=None, last_seen=None, last_engaged_at=None, erased_at=erased_at)
    counts["profiles"] = len(ids)
    return ErasureRecord.objects.create(customer_id_erased=customer.pk, actor=actor[:255], reason=reason[:255],
                                        counts=counts)
