from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("journeys", "0034_event_history_status")]

    operations = [
        migrations.AddField(
            model_name="streamdestination",
            name="previous_secret_salt",
            field=models.CharField(blank=True, editable=False, max_length=64,
                                   help_text="the secret before the last rotation also signs, for a while"),
        ),
    ]
