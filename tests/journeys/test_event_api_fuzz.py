"""Property-based tests of the tracking API: whatever arrives, never a 500; a lenient source stores
the good events and quarantines each bad one, a strict one stores all or nothing."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from journeys.models import Customer, Event, QuarantinedEvent

pytestmark = pytest.mark.django_db

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
maybe_id = st.one_of(st.none(), st.text(max_size=20), st.integers(), json_value)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "bogus", 7]),
        "userId": maybe_id, "anonymousId": maybe_id, "event": maybe_id, "previousId": maybe_id, "groupId": maybe_id,
        "messageId": maybe_id, "properties": json_value, "traits": json_value, "context": json_value,
        "timestamp": st.one_of(st.text(max_size=25), st.datetimes().map(lambda d: d.isoformat()), json_value),
        "sentAt": st.one_of(st.none(), st.text(max_size=25)),
    },
)


def as_json(body) -> bytes:
    """The body as a client sends it: an infinite float goes out as 1e999 (valid JSON syntax
    that overflows on parsing), not as the Infinity literal the parser refuses outright."""
    return json.dumps(body).replace("Infinity", "1e999").encode()


def has_infinity(value) -> bool:
    if isinstance(value, float):
        return math.isinf(value)
    if isinstance(value, dict):
        return any(has_infinity(v) for v in value.values())
    return isinstance(value, list) and any(has_infinity(v) for v in value)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(body=st.one_of(event_like, json_value))
def test_track_never_500_and_stores_or_quarantines(api, body):
    before, held = Event.objects.count(), QuarantinedEvent.objects.count()
    response = api.post("track", None, raw=as_json(body))
    assert response.status_code in (200, 400, 413), response.content
    stored = Event.objects.count() - before
    if response.status_code == 200:
        rejected = response.json().get("rejected", [])
        if isinstance(body, dict) and has_infinity(body):
            assert "finite" in rejected[0]["message"]
        assert stored + len(rejected) <= 1  # neither for a repeated messageId or content
        assert QuarantinedEvent.objects.count() - held <= len(rejected)
    else:
        assert stored == 0 and "message" in response.json()


@FUZZ
@given(batch=st.lists(event_like, min_size=1, max_size=8))
def test_batch_stores_the_good_and_quarantines_the_bad(api, batch):
    before_events, before_held = Event.objects.count(), QuarantinedEvent.objects.count()
    response = api.post("batch", None, raw=as_json({"batch": batch}))
    assert response.status_code in (200, 400, 413), response.content
    if response.status_code != 200:  # only errors of the whole request
        assert Event.objects.count() == before_events
        assert response.json()["field"] in ("batch", "context", "integrations")
        return
    rejected = response.json().get("rejected", [])
    indexes = [r["index"] for r in rejected]
    assert indexes == sorted(set(indexes)) and all(0 <= i < len(batch) for i in indexes)
    assert all(r["field"].startswith(f"batch[{r['index']}]") and r["message"] for r in rejected)
    assert all(i in indexes for i, item in enumerate(batch) if has_infinity(item))
    assert Event.objects.count() - before_events <= len(batch) - len(rejected)
    assert QuarantinedEvent.objects.count() - before_held <= len(rejected)


@FUZZ
@given(batch=st.lists(event_like, min_size=1, max_size=8))
def test_strict_batch_is_all_or_nothing(api, source, batch):
    source.strict = True
    source.save()
    before_events, before_customers = Event.objects.count(), Customer.objects.count()
    response = api.post("batch", None, raw=as_json({"batch": batch}))
    assert response.status_code in (200, 400, 413), response.content
    if has_infinity(batch):
        assert response.status_code != 200
    if response.status_code != 200:
        assert Event.objects.count() == before_events
        assert Customer.objects.count() == before_customers
        assert response.json()["field"].startswith("batch")


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_get_a_clear_4xx(api, raw):
    response = api.post("batch", None, raw=raw)
    assert response.status_code in (400, 413)
    assert response.json()["success"] is False


def test_deeply_nested_payload_is_400(api):
    nested: dict = {}
    node = nested
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    raw = json.dumps({"userId": "u", "event": "E", "properties": {"x": 1}}).encode()[:-1] + b', "deep": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}"
    response = api.post("batch", None, raw=raw)
    assert response.status_code in (400, 413)


def test_wrong_content_encoding_is_415(api):
    response = api.post("track", {"userId": "u", "event": "E"}, headers={"HTTP_CONTENT_ENCODING": "br"})
    assert response.status_code == 415
