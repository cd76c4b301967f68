"""/healthz (liveness: no database) and /readyz (readiness: database, migrations, broker), for load
balancers and orchestrators: unauthenticated, answered whatever the Host, small JSON."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def test_liveness_answers_without_the_database_whatever_the_host(client, django_assert_num_queries):
    # when a probe asks by the pod's address (not in ALLOWED_HOSTS), without any login
    with django_assert_num_queries(0):
        response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")

    # then it is alive, and says no more
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response["Cache-Control"] == "no-store"


def test_readiness_checks_the_database_and_the_migrations(client):
    response = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok"}}


def test_a_migration_not_applied_makes_the_process_not_ready(client):
    # given a database that misses the newest migration of the channels app
    from django.db.migrations.loader import MigrationLoader

    [leaf] = [node for node in MigrationLoader(None).graph.leaf_nodes() if node[0] == "channels_app"]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_migrations WHERE app = %s AND name = %s", list(leaf))

    response = client.get("/readyz")

    # then readiness fails, naming the check and the migration, and the process stays alive
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "failing": ["migrations"], "checks": {
        "database": "ok", "migrations": f"not applied: channels_app.{leaf[1]} (run manage.py migrate)"}}
    assert client.get("/healthz").status_code == 200


def test_an_unreachable_redis_broker_makes_the_process_not_ready_without_saying_where_it_is(client, settings):
    from tests.channels_app.servers import free_port

    settings.Q_BROKER, settings.REDIS_URL = "redis", f"redis://:s3cret@127.0.0.1:{free_port()}/0"

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"] and body["checks"]["broker"] == "unreachable (ConnectionError)"
    assert "s3cret" not in response.content.decode() and "127.0.0.1" not in response.content.decode()
