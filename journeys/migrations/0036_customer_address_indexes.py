"""Who holds an address, found through indexes (review 26, finding 4): the profile's phone number
(SMS STOP, a Twilio 21610 refusal and an opt-out's holders read it per message) and its email
address in lower case (every capitalisation a profile typed). Built CONCURRENTLY on PostgreSQL
(journeys.concurrent_indexes): the customers table keeps taking writes meanwhile."""

from django.db import migrations, models
from django.db.models.functions import Lower

from journeys.concurrent_indexes import concurrent_index_operation


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("journeys", "0035_stream_previous_secret")]
    operations = [
        concurrent_index_operation("journeys", add=[
            ("Customer", models.Index(fields=["phone"], name="customer_phone_idx")),
            ("Customer", models.Index(Lower("email"), name="customer_email_lower_idx")),
        ]),
    ]
