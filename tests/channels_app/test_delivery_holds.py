"""What ops read about a provider outage in the deliveries list: what holds a message now (an
open breaker), and nothing any more once the breaker closed (due, waiting its turn)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.services import deliveries_dispatch

pytestmark = pytest.mark.django_db


def _column(client, query=""):
    page = client.get(f"{reverse('admin:channels_app_delivery_changelist')}?o=-1{query}")
    assert page.status_code == 200
    return sorted(page.context["cl"].model_admin.held_by(d) for d in page.context["cl"].result_list)


def test_messages_held_by_an_open_breaker_read_due_once_it_has_closed(admin_client, chat, vendor, chat_messages):
    # given a provider that failed five minutes ago: the breaker opened at its first error and
    # the batch's other two messages were held until its cooldown ended
    earlier = timezone.now() - timedelta(minutes=5)
    vendor.fail(1, status=500)
    ids = chat_messages(3, now=earlier)
    deliveries_dispatch(delivery_ids=ids, now=earlier)
    assert sorted(Delivery.objects.values_list("reason", flat=True)) == ["breaker_open", "breaker_open", "retry"]

    # while the breaker is still open (nobody probed it yet) the list says so
    texts = _column(admin_client)
    assert [t.split(" until ")[0] for t in texts[1:]] == ["Held: circuit breaker open"] * 2
    assert len(_column(admin_client, "&hold=breaker_open")) == 2

    # when ops closes the breaker, the messages are no longer "breaker open" but due, in line
    response = admin_client.post(reverse("admin:channels_app_channel_changelist"),
                                 {"action": "reset_breaker", "_selected_action": chat.pk, "index": 0})
    assert response.status_code == 302
    texts = _column(admin_client)
    assert not any("Held: circuit breaker" in t for t in texts)
    assert sum(bool(re.fullmatch(r"Due since .+, waiting its turn \(was held: breaker of chat is open\)", t))
               for t in texts) == 2, texts
    assert _column(admin_client, "&hold=breaker_open") == [] and len(_column(admin_client, "&hold=due")) == 3
