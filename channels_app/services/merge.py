"""Identity merges: move channel rows from an absorbed profile to the survivor."""

from __future__ import annotations

from channels_app.choices import ConsentStatus
from channels_app.models import Consent, Delivery
from channels_app.services.consent import consent_change


def customer_merge_channels(merged, target) -> None:
    """Deliveries move; consents move unless the survivor has its own choice for the same
    channel x topic, in which case the stricter one (an opt-out) wins."""
    Delivery.objects.filter(customer=merged).update(customer=target)
    for consent in Consent.objects.filter(customer=merged):
        mine = Consent.objects.filter(customer=target, channel_kind=consent.channel_kind, topic=consent.topic).first()
        if mine is None:
            consent.customer = target
            consent._change_reason = f"merged from customer {merged.pk}"
            consent.save()
            continue
        kept = consent_change(status_was=mine.status, source_was=mine.source, status=consent.status,
                              source=consent.source) if consent.status == ConsentStatus.OPTED_OUT else None
        if kept is not None:  # an opt-out and a bounce of either profile are both kept
            mine.status, mine.source, mine.updated_at = consent.status, kept, consent.updated_at
            mine._change_reason = f"merged from customer {merged.pk}"
            mine.save()
        consent.delete()
