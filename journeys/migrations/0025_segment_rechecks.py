"""Segment rechecks: the hourly segment-entry refresh reads only the customers due
(journeys.models.SegmentRecheck).

PostgreSQL: a statement-level trigger on the customer table marks the customers a statement
inserted, or changed in anything a rule can read, due at once ('-infinity'), in one
INSERT ... ON CONFLICT per statement, and only while the refresh keeps rechecks (a
journeys_segmentrules row exists). Other databases compare every customer each hour, as before.
"""


import django.db.models.deletion
from django.db import migrations, models


COLUMNS = ("traits", "external_id", "email", "phone", "timezone", "locale", "first_seen", "created_at",
           "last_seen", "last_engaged_at", "stage", "merged_into_id")  # what profile.* reads (segments.PROFILE_FIELDS)

PG_TRIGGERS = f"""
CREATE OR REPLACE FUNCTION journeys_customer_segment_recheck() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM journeys_segmentrules) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO journeys_segmentrecheck (customer_id, due_at)
    SELECT n.id, '-infinity' FROM new_rows n ORDER BY n.id
    ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at;
  ELSE
    INSERT INTO journeys_segmentrecheck (customer_id, due_at)
    SELECT n.id, '-infinity' FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE ({", ".join("n." + c for c in COLUMNS)}) IS DISTINCT FROM ({", ".join("o." + c for c in COLUMNS)})
    ORDER BY n.id
    ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER journeys_customer_segment_recheck_ins AFTER INSERT ON journeys_customer
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION journeys_customer_segment_recheck();
CREATE TRIGGER journeys_customer_segment_recheck_upd AFTER UPDATE ON journeys_customer
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION journeys_customer_segment_recheck();
"""
PG_DROP = """
DROP TRIGGER IF EXISTS journeys_customer_segment_recheck_ins ON journeys_customer;
DROP TRIGGER IF EXISTS journeys_customer_segment_recheck_upd ON journeys_customer;
DROP FUNCTION IF EXISTS journeys_customer_segment_recheck();
"""


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGERS)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP)


class Migration(migrations.Migration):

    dependencies = [
        ('journeys', '0024_stage_rules_changed'),
    ]

    operations = [
        migrations.CreateModel(
            name='SegmentRules',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('fingerprint', models.CharField(max_length=64)),
                ('walked_at', models.DateTimeField(null=True)),
            ],
        ),
        migrations.CreateModel(
            name='SegmentRecheck',
            fields=[
                ('customer', models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='+', serialize=False, to='journeys.customer')),
                ('due_at', models.DateTimeField()),
                ('since', models.DateTimeField(null=True)),
            ],
            options={
                'indexes': [models.Index(fields=['due_at'], name='segment_recheck_due_idx')],
            },
        ),
        # No foreign keys in the database for the recheck tables: a mark never waits on a worker's
        # lock of the customer (the key check would); the refresh drops marks of deleted customers.
        migrations.AlterField(
            model_name='stagerecheck',
            name='customer',
            field=models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='+', serialize=False, to='journeys.customer'),
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
