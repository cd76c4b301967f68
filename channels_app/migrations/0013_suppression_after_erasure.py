"""Suppressions: what an erasure keeps of a person's opt-outs and hard bounces (a keyed digest of
each of their addresses with the channel kind x topic objected to), so that a person who comes
back under a new profile is not messaged against their objection (docs/PRIVACY.md)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('channels_app', '0012_delivery_failed_idx'),
    ]

    operations = [
        migrations.CreateModel(
            name='Suppression',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('digest', models.CharField(help_text='keyed digest of the address (never the address)', max_length=64)),
                ('channel_kind', models.CharField(blank=True, choices=[('email', 'Email'), ('sms', 'SMS'), ('push', 'Push'), ('in_app', 'In-app'), ('chat', 'Chat'), ('voice', 'Voice'), ('webhook', 'Webhook')], max_length=10)),
                ('status', models.CharField(help_text="opted_out, or a hard bounce's mark", max_length=100)),
                ('created_at', models.DateTimeField()),
                ('topic', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='channels_app.topic')),
            ],
            options={
                'constraints': [models.UniqueConstraint(condition=models.Q(('topic__isnull', False)), fields=('digest', 'channel_kind', 'topic'), name='suppression_digest_kind_topic_unique'), models.UniqueConstraint(condition=models.Q(('topic__isnull', True)), fields=('digest', 'channel_kind'), name='suppression_digest_kind_alltopics_unique')],
            },
        ),
    ]
