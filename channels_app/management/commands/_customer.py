from django.core.management import CommandError

from journeys.models import Customer


def find_customer(ref: str) -> Customer:
    """A customer by user id, email or number."""
    customer = (Customer.objects.filter(external_id=ref, merged_into__isnull=True).first()
                or Customer.objects.filter(email=ref, merged_into__isnull=True).first())
    if customer is None and ref.isdigit():
        customer = Customer.objects.filter(pk=int(ref)).first()
    if customer is None:
        raise CommandError(f"no customer {ref!r} (give a user id, an email or a customer number)")
    return customer
