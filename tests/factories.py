"""factory-boy factories shared by the whole suite."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from journeys.models import Customer, Identity
from journeys.services.sources import source_create


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw")


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer

    external_id = factory.Sequence(lambda n: f"cust-{n}")
    email = factory.LazyAttribute(lambda o: f"{o.external_id}@example.com")
    timezone = "UTC"
    traits = factory.LazyFunction(dict)

    @factory.post_generation
    def identities(obj, create, extracted, **kwargs):
        if create and obj.external_id:
            Identity.objects.get_or_create(kind="user_id", value=obj.external_id, defaults={"customer": obj})


def make_source(name: str = "web", **kwargs):
    """A source and its write key (keys are only known at creation)."""
    return source_create(name=name, **kwargs)
