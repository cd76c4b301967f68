from collections.abc import Callable

from django.core.management import CommandError

from journeys.models import Customer
from journeys.services.customers_api import CustomerNotFound, customer_get


def find_customer(ref: str, *, note: Callable[[str], object] = lambda text: None) -> Customer:
    """A customer by user id, email or number. The number of a profile merged into another leads
    to the profile that holds its data now (as the management API does), said through `note`:
    an old ticket or log line may name a profile that was merged since."""
    customer = (Customer.objects.filter(external_id=ref, merged_into__isnull=True).first()
                or Customer.objects.filter(email=ref, merged_into__isnull=True).first())
    if customer is None and ref.isdigit():
        try:
            customer = customer_get(pk=int(ref))
        except CustomerNotFound:
            customer = None
        if customer is not None and customer.pk != int(ref):
            note(f"customer #{ref} was merged into #{customer.pk} ({customer}), which holds its data: "
                 f"acting on #{customer.pk}")
    if customer is None:
        raise CommandError(f"no customer {ref!r} (give a user id, an email or a customer number)")
    return customer
