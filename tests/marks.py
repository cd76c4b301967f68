"""Marks shared by test modules."""

from __future__ import annotations

import pytest
from django.db import connection


def on_postgres(why: str) -> list:
    """`pytestmark` of a module whose tests need PostgreSQL with real commits (other processes or
    threads on the test database); skipped on SQLite, saying `why`."""
    return [
        pytest.mark.postgres,
        pytest.mark.skipif(connection.vendor != "postgresql",
                           reason=f"needs PostgreSQL ({why}); set DATABASE_URL=postgresql://... to run"),
        pytest.mark.django_db(transaction=True),
    ]


def postgres_test(why: str):
    """The marks of `on_postgres` for one test function (a decorator), in a module whose other
    tests run on both databases."""
    def apply(test):
        for mark in on_postgres(why):
            test = mark(test)
        return test
    return apply
