"""The journeys admin, split by concept (thin: forms validate, actions call services).

What a user sees and may change comes from `journeys.selectors` (roles and guardian object
permissions); every change goes through a service that checks the same rules again.
`base` holds the building blocks every app's admin shares (the change reason, read-only
admins); `common` what the workflow-side admins share.
"""

from journeys.admin import (  # noqa: F401  (register)
    audits,
    customers,
    events,
    jobs,
    reviews,
    roles,
    runs,
    steps,
    units,
    versions,
    workflows,
)
