"""The history retention (HISTORY_RETENTION_DAYS): the profiles it looks at (every anonymous
profile once, so those retention already left empty are found too) and finished jobs by age."""

from django.db import migrations, models


# Anonymous profiles made before: looked at once by the housekeeping (deleted if they hold nothing).
BACKFILL = """
INSERT INTO journeys_profilecheck (customer_id)
SELECT id FROM journeys_customer WHERE external_id = '' AND email = '' AND merged_into_id IS NULL
"""


class Migration(migrations.Migration):

    dependencies = [
        ('journeys', '0031_history_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='ProfileCheck',
            fields=[
                ('customer_id', models.BigIntegerField(primary_key=True, serialize=False)),
            ],
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop, elidable=True),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('finished_at__isnull', False)), fields=['finished_at'], name='job_finished_idx'),
        ),
    ]
