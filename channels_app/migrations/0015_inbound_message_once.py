"""Inbound messages by their provider id (Twilio's MessageSid), unique per channel: a retried webhook counts once."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('channels_app', '0014_template_variant_locale_tags'),
    ]

    operations = [
        migrations.CreateModel(
            name='InboundMessage',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('message_id', models.CharField(help_text="the provider's id of the message (MessageSid)", max_length=200)),
                ('received_at', models.DateTimeField(db_index=True)),
                ('channel', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='channels_app.channel')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('channel', 'message_id'), name='inbound_message_once')],
            },
        ),
    ]
