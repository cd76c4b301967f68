"""Transactional messages go first: a partial index of the transactional messages waiting
(deferred; few), so the claim takes those due ahead of a marketing backlog due at the same
time without reading the backlog. Built CONCURRENTLY on PostgreSQL (journeys.concurrent_indexes).
The caps' help texts say what a cap counts (not transactional messages) and what each action does."""

from django.db import migrations, models

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('channels_app', '0016_delivery_provider_id_idx'),
        ('journeys', '0036_customer_address_indexes'),
    ]

    operations = [
        migrations.AlterField(
            model_name='frequencycap',
            name='action',
            field=models.CharField(choices=[('suppress', 'Suppress'), ('defer', 'Defer')], default='suppress', help_text="suppress: the extra message is dropped; defer: it waits until the window frees (a campaign's message may then arrive a day late)", max_length=10),
        ),
        migrations.AlterField(
            model_name='frequencycap',
            name='limit',
            field=models.PositiveIntegerField(help_text='messages per customer within the window; transactional messages (receipts, one-time codes) are neither held by a cap nor counted towards it'),
        ),
        migrations.AlterField(
            model_name='frequencycap',
            name='window_s',
            field=models.PositiveIntegerField(help_text='e.g. 86400 for a day (a rolling window, not a calendar day)'),
        ),
        migrations.AlterField(
            model_name='historicalfrequencycap',
            name='action',
            field=models.CharField(choices=[('suppress', 'Suppress'), ('defer', 'Defer')], default='suppress', help_text="suppress: the extra message is dropped; defer: it waits until the window frees (a campaign's message may then arrive a day late)", max_length=10),
        ),
        migrations.AlterField(
            model_name='historicalfrequencycap',
            name='limit',
            field=models.PositiveIntegerField(help_text='messages per customer within the window; transactional messages (receipts, one-time codes) are neither held by a cap nor counted towards it'),
        ),
        migrations.AlterField(
            model_name='historicalfrequencycap',
            name='window_s',
            field=models.PositiveIntegerField(help_text='e.g. 86400 for a day (a rolling window, not a calendar day)'),
        ),
        concurrent_index_operation("channels_app", add=[(
            "Delivery", models.Index(condition=models.Q(status="deferred", transactional=True),
                                     fields=["next_attempt_at", "id"], name="delivery_due_tx_idx"))]),
    ]
