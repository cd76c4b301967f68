"""Data-subject requests: export everything held about a customer, and erase them.

The erasure policy (also in docs/PRIVACY.md):

- Events of the customer (and of profiles merged into it) are **deleted**: their
  properties, traits and context are personal data. Except the events that an
  aggregate still counts (EVENTS_KEPT hooks, e.g. the goal event that converted an
  experiment assignment): those keep their name, source, type, times and the
  tombstone, and lose everything else (ids, properties, traits, context, address).
- Identities are **deleted**; consents and their history are **deleted**.
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
  their age; the job and its section counts stay.
- An ErasureRecord (customer id, actor, reason, counts) proves the erasure happened.
- Other apps add their own rows through ERASERS / EXPORTERS (callables registered in
  their AppConfig.ready()).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Q
from django.forms.models import model_to_dict
from django.utils import timezone

from channels_app.choices import DeliveryStatus, Reason
from channels_app.models import Consent, Delivery, DeliveryAttempt, ErasureRecord
from journeys.choices import RunStatus
from journeys.engine.runner import runs_end
from journeys.models import Customer, CustomerMerge, Event, Identity, JourneyRun, MergeRefusal, StepExecution
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


def _rows(queryset, exclude=()) -> list[dict]:
    out = []
    for obj in queryset:
        row = model_to_dict(obj, exclude=exclude)
        for f in obj._meta.fields:
            if f.name not in exclude and f.name not in row:
                row[f.name] = getattr(obj, f.attname)
        out.append(_json(row))
    return out


def _profile_ids(customer: Customer) -> list[int]:
    """The customer and every profile merged into it (their data is the same person's)."""
    ids, frontier = {customer.pk}, [customer.pk]
    while frontier:
        frontier = list(Customer.objects.filter(merged_into_id__in=frontier).exclude(pk__in=ids)
                        .values_list("pk", flat=True))
        ids.update(frontier)
    return sorted(ids)


def _runs_with_steps(ids: list[int]) -> list[dict]:
    """The profiles' journey runs, each with its step executions: one query for all the steps (a
    customer with thousands of runs is two queries, not one per run)."""
    steps: dict[int, list[dict]] = {}
    for row in _rows(StepExecution.objects.filter(run__customer_id__in=ids)):  # per run: started_at, id
        steps.setdefault(row["run"], []).append(row)
    return [{**row, "steps": steps.get(row["id"], [])}
            for row in _rows(JourneyRun.objects.filter(customer_id__in=ids).order_by("created_at"))]


def customer_export(*, customer: Customer) -> dict:
    """Everything held about a customer, as JSON-able data (right of access / portability)."""
    ids = _profile_ids(customer)
    consents = Consent.objects.filter(customer_id__in=ids).select_related("topic")
    data = {
        "format": "journey-console/data-subject-export@1",
        "customer": _rows(Customer.objects.filter(pk=customer.pk))[0],
        "merged_profiles": _rows(Customer.objects.filter(pk__in=ids).exclude(pk=customer.pk)),
        "identities": _rows(Identity.objects.filter(customer_id__in=ids)),
        "merges": _rows(CustomerMerge.objects.filter(Q(target_id__in=ids) | Q(merged_id__in=ids))),
        "events": _rows(Event.objects.filter(customer_id__in=ids).order_by("timestamp", "id")),
        "journey_runs": _runs_with_steps(ids),
        "deliveries": _rows(Delivery.objects.filter(customer_id__in=ids).order_by("created_at")),
        "consents": [{**row, "topic": c.topic.slug if c.topic_id else None}
                     for c, row in zip(consents, _rows(consents))],
        "consent_history": [
            _json({"channel_kind": h.channel_kind, "topic_id": h.topic_id, "status": h.status, "source": h.source,
                   "at": h.history_date, "change": h.history_type})
            for h in Consent.history.filter(customer_id__in=ids).order_by("history_date")
        ],
    }
    for exporter in EXPORTERS:
        name, section = exporter(customer)
        data[name] = _json(section)
    return data


@transaction.atomic
def customer_erase(*, customer: Customer, actor: str, reason: str = "") -> ErasureRecord:
    """Erase a customer per the policy in this module's docstring (right to erasure)."""
    ids = _profile_ids(customer)
    counts: dict[str, int] = {}
    for exporter_counts in (eraser(customer) for eraser in ERASERS):
        for key, value in (exporter_counts or {}).items():
            counts[key] = counts.get(key, 0) + int(value)
    kept = sorted({pk for keeper in EVENTS_KEPT for pk in keeper(ids)})
    events = Event.objects.filter(customer_id__in=ids)
    counts["events"] = events.exclude(pk__in=kept).delete()[1].get("journeys.Event", 0)
    counts["events_kept_stripped"] = events.filter(pk__in=kept).update(**EVENT_STRIPPED)
    counts["identities"] = Identity.objects.filter(customer_id__in=ids).delete()[0]
    counts["consents"] = Consent.objects.filter(customer_id__in=ids).delete()[0]
    Consent.history.filter(customer_id__in=ids).delete()
    runs = JourneyRun.objects.filter(customer_id__in=ids)
    counts["runs_cleared"] = runs.update(variables={})
    runs_end(runs, status=RunStatus.EXITED, now=timezone.now(), error="customer erased")  # open ones; streamed
    StepExecution.objects.filter(run__customer_id__in=ids).update(detail={}, error="")
    deliveries = Delivery.objects.filter(customer_id__in=ids)
    deliveries.filter(status__in=[DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED]).update(
        status=DeliveryStatus.SUPPRESSED, reason=Reason.ERASED, next_attempt_at=None)
    counts["deliveries_anonymised"] = deliveries.update(
        to="", subject="", body="", html_body="", provider_message_id="", error="", notes={}, policy={},
        choice_reason="")
    DeliveryAttempt.objects.filter(delivery__customer_id__in=ids).update(error="")
    CustomerMerge.objects.filter(Q(target_id__in=ids) | Q(merged_id__in=ids)).update(details={})
    # The profiles' rows, in id order, before the exports (as run_job: customer, then job), and only
    # now: every other path locks its own rows (events, runs, deliveries, cases) before the customer's,
    # so taking it first would deadlock with them. An export finishing meanwhile stores its copy
    # before this (and it is dropped here) or after, seeing the profiles erased.
    list(Customer.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", flat=True))
    counts["exports_dropped"] = jobs_erase_exports(customer_ids=ids)
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
