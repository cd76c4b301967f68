"""Profile changes made by the product itself (steps, agents), recorded like identify calls."""

from __future__ import annotations

import json

from django.db import connection, transaction
from django.db.models import F, Func, Value
from django.utils import timezone

from journeys.models import Customer


@transaction.atomic
def customer_update_traits(*, customer: Customer, traits: dict, reason: str) -> dict:
    """Set traits on a profile; returns {trait: [old, new]} for the ones that changed.

    Changes are also recorded as an internal `Profile Updated` event so that
    attribute-change and segment triggers see them like any identify call.
    """
    from journeys.services.internal_events import event_record_internal

    customer.traits = Customer.objects.select_for_update(no_key=True).values_list("traits", flat=True).get(
        pk=customer.pk)  # the caller's object stays the one the batch shares
    changes = _changes(customer, traits)
    if not changes:
        return {}
    customer.traits = {**customer.traits, **traits}
    customer.save(update_fields=["traits", "updated_at"])
    event_record_internal(
        customer=customer, name="Profile Updated", properties={"reason": reason}, traits=traits,
        changes=changes, at=timezone.now(),
    )
    return changes


def _changes(customer: Customer, traits: dict) -> dict:
    return {k: [customer.traits.get(k), v] for k, v in traits.items() if customer.traits.get(k) != v}


class ProfileBatch:
    """customer_update_traits for one engine batch (update_profile is batch-safe): the first
    time a step changes a profile, the batch's customers are locked with one statement (in id
    order, so two batches never deadlock on each other's customers) and each one's traits are
    taken from that locked read at its first change (a rule may read the trait it sets: a
    counter); `flush()` writes the changed keys of every changed profile with one UPDATE and
    their `Profile Updated` events with one INSERT and one enqueue.
    """

    KEY = "journeys.profiles"

    def __init__(self, batch) -> None:
        self.customer_ids = set(batch.customer_ids)
        self._fresh: dict[int, dict] | None = None
        self._patches: dict[int, dict] = {}
        self._customers: dict[int, Customer] = {}
        self._events: list[dict] = []
        self._source_id: int | None = None

    @classmethod
    def current(cls) -> ProfileBatch | None:
        from journeys.engine.batch import current_batch

        batch = current_batch()
        return batch.extension(cls.KEY, cls) if batch is not None else None

    def lock(self, customer: Customer) -> None:
        """Hold the customer's row until the batch commits, with its traits read under the lock."""
        from journeys.engine.batch import ids_q

        if customer.pk not in self.customer_ids:  # not one of the batch's (never expected): alone
            self.customer_ids.add(customer.pk)
            customer.traits = Customer.objects.select_for_update(no_key=True).values_list("traits", flat=True).get(
                pk=customer.pk)
            return
        if self._fresh is None:
            self._fresh = dict(Customer.objects.select_for_update(no_key=True)
                               .filter(ids_q("pk", list(self.customer_ids)))
                               .order_by("pk").values_list("pk", "traits"))
        if customer.pk in self._fresh:  # the first change in this batch; later ones build on it
            customer.traits = self._fresh.pop(customer.pk)

    def update(self, *, customer: Customer, traits: dict, reason: str) -> dict:
        """customer_update_traits, written at the batch's flush; returns {trait: [old, new]}."""
        from journeys.services.internal_events import internal_event_row, internal_source

        self.lock(customer)
        changes = _changes(customer, traits)
        if not changes:
            return {}
        customer.traits = {**customer.traits, **traits}
        self._patches.setdefault(customer.pk, {}).update(traits)
        self._customers[customer.pk] = customer
        if self._source_id is None:
            self._source_id = internal_source().pk
        self._events.append(internal_event_row(source_id=self._source_id, customer=customer, name="Profile Updated",
                                               properties={"reason": reason}, traits=traits, changes=changes,
                                               at=timezone.now()))
        return changes

    def flush(self) -> None:
        if not self._patches:
            return
        from journeys.engine.batch import json_default
        from journeys.engine.queue import enqueue_events
        from journeys.services.bulk_ingest import events_insert

        patches, self._patches = self._patches, {}
        customers, self._customers = self._customers, {}
        events, self._events = self._events, []
        stamp = timezone.now()
        if connection.vendor == "postgresql":
            # Only the keys the steps set, over the row as it is (locked by this batch since lock()).
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {Customer._meta.db_table} AS c SET traits = c.traits || x.patch, updated_at = %s"
                    " FROM jsonb_to_recordset(%s::jsonb) AS x(id bigint, patch jsonb) WHERE c.id = x.id",
                    [stamp, json.dumps([{"id": pk, "patch": p} for pk, p in patches.items()], default=json_default)])
        else:  # SQLite: one UPDATE per distinct patch; json_patch drops keys set to null and merges
            groups: dict[str, list[int]] = {}  # objects key by key, so those patches are written alone
            for pk, patch in patches.items():
                if any(value is None or isinstance(value, dict) for value in patch.values()):
                    Customer.objects.filter(pk=pk).update(traits=customers[pk].traits, updated_at=stamp)
                else:
                    groups.setdefault(json.dumps(patch, sort_keys=True, default=json_default), []).append(pk)
            for patch, pks in groups.items():
                Customer.objects.filter(pk__in=pks).update(
                    traits=Func(F("traits"), Value(patch), function="json_patch"), updated_at=stamp)
        for customer in customers.values():
            customer.updated_at = stamp
        enqueue_events(events_insert(events))
