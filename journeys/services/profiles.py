"""Profile changes made by the product itself (steps, agents), recorded like identify calls."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from journeys.models import Customer


@transaction.atomic
def customer_update_traits(*, customer: Customer, traits: dict, reason: str) -> dict:
    """Set traits on a profile; returns {trait: [old, new]} for the ones that changed.

    Changes are also recorded as an internal `Profile Updated` event so that
    attribute-change and segment triggers see them like any identify call.
    """
    from journeys.services.internal_events import event_record_internal

    fresh = Customer.objects.select_for_update().get(pk=customer.pk)
    customer.traits = fresh.traits  # the caller's object stays the one the batch shares
    changes = {k: [customer.traits.get(k), v] for k, v in traits.items() if customer.traits.get(k) != v}
    if not changes:
        return {}
    customer.traits = {**customer.traits, **traits}
    customer.save(update_fields=["traits", "updated_at"])
    event_record_internal(
        customer=customer, name="Profile Updated", properties={"reason": reason}, traits=traits,
        changes=changes, at=timezone.now(),
    )
    return changes
