"""The database server is restarted (`pg_ctl restart -m fast`) while clients send events.

Everything is real and separate: a private PostgreSQL cluster made for this test (the shared
server is never touched), gunicorn serving the event API on it, Segment-style clients in
threads that resend a batch with the same messageIds after a 503, and afterwards a real
`manage.py qcluster` (ORM broker) that processes what was stored.

Proved: requests caught by the restart get 503 with Retry-After (never a 500), every batch
lands once its retry gets through, each messageId is stored exactly once, and every stored
event has its task and is processed by a worker.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection

from tests.proc import (
    PrivatePostgres,
    QCluster,
    WebServer,
    manage,
    private_postgres_missing,
    server_env,
    wait_until,
)
from tests.pgtemplate import template_dump_into

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql",
                       reason="PostgreSQL-only proof (a server restart); set DATABASE_URL=postgresql://... to run"),
    pytest.mark.skipif(bool(private_postgres_missing()), reason=private_postgres_missing() or ""),
]

WEB_APP = "proof-web"


def _in_flight(url: str) -> bool:
    """A web process is inside a statement or an open transaction right now."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            return bool(conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
                " AND state IN ('active', 'idle in transaction')", [WEB_APP]).fetchone())
    except psycopg.OperationalError:
        return False


def test_database_restart_during_ingestion_gives_503_then_every_event_lands_once_and_is_processed(
    batch_sender, django_db_setup
):
    """django_db_setup: the suite's migrated template (tests/pgtemplate.py), to copy into the private server."""
    with PrivatePostgres() as pg:
        env = server_env(pg.url, DB_CONN_MAX_AGE="60", PGAPPNAME=WEB_APP)
        # The schema and rows `migrate` gives, copied from the suite's migrated template (or migrated here).
        if not template_dump_into(connection.settings_dict, pg.url):
            manage("migrate", "--noinput", "-v", "0", env=env)
        key = manage("create_source", "restart-proof", env=env).strip().splitlines()[-1]

        with WebServer(env=env, workers=2, name="proof-restart-web") as web:
            sender = batch_sender(port=web.port, write_key=key, clients=3, per_batch=20, minimum=10).start()
            wait_until(lambda: sender.delivered() >= 200, timeout=30, message="the first batches to land")
            restarts = 0
            # Restart while a request is inside a transaction; again if every request was lucky.
            while restarts < 6 and not sender.stats.statuses[503]:
                wait_until(lambda: _in_flight(pg.url), timeout=20, interval=0.005, message="a request in flight")
                pg.restart()
                restarts += 1
                landed = sender.delivered()
                wait_until(lambda: sender.delivered() > landed + 100, timeout=30,
                           message="batches to land again after the restart")
            stats = sender.finish()
            web_log = web.output()

        assert not stats.failures, (stats.failures[:5], web_log)
        assert stats.statuses[503] >= 1, f"no client saw the outage in {restarts} restarts: {stats.statuses}"
        assert all(v and int(v) >= 1 for v in stats.retry_after), stats.retry_after
        assert set(stats.statuses) <= {200, 503} | {s for s in stats.statuses if isinstance(s, str)}, stats.statuses

        with psycopg.connect(pg.url) as conn:
            stored = dict(conn.execute("SELECT message_id, count(*) FROM journeys_event GROUP BY message_id").fetchall())
            tasks = conn.execute("SELECT count(*) FROM django_q_ormq").fetchone()[0]
        assert len(stats.sent_ids) == len(set(stats.sent_ids))
        assert set(stored) == set(stats.sent_ids), (
            f"lost {len(set(stats.sent_ids) - set(stored))}, unexpected {len(set(stored) - set(stats.sent_ids))}")
        assert set(stored.values()) == {1}, "a messageId was stored twice"
        assert tasks >= 1

        # A worker processes everything that was stored: each event had its task (the outbox).
        began = time.monotonic()
        with QCluster(db_url=pg.url, app_name="proof-restart-worker", workers=1, retry=30, timeout=20,
                      extra_env={"SECRET_KEY": env["SECRET_KEY"]}) as worker:  # tasks are signed with it
            def drained() -> bool:
                with psycopg.connect(pg.url) as conn:
                    pending = conn.execute("SELECT count(*) FROM journeys_event WHERE status <> 'processed'").fetchone()[0]
                    queued = conn.execute("SELECT count(*) FROM django_q_ormq").fetchone()[0]
                return pending == 0 and queued == 0

            wait_until(drained, timeout=90, interval=0.5, message=f"the worker to process all events\n{worker.output()}")
            worker_log = worker.output(tail=200_000)
        with psycopg.connect(pg.url) as conn:
            failed = conn.execute("SELECT count(*) FROM django_q_task WHERE success = false").fetchone()[0]
        assert failed == 0
        assert "Failed to push" not in worker_log, worker_log[-3000:]
        print(f"{len(stored)} events, {restarts} restart(s), statuses {dict(stats.statuses)}, "
              f"processed in {time.monotonic() - began:.1f}s")
