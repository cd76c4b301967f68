"""Operations of the channels app. Other apps call these (message_send) and nothing else."""

from channels_app.services.consent import (
    consent_refusal, consent_set, inbound_sms_handle, personalization_allowed, preferences_get, preferences_save,
    unsubscribe_apply,
)
from channels_app.services.privacy import customer_erase, customer_export
from channels_app.services.channels import channel_pause_set, channel_save
from channels_app.services.dispatch import (
    deliveries_dispatch, deliveries_dispatch_due, deliveries_drain, delivery_dispatch, delivery_requeue,
)
from channels_app.services.sending import channel_address, channel_pick, message_context, message_send, webhook_send
from channels_app.services.templates import Rendered, template_check, template_render


def delivery_send(*, delivery_id: int) -> object:
    """Kept for callers of the first slice: dispatch one delivery now."""
    return delivery_dispatch(delivery_id=delivery_id)


__all__ = [
    "consent_refusal", "consent_set", "inbound_sms_handle", "personalization_allowed", "preferences_get",
    "preferences_save", "unsubscribe_apply", "customer_erase", "customer_export", "channel_address", "channel_pick",
    "channel_pause_set", "channel_save",
    "deliveries_dispatch", "deliveries_dispatch_due", "deliveries_drain", "delivery_dispatch", "delivery_requeue", "delivery_send", "message_context", "message_send",
    "webhook_send", "Rendered", "template_check", "template_render",
]
