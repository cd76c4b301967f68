"""The breaker remembers how long its consecutive failures took together (it opens on time lost,
DELIVERY_BREAKER_FAILING_S: a hanging vendor) and the vendor's last Retry-After (the half-open probe
waits for it). Two columns with defaults: no rewrite of existing rows."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('channels_app', '0010_delivery_history_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='channelbreaker',
            name='failing_ms',
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='channelbreaker',
            name='retry_after_until',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
