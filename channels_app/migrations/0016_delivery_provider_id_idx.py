"""An exact search by a provider's message id (a Twilio SID or SES id quoted in a support ticket)
in the deliveries admin: a partial index holding only the rows that have one, written once when
the provider accepts the message. Built CONCURRENTLY on PostgreSQL (journeys.concurrent_indexes):
an install with a large history keeps sending meanwhile."""

from django.db import migrations, models

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("channels_app", "0015_inbound_message_once")]
    operations = [
        concurrent_index_operation("channels_app", add=[(
            "Delivery", models.Index(condition=~models.Q(provider_message_id=""), fields=["provider_message_id"],
                                     name="delivery_provider_id_idx"))]),
    ]
