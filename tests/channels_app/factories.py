"""Factories for channels tests (the shared ones live in tests/factories.py)."""

from __future__ import annotations

import factory

from channels_app.models import Channel, FrequencyCap, MessageTemplate, Topic
from tests.factories import CustomerFactory  # noqa: F401  (re-exported for convenience)


class ChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Channel
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"channel-{n}")
    kind = "email"
    provider = "smtp"
    settings = factory.LazyFunction(dict)
    retry_base_s = 10
    breaker_threshold = 3
    breaker_cooldown_s = 60


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"topic-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class TemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MessageTemplate

    name = factory.Sequence(lambda n: f"template-{n}")
    subject = "Hello {{ profile.first_name|default:'there' }}"
    body = "Hi {{ profile.first_name|default:'there' }}, see {{ links.preferences_url }}"
    html_body = ""
    topic = None


class CapFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = FrequencyCap

    name = factory.Sequence(lambda n: f"cap-{n}")
    limit = 1
    window_s = 86400


def topic(slug: str) -> Topic:
    """The topics created by the data migration (marketing requires opt-in, transactional...)."""
    return Topic.objects.get(slug=slug)


def sent_message(channel: Channel, customer, on_commit, key: str, slug: str = "product_updates"):
    """A message of topic `slug` sent to the customer on the channel as a commit would (message_send,
    then its dispatch), reloaded as it ended up."""
    from channels_app.services import message_send

    with on_commit():
        delivery = message_send(customer=customer, template=TemplateFactory(topic=topic(slug)), channel=channel,
                                idempotency_key=key, context={})
    delivery.refresh_from_db()
    return delivery
