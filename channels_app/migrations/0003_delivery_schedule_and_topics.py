"""The deliveries clock (a django-q2 schedule that runs channels_app.tasks.deliveries_tick
every minute: deferred sends, retries, lost enqueues) and the default consent topics."""

from django.db import migrations
from django.utils import timezone

TOPICS = [
    ("transactional", "Transactional", "Receipts, password resets, service notices.", False, True),
    ("marketing", "Marketing", "Offers and promotions.", True, False),
    ("product_updates", "Product updates", "News about features you use.", False, False),
    ("personalization", "Personalization", "Use of your profile and activity to personalise messages.", False, False),
]


def forwards(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="channels_app.deliveries_tick",
        defaults={"func": "channels_app.tasks.deliveries_tick", "schedule_type": "I", "minutes": 1, "repeats": -1,
                  "next_run": timezone.now()},
    )
    Topic = apps.get_model("channels_app", "Topic")
    for slug, name, description, opt_in, transactional in TOPICS:
        Topic.objects.get_or_create(slug=slug, defaults={"name": name, "description": description,
                                                         "requires_opt_in": opt_in, "transactional": transactional})


def backwards(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="channels_app.deliveries_tick").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("channels_app", "0002_delivery_policy_consent_privacy"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
