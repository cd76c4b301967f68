"""The admin's help for an agent's status: what Online, Away and Offline mean for routing (no
schema change: help text only)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents', '0005_case_closed_index'),
    ]

    operations = [
        migrations.AlterField(
            model_name='agent',
            name='status',
            field=models.CharField(choices=[('online', 'Online'), ('away', 'Away'), ('offline', 'Offline')], default='offline', help_text="Online: gets new cases from routing. Away (a break) and Offline: gets none, not even when nobody is online (cases wait in the team's queue, which the agent still sees and may take from); setting Away or Offline hands the cases they have not answered yet to an online colleague, else back to the queue. Answered cases stay theirs.", max_length=10),
        ),
        migrations.AlterField(
            model_name='historicalagent',
            name='status',
            field=models.CharField(choices=[('online', 'Online'), ('away', 'Away'), ('offline', 'Offline')], default='offline', help_text="Online: gets new cases from routing. Away (a break) and Offline: gets none, not even when nobody is online (cases wait in the team's queue, which the agent still sees and may take from); setting Away or Offline hands the cases they have not answered yet to an online colleague, else back to the queue. Answered cases stay theirs.", max_length=10),
        ),
    ]
