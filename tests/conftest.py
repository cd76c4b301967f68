from __future__ import annotations

import base64
import gzip
import json

import pytest
from rest_framework.test import APIClient

from tests.factories import make_source

# Tests that time real processes (workers SIGKILLed or frozen mid-task, ticks racing each other):
# scripts/test.sh runs them after the rest, alone, so the other xdist worker cannot starve them.
SERIAL = ("tests/proof/", "tests/journeys/test_worker_faults.py", "tests/agents/test_concurrency.py",
          "tests/channels_app/test_concurrency.py")


def pytest_ignore_collect(collection_path, config):
    """`-m serial` (scripts/test.sh's second run) selects exactly the tests under SERIAL: the other
    test files are not even imported (collecting all ~3,000 tests to deselect them costs ~20 s)."""
    if config.option.markexpr != "serial" or not collection_path.name.startswith("test_"):
        return None
    try:
        relative = collection_path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return None
    return None if relative.startswith(SERIAL) else True


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """On PostgreSQL each test database (one per xdist worker) is a copy of one migrated template
    (tests/pgtemplate.py): the migrations run once per suite, not once per worker."""
    from django.conf import settings

    from tests.pgtemplate import template_ensure, template_name

    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return
    name = template_name(db)
    template_ensure(db, name)
    db.setdefault("TEST", {})["TEMPLATE"] = name


@pytest.fixture
def source_and_key(db):
    return make_source("web")


@pytest.fixture
def source(source_and_key):
    return source_and_key[0]


@pytest.fixture
def write_key(source_and_key):
    return source_and_key[1]


class TrackingClient:
    """Talks to /v1/* the way Segment's libraries do (HTTP Basic write key)."""

    def __init__(self, key: str | None):
        self.client = APIClient()
        self.key = key

    def post(self, path: str, body, *, key: str | None = "default", gzip_body: bool = False, raw: bytes | None = None,
             headers: dict | None = None):
        use_key = self.key if key == "default" else key
        extra = dict(headers or {})
        if use_key is not None:
            extra["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(f"{use_key}:".encode()).decode()
        data = raw if raw is not None else json.dumps(body).encode()
        if gzip_body:
            data = gzip.compress(data)
            extra["HTTP_CONTENT_ENCODING"] = "gzip"
        return self.client.generic("POST", f"/v1/{path}", data, content_type="application/json", **extra)


@pytest.fixture
def api(write_key):
    return TrackingClient(write_key)


@pytest.fixture(autouse=True)
def _clear_cache():
    """Caches (the event catalog's, throttles') must not leak between tests; primary keys repeat."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture(autouse=True)
def _fixed_customer_ids():
    """make_customers hands out the same ids in every run of a test (hash-placed groups)."""
    from tests.experiments.factories import fixed_ids_reset

    fixed_ids_reset()
    yield


@pytest.fixture(autouse=True)
def _fresh_engine():
    """Compiled versions, the trigger index and the rule-defined stages (read again every few
    seconds) are cached per process; primary keys repeat between tests."""
    from journeys.engine.compiled import reset_caches
    from journeys.engine.listeners import stages_reset
    from journeys.services.stream import stream_destinations_reset

    for reset in (reset_caches, stages_reset, stream_destinations_reset):
        reset()
    yield
    for reset in (reset_caches, stages_reset, stream_destinations_reset):
        reset()


@pytest.fixture
def send(api, django_capture_on_commit_callbacks):
    """Send an event through the HTTP API and let the (inline) worker process it; returns the newest event."""
    from journeys.models import Event

    def post(kind="track", **body):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(kind, body)
        assert response.status_code == 200, response.content
        return Event.objects.order_by("-id").first()

    return post


@pytest.fixture
def orm_broker(settings, monkeypatch):
    """Enqueue like production (test settings run tasks inline, sync): `async_task` writes the
    django-q OrmQ row inside the caller's transaction (the outbox), for a real qcluster to pick up."""
    from django_q.conf import Conf

    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "sync"}
    monkeypatch.setattr(Conf, "SYNC", False)
    assert "orm" in settings.Q_CLUSTER
