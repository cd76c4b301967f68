"""Health endpoints for load balancers and orchestrators (docs/SCALING.md, "On call").

`GET /healthz` (liveness): the process answers; touches neither the database nor the broker, so
a database outage never gets every web process restarted. `GET /readyz` (readiness): the
database answers, every migration this code has is applied, and the Redis broker answers when it
is the one configured (the ORM broker is the database). 200 when all pass, else 503; the JSON
names each check and the failing ones, never a host, a user or a password.

Answered by a middleware placed first: before the host check (a probe often sends the pod's
address as Host), the HTTPS redirect, sessions and authentication. Unauthenticated and cheap: a
`SELECT 1`, one read of the small migrations table, and a Redis PING with a one-second timeout.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse

PATHS = ("/healthz", "/readyz")
_lock = threading.Lock()
_leaves: list[tuple[str, str]] | None = None  # the newest migration of each app, as this code has them
_redis: dict[str, object] = {}  # REDIS_URL -> a client (one connection kept per process)


def _answer(status: int, body: dict) -> HttpResponse:
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


def _error(exc: BaseException) -> str:
    return f"unreachable ({type(exc).__name__})"


def database_check() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return _error(exc)
    return "ok"


def _migration_leaves() -> list[tuple[str, str]]:
    """Read from the migration files once per process (the graph does not change while it runs)."""
    global _leaves
    with _lock:
        if _leaves is None:
            from django.db.migrations.loader import MigrationLoader

            _leaves = sorted(MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes())
        return _leaves


def migrations_check() -> str:
    """Whether the newest migration of every app is recorded as applied (one read of django_migrations)."""
    from django.db.migrations.recorder import MigrationRecorder

    try:
        applied = set(MigrationRecorder(connection).applied_migrations())
    except DatabaseError as exc:
        return _error(exc)
    missing = [f"{app}.{name}" for app, name in _migration_leaves() if (app, name) not in applied]
    if missing:
        return f"not applied: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} (run manage.py migrate)"
    return "ok"


def broker_check() -> str | None:
    """The Redis broker's PING (one connection kept per process); None with the ORM broker (the database)."""
    if getattr(settings, "Q_BROKER", "orm") != "redis":
        return None
    try:
        client = _redis.get(settings.REDIS_URL)
        if client is None:
            import redis

            client = _redis[settings.REDIS_URL] = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1,
                                                                       socket_timeout=1)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return _error(exc)
    return "ok"


def readiness() -> tuple[bool, dict[str, str]]:
    """(ready, check -> "ok" or what is wrong)."""
    checks = {"database": database_check()}
    checks["migrations"] = migrations_check() if checks["database"] == "ok" else "not checked (no database)"
    if (broker := broker_check()) is not None:
        checks["broker"] = broker
    return all(value == "ok" for value in checks.values()), checks


class HealthCheckMiddleware:
    """Answers /healthz and /readyz (GET or HEAD) before any other middleware runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info not in PATHS:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = _answer(405, {"status": "error", "message": "use GET or HEAD"})
            response["Allow"] = "GET, HEAD"
            return response
        if request.path_info == "/healthz":
            return _answer(200, {"status": "ok"})
        ready, checks = readiness()
        failing = [name for name, value in checks.items() if value != "ok"]
        return _answer(200 if ready else 503, {"status": "ok" if ready else "unavailable", "checks": checks,
                                               **({"failing": failing} if failing else {})})
