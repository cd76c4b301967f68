"""Stage rechecks: the hourly stage refresh reads only the customers due (journeys.models.StageRecheck).

PostgreSQL: a statement-level trigger on the customer table marks the customers a statement
inserted, or changed in anything a stage rule can read, due at once ('-infinity'), in one
INSERT ... ON CONFLICT per statement (transition tables: the event API's set-based updates
stay one statement), and only while some stage has a rule. Other databases walk every
customer each hour, as before.
"""

import django.db.models.deletion
from django.db import migrations, models


COLUMNS = ("traits", "external_id", "email", "phone", "timezone", "locale", "first_seen", "created_at",
           "last_seen", "last_engaged_at", "stage", "merged_into_id")  # what profile.* reads (segments.PROFILE_FIELDS)

PG_TRIGGERS = f"""
CREATE OR REPLACE FUNCTION journeys_customer_stage_recheck() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM journeys_lifecyclestage WHERE rule <> '') THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO journeys_stagerecheck (customer_id, due_at)
    SELECT n.id, '-infinity' FROM new_rows n ORDER BY n.id
    ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at;
  ELSE
    INSERT INTO journeys_stagerecheck (customer_id, due_at)
    SELECT n.id, '-infinity' FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE ({", ".join("n." + c for c in COLUMNS)}) IS DISTINCT FROM ({", ".join("o." + c for c in COLUMNS)})
    ORDER BY n.id
    ON CONFLICT (customer_id) DO UPDATE SET due_at = EXCLUDED.due_at;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER journeys_customer_stage_recheck_ins AFTER INSERT ON journeys_customer
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION journeys_customer_stage_recheck();
CREATE TRIGGER journeys_customer_stage_recheck_upd AFTER UPDATE ON journeys_customer
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION journeys_customer_stage_recheck();
"""
PG_DROP = """
DROP TRIGGER IF EXISTS journeys_customer_stage_recheck_ins ON journeys_customer;
DROP TRIGGER IF EXISTS journeys_customer_stage_recheck_upd ON journeys_customer;
DROP FUNCTION IF EXISTS journeys_customer_stage_recheck();
"""


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGERS)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP)


class Migration(migrations.Migration):

    dependencies = [
        ('journeys', '0022_audit_window_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='StageRules',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('fingerprint', models.CharField(max_length=64)),
                ('walked_at', models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name='StageRecheck',
            fields=[
                ('customer', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='+', serialize=False, to='journeys.customer')),
                ('due_at', models.DateTimeField()),
            ],
            options={
                'indexes': [models.Index(fields=['due_at'], name='stage_recheck_due_idx')],
            },
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
