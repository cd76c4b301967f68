"""Models of the journeys core, split by concept and re-exported here."""

from journeys.models.base import Timestamped
from journeys.models.customers import Customer, CustomerMerge, Identity
from journeys.models.events import Event, Source

__all__ = [
    "Timestamped",
    "Customer",
    "CustomerMerge",
    "Identity",
    "Event",
    "Source",
]
