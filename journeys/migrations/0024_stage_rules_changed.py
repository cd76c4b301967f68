"""PostgreSQL: any change to the lifecycle stages (a rule edited, taken away, put back; by the
admin, the API or a bulk update) forgets the rules the stage rechecks were worked out for, so the
next refresh walks every customer. Without it, rules taken away and put back unchanged between
two refreshes would keep the moments of before, though nobody was marked while no rule existed."""

from django.db import migrations

PG_TRIGGER = """
CREATE OR REPLACE FUNCTION journeys_lifecyclestage_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM journeys_stagerules;
  RETURN NULL;
END $$;
CREATE TRIGGER journeys_lifecyclestage_changed AFTER INSERT OR UPDATE OR DELETE ON journeys_lifecyclestage
  FOR EACH STATEMENT EXECUTE FUNCTION journeys_lifecyclestage_changed();
"""
PG_DROP = """
DROP TRIGGER IF EXISTS journeys_lifecyclestage_changed ON journeys_lifecyclestage;
DROP FUNCTION IF EXISTS journeys_lifecyclestage_changed();
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGER)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DROP)


class Migration(migrations.Migration):
    dependencies = [("journeys", "0023_stage_rechecks")]
    operations = [migrations.RunPython(create, drop)]
