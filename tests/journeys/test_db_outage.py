"""The database goes away during ingestion: clients get 503, their retries land once (PostgreSQL)."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from journeys.models import Event

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (server-side connection kill)"),
]


def _kill_our_backend() -> None:
    """Terminate the web process's database session from outside, as a server restart would."""
    pid = connection.connection.info.backend_pid
    settings = connection.settings_dict
    with psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], password=settings["PASSWORD"] or None,
        host=settings["HOST"] or None, port=settings["PORT"] or None, autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_connection_lost_mid_ingestion_gives_503_and_the_retry_lands_once(api):
    batch = {"batch": [{"type": "track", "userId": f"u{i}", "event": "Order Completed", "messageId": f"m{i}"}
                       for i in range(20)]}
    assert api.post("track", {"userId": "warm", "event": "Warm"}).status_code == 200
    connection.ensure_connection()
    _kill_our_backend()

    first = api.post("batch", batch)

    assert first.status_code == 503
    assert first["Retry-After"]
    connection.close()  # what the request_finished signal does for the next request in a real server
    retry = api.post("batch", batch)
    again = api.post("batch", batch)  # a client that retried twice
    assert (retry.status_code, again.status_code) == (200, 200)
    assert Event.objects.filter(name="Order Completed").count() == 20
