"""The channel list reads every channel's health together (QA rolesscale #10): the same number of
queries for 3N channels as for N, each row still showing its own circuit, errors and p95."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from channels_app.models import ChannelBreaker, Delivery, DeliveryAttempt
from journeys.services.governance import ROLE_OPS, roles_setup
from tests.channels_app.factories import ChannelFactory, CustomerFactory
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
N = 5


@pytest.fixture
def ops_client():
    roles_setup()
    ops = UserFactory(username="ops", is_staff=True)
    ops.groups.add(Group.objects.get(name=ROLE_OPS))
    client = Client()
    client.force_login(ops)
    return client


def channels(start: int, count: int) -> None:
    """Channels whose hour holds 20*(i+1) good calls of 1..20*(i+1) ms and i failed ones; odd ones open."""
    customer, now = CustomerFactory(), timezone.now()
    for i in range(start, start + count):
        channel = ChannelFactory(name=f"ch{i:02}")
        delivery = Delivery.objects.create(idempotency_key=f"d{i}", customer=customer, channel=channel)
        DeliveryAttempt.objects.bulk_create(
            [DeliveryAttempt(delivery=delivery, channel=channel, at=now - timedelta(minutes=5), ok=True, latency_ms=ms)
             for ms in range(1, 20 * (i + 1) + 1)]
            + [DeliveryAttempt(delivery=delivery, channel=channel, at=now, ok=False) for _ in range(i)])
        if i % 2:
            ChannelBreaker.objects.create(channel=channel, state="open", opened_at=now)


def test_the_channel_list_costs_the_same_with_3x_the_channels(ops_client):
    def opened() -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            response = ops_client.get("/admin/channels_app/channel/")
        assert response.status_code == 200
        return len(captured), response.content.decode()

    channels(0, N)
    few, _ = opened()
    channels(N, 2 * N)
    many, page = opened()

    assert many <= few, (few, many)
    # each row its own figures: ch02 has 60 calls (p95 = the 57th of 1..60 ms) and 2 errors, closed
    row = page.split(">ch02<")[1].split("</tr>")[0]
    assert "closed" in row and "2 of 62 (3%)" in row and "57 ms" in row
    row = page.split(">ch03<")[1].split("</tr>")[0]
    assert "open" in row and "3 of 83 (4%)" in row and "76 ms" in row
