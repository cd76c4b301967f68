"""Identity merges: move channel rows from absorbed profiles to their survivors."""

from __future__ import annotations

from django.db import connection
from django.utils import timezone
from simple_history.utils import bulk_update_with_history

from channels_app.choices import ConsentStatus
from channels_app.models import Consent, Delivery
from channels_app.services.consent import consent_change
from journeys.engine.batch import ids_in, ids_q, rows_move
from journeys.services.identity import MergePairs, merge_hook


@merge_hook
def customer_merge_channels(pairs: MergePairs) -> None:
    """Deliveries move; consents move unless the survivor has its own choice for the same
    channel x topic, in which case the stricter one (an opt-out) wins and the absorbed row goes.
    Every consent row changed, moved or deleted gets its history row, as a save or delete would
    write it. A fixed number of statements for all pairs (each customer in at most one)."""
    rows_move(Delivery.objects.all(), pairs)
    survivors = {merged.pk: target.pk for merged, target in pairs}
    absorbed = list(Consent.objects.filter(ids_q("customer_id", list(survivors))).order_by("pk"))
    if not absorbed:
        return
    reason = {target: f"merged from customer {merged}" for merged, target in survivors.items()}
    own = {(c.customer_id, c.channel_kind, c.topic_id): c
           for c in Consent.objects.filter(ids_q("customer_id", list(survivors.values())))}
    moved, changed, dropped = [], [], []
    for consent in absorbed:
        target = survivors[consent.customer_id]
        mine = own.get((target, consent.channel_kind, consent.topic_id))  # the survivor's choice
        if mine is None:
            consent.customer_id = target
            consent._change_reason = reason[target]
            moved.append(consent)
            continue
        kept = consent_change(status_was=mine.status, source_was=mine.source, status=consent.status,
                              source=consent.source) if consent.status == ConsentStatus.OPTED_OUT else None
        if kept is not None:  # an opt-out and a bounce of either profile are both kept
            mine.status, mine.source, mine.updated_at = consent.status, kept, consent.updated_at
            mine._change_reason = reason[target]
            changed.append(mine)
        dropped.append(consent)
    if moved:
        rows_move(Consent.objects.filter(ids_q("pk", [c.pk for c in moved])), pairs)
        Consent.history.bulk_history_create(moved, update=True)
    if changed:
        bulk_update_with_history(changed, Consent, ["status", "source", "updated_at"])
    if dropped:
        _consents_delete(dropped)


def _consents_delete(consents: list[Consent]) -> None:
    """Delete consent rows with one statement, each leaving the history row a delete() would."""
    history = Consent.history.model
    now = timezone.now()
    history.objects.bulk_create([
        history(history_date=now, history_type="-", history_user=history.get_default_history_user(c),
                history_change_reason=None, **{f.attname: getattr(c, f.attname) for f in history.tracked_fields})
        for c in consents
    ])
    where, params = ids_in("id", [c.pk for c in consents])
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(Consent._meta.db_table)} WHERE {where}", params)
