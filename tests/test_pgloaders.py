"""Timestamps read from PostgreSQL (config.pgloaders): the ISO loader gives what Django's own
loader gives, for every shape PostgreSQL prints, and stays in place on the connection."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.db import connection
from psycopg import DataError
from django.db.backends.postgresql.psycopg_any import BaseTzLoader
from django.utils import timezone

from tests.factories import CustomerFactory

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's timestamptz loader"),
    pytest.mark.django_db,
]

VALUES = [
    "2026-12-04 18:41:19.123456+00",
    "2026-12-04 18:41:19.12+00",          # PostgreSQL drops trailing zeros of the fraction
    "2026-12-04 18:41:19+00",
    "2026-03-29 01:30:00+02",              # an offset other than the session's
    "1887-01-01 00:00:00+00:09:21",        # an offset with seconds (LMT)
    "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
]


def _django_loader():
    class Reference(BaseTzLoader):
        timezone = connection.timezone
    return Reference


@pytest.mark.parametrize("text", VALUES)
def test_values_read_as_djangos_loader_reads_them(text):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::timestamptz", [text])
        ours = cursor.fetchone()[0]
        raw = connection.connection.execute("SELECT %s::timestamptz::text", [text]).fetchone()[0]
    reference = _django_loader()(0, connection.connection).load(raw.encode())
    assert ours == reference
    assert ours.tzinfo == reference.tzinfo == dt_timezone.utc
    assert ours.utcoffset() == timedelta(0)


def test_what_iso_cannot_read_goes_to_djangos_loader():
    connection.ensure_connection()
    loader = connection.connection.adapters.get_loader(1184, 0)(1184, connection.connection)
    assert type(loader).__name__ == "IsoTzLoader"  # installed on the connection
    for text in (b"0044-03-15 12:00:00+00 BC", b"infinity"):  # psycopg's own refusal, either way
        with pytest.raises(DataError) as ours:
            loader.load(text)
        with pytest.raises(DataError) as django:
            _django_loader()(0, connection.connection).load(text)
        assert str(ours.value) == str(django.value)


def test_a_model_round_trip_keeps_the_instant():
    moment = datetime(2026, 12, 4, 18, 41, 19, 120000, tzinfo=dt_timezone.utc)
    customer = CustomerFactory()
    type(customer).objects.filter(pk=customer.pk).update(last_seen=moment)
    assert type(customer).objects.get(pk=customer.pk).last_seen == moment
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        assert abs(cursor.fetchone()[0] - now) < timedelta(minutes=1)
