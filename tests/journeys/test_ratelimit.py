"""The shared rate limit: one count for every process (database upsert, or Redis when configured)."""

from __future__ import annotations

import base64
import http.client
import json

import pytest
from django.db import connection

from journeys.models import Event, RateCounter
from journeys.services.ratelimit import rate_limit_hit, rate_counters_purge
from tests.factories import make_source
from tests.proc import RedisServer, WebServer, database_url, redis_server_missing, server_env

pytestmark = pytest.mark.django_db

T0 = 1_700_000_040  # a multiple of 60: the start of a minute window


def test_hits_are_allowed_up_to_the_limit_then_refused_until_the_window_ends():
    decisions = [rate_limit_hit(key="source:1", limit=3, window_s=60, now=T0 + 15) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after == 45  # seconds left in the window
    assert rate_limit_hit(key="source:1", limit=3, window_s=60, now=T0 + 60).allowed  # next window


def test_keys_are_counted_apart():
    assert rate_limit_hit(key="source:1", limit=1, window_s=60, now=T0).allowed
    assert not rate_limit_hit(key="source:1", limit=1, window_s=60, now=T0).allowed
    assert rate_limit_hit(key="token:1", limit=1, window_s=60, now=T0).allowed


def test_a_new_window_deletes_the_keys_finished_ones_and_purge_clears_idle_keys():
    for minute in range(5):
        rate_limit_hit(key="source:1", limit=10, window_s=60, now=T0 + 60 * minute)
    rate_limit_hit(key="source:2", limit=10, window_s=60, now=T0)

    assert list(RateCounter.objects.filter(key="source:1").values_list("window_start", flat=True)) == [T0 + 240]
    assert rate_counters_purge(now=T0 + 3600) == 2
    assert not RateCounter.objects.exists()


def test_nonsense_limits_are_refused():
    with pytest.raises(ValueError):
        rate_limit_hit(key="k", limit=0, window_s=60)
    with pytest.raises(ValueError):
        rate_limit_hit(key="k" * 200, limit=1, window_s=60)


@pytest.mark.skipif(bool(redis_server_missing()), reason=redis_server_missing() or "")
def test_with_redis_configured_the_count_lives_in_redis(settings):
    with RedisServer() as redis:
        settings.REDIS_URL = redis.url
        decisions = [rate_limit_hit(key="source:9", limit=2, window_s=60, now=T0 + 50) for _ in range(3)]

    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[-1].retry_after == 10
    assert not RateCounter.objects.exists()  # nothing counted in the database


def test_unreachable_redis_falls_back_to_the_database(settings):
    from tests.proc import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there

    assert rate_limit_hit(key="source:3", limit=1, window_s=60, now=T0).allowed
    assert not rate_limit_hit(key="source:3", limit=1, window_s=60, now=T0).allowed
    assert RateCounter.objects.get(key="source:3").hits == 2


# -- two real web servers share the count -------------------------------------------------------------


def _post(port: int, key: str, n: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"userId": "u1", "event": "Ping", "messageId": f"rl-{port}-{n}"})
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        conn.request("POST", "/v1/track", body=body, headers={"Authorization": auth, "Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status == 429:
            assert int(response.getheader("Retry-After")) >= 1
        return response.status
    finally:
        conn.close()


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="web processes share the test database: PostgreSQL only")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("backend", ["database", "redis"])
def test_two_gunicorn_processes_share_one_limit(backend):
    """Given a source allowed 6 requests a window and two separate gunicorn servers (two machines
    behind a load balancer), when 16 requests alternate between them, then exactly 6 are stored
    and the rest get 429 with Retry-After (the per-process cache used to admit 6 on each)."""
    if backend == "redis" and redis_server_missing():
        pytest.skip(redis_server_missing())
    _source, key = make_source("shared-limit", rate_limit=6)
    redis = RedisServer().start() if backend == "redis" else None
    extra = {"EVENT_API_RATE_WINDOW": "1000000000"}  # one window for the whole test (no reset midway)
    if redis:
        extra.update(REDIS_URL=redis.url, Q_BROKER="orm")
    env = server_env(database_url(connection.settings_dict), **extra)
    try:
        with WebServer(env=env, workers=1, name="rl-a") as a, WebServer(env=env, workers=1, name="rl-b") as b:
            statuses = [_post((a, b)[n % 2].port, key, n) for n in range(16)]
    finally:
        if redis:
            redis.close()

    assert statuses.count(200) == 6 and statuses.count(429) == 10, statuses
    assert Event.objects.count() == 6
    assert RateCounter.objects.exists() is (backend == "database")
