"""Demo data for `make run`: an admin, a source, customers (workflows come with the engine)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from journeys.models import Customer, Identity, Source
from journeys.services.sources import source_create

DEMO_ADMIN = ("admin", "admin")


@transaction.atomic
def demo_load() -> list[str]:
    """Idempotent: safe to run on every start."""
    lines = []
    User = get_user_model()
    username, password = DEMO_ADMIN
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
    if created:
        user.set_password(password)
        user.save()
    lines.append(f"Demo admin login: username={username} password={password}")
    if not Source.objects.filter(name="demo-web").exists():
        _, key = source_create(name="demo-web", description="Demo web app")
        lines.append(f"Demo source 'demo-web' write key: {key}")
    people = [
        ("u-ada", "ada@example.com", "Europe/London", {"first_name": "Ada", "ltv": 820, "plan": "pro"}),
        ("u-grace", "grace@example.com", "America/New_York", {"first_name": "Grace", "ltv": 120, "plan": "free"}),
        ("u-alan", "alan@example.com", "Europe/Berlin", {"first_name": "Alan", "ltv": 1500, "plan": "business"}),
    ]
    for user_id, email, tz, traits in people:
        if Identity.objects.filter(kind="user_id", value=user_id).exists():
            continue
        customer = Customer.objects.create(external_id=user_id, email=email, timezone=tz, traits=traits)
        Identity.objects.create(kind="user_id", value=user_id, customer=customer)
        Identity.objects.create(kind="email", value=email, customer=customer)
    return lines
