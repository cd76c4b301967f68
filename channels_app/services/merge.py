"""Identity merges: move channel rows from an absorbed profile to the survivor."""

from __future__ import annotations

from channels_app.choices import ConsentStatus
from channels_app.models import Consent, Delivery


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
        if consent.status == ConsentStatus.OPTED_OUT and mine.status != ConsentStatus.OPTED_OUT:
            mine.status, mine.source, mine.updated_at = consent.status, consent.source, consent.updated_at
            mine._change_reason = f"merged from customer {merged.pk}"
            mine.save()
        consent.delete()
