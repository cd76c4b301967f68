"""The Segment-compatible tracking API, through HTTP."""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest

from journeys.models import Customer, CustomerMerge, Event, Identity, QuarantinedEvent
from tests.factories import make_source

pytestmark = pytest.mark.django_db


def track(user="u1", name="Order Completed", **extra):
    return {"userId": user, "event": name, "properties": {"total": 120}, **extra}


@pytest.fixture
def strict(source):
    """The source is all or nothing: a bad event is a 400 for the whole request."""
    source.strict = True
    source.save()
    return source


def rejected_fields(response) -> list[str]:
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    return [r["field"] for r in body.get("rejected", [])]


def test_track_is_stored_with_customer(api):
    response = api.post("track", track(messageId="m-1"))

    assert response.status_code == 200
    assert response.json() == {"success": True}
    event = Event.objects.get()
    assert (event.type, event.name, event.message_id) == ("track", "Order Completed", "m-1")
    assert event.properties == {"total": 120}
    assert event.status == "pending"
    assert event.customer.external_id == "u1"
    assert Identity.objects.get(kind="user_id", value="u1").customer == event.customer


@pytest.mark.parametrize("kind", ["identify", "page", "screen", "group", "alias"])
def test_each_endpoint_stores_its_type(api, kind):
    body = {"userId": "u1", "anonymousId": "a1", "name": "Home", "groupId": "g1", "previousId": "a0", "traits": {"plan": "pro"}}

    response = api.post(kind, body)

    assert response.status_code == 200, response.content
    assert Event.objects.get().type == kind


def test_write_key_in_body_is_accepted(api, write_key):
    response = api.post("track", {**track(), "writeKey": write_key}, key=None)
    assert response.status_code == 200


def test_missing_or_wrong_key_is_401_and_stores_nothing(api):
    assert api.post("track", track(), key=None).status_code == 401
    assert api.post("track", track(), key="wk_wrong").status_code == 401
    assert api.post("track", {**track(), "writeKey": "nope"}, key=None).status_code == 401
    assert Event.objects.count() == 0


def test_a_host_this_server_does_not_answer_for_is_a_400_in_each_api_format(client, write_key):
    batch = json.dumps({"batch": [track()]})
    tracking = client.post("/v1/batch", batch, content_type="application/json", HTTP_HOST="n+5:05{")
    management = client.get("/api/v1/customers/", HTTP_HOST="evil.example")
    console = client.get("/admin/", HTTP_HOST="evil.example")

    assert tracking.status_code == 400
    assert tracking.json() == {"success": False, "code": "bad_host", "field": "Host",
                               "message": "Host: 'n+5:05{' is not a host this server answers for (ALLOWED_HOSTS)"}
    assert management.status_code == 400 and management.json()["field"] == "Host"
    assert console.status_code == 400 and b"Bad Request" in console.content
    assert Event.objects.count() == 0


def test_disabled_source_is_403(api, source):
    source.enabled = False
    source.save()
    response = api.post("track", track())
    assert response.status_code == 403
    assert "disabled" in response.json()["message"]
    assert Event.objects.count() == 0


def test_rotated_key_replaces_the_old_one(api, source, write_key):
    from journeys.services.sources import source_rotate_key

    new_key = source_rotate_key(source=source)

    assert api.post("track", track(), key=write_key).status_code == 401
    assert api.post("track", track(), key=new_key).status_code == 200


def test_write_key_is_stored_hashed(source, write_key):
    stored = json.dumps(list(type(source).objects.values()), default=str)
    assert write_key not in stored
    assert write_key not in json.dumps(list(source.history.values()), default=str)


def test_gzip_body_is_accepted(api):
    response = api.post("batch", {"batch": [{"type": "track", **track()}]}, gzip_body=True)
    assert response.status_code == 200
    assert Event.objects.count() == 1


def test_bad_gzip_is_400(api):
    response = api.post("track", None, raw=b"not gzip at all", headers={"HTTP_CONTENT_ENCODING": "gzip"})
    assert response.status_code == 400
    assert "gzip" in response.json()["message"]


def test_gzip_bomb_is_413_and_never_inflated_past_the_limit(api, settings):
    limit = settings.EVENT_API["MAX_BATCH_BYTES"]
    bomb = json.dumps({"batch": [], "pad": "x" * (64 * 1024 * 1024)}).encode()  # 64 MB, ~64 KB compressed

    tracemalloc.start()
    try:
        response = api.post("batch", None, raw=bomb, gzip_body=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert f"over the limit of {limit} bytes" in response.json()["message"]
    assert peak < len(bomb) + 2 * limit  # the bomb itself, and at most the limit (+1 byte) inflated


@pytest.mark.parametrize("unit", [b"{}", b'{"a":1}'])
def test_a_body_made_of_tiny_objects_is_refused_before_it_is_parsed(api, settings, unit):
    # given a batch under the size limit made only of tiny objects (browser write keys are
    # public: anyone can send it), which Python's parser would turn into a million dicts or more
    limit = settings.EVENT_API["MAX_BATCH_BYTES"]
    bomb = b'{"batch": [' + (unit + b",") * ((limit - 100) // (len(unit) + 1)) + b"{}]}"
    assert len(bomb) <= limit

    tracemalloc.start()
    try:
        response = api.post("batch", None, raw=bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # then it is a 413 saying why, and the request never held more than a few copies of the body
    assert response.status_code == 413, response.content
    assert peak < len(bomb) * 4, f"peak {peak / 1e6:.0f} MB"
    assert response.json()["field"] == "body"
    assert "JSON objects and arrays" in response.json()["message"]
    # while a batch of ordinary events as dense as real ones (products in an order) is read
    order = {"type": "track", "userId": "u1", "event": "Order Completed",
             "properties": {"products": [{"sku": f"s{i}", "qty": 1} for i in range(50)]}}
    assert api.post("batch", {"batch": [order] * 20}).status_code == 200


def test_event_over_32kb_is_413(api):
    response = api.post("track", track(properties={"blob": "x" * 33_000}))
    assert response.status_code == 413
    assert Event.objects.count() == 0


def rudder_python_batch() -> tuple[bytes, int]:
    """The largest batch rudder-sdk-python sends, as it sends it (json.dumps' own separators), and
    the index of its big event. The SDK takes events of up to 4 MiB (as json.dumps measures them)
    and closes a batch only once it holds 4 MiB, so the event that crosses 4 MiB may be a 4 MiB
    one: here events of ~31.6 KB up to just under 4 MiB, then one of exactly 4 MiB (over our 32 KB
    per event)."""
    mib4 = 4 * 1024 * 1024
    events: list[dict] = []
    size = 0
    while True:
        event = {"type": "track", **track(messageId=f"g-{len(events)}", properties={"blob": "x" * 31_500})}
        if size + len(json.dumps(event)) >= mib4:
            break
        events.append(event)
        size += len(json.dumps(event))
    big = {"type": "track", **track(messageId="big", properties={"blob": ""})}
    big["properties"]["blob"] = "b" * (mib4 - len(json.dumps(big)))
    assert len(json.dumps(big)) == mib4
    body = json.dumps({"batch": [*events, big], "sentAt": "2025-01-02T03:04:05.678901+00:00"}).encode()
    return body, len(events)


@pytest.mark.parametrize("gzip_body", [False, True], ids=["plain", "gzip"])
def test_the_largest_rudderstack_python_batch_stores_its_good_events_and_quarantines_the_big_one(api, gzip_body):
    body, big = rudder_python_batch()
    assert len(body) > 8 * 1024 * 1024 - 32 * 1024  # ~twice the 4 MiB the server took before (413 for all of it)

    response = api.post("batch", None, raw=body, gzip_body=gzip_body)

    assert response.status_code == 200, response.content[:300]
    [rejected] = response.json()["rejected"]
    assert (rejected["index"], rejected["field"], rejected["code"]) == (big, f"batch[{big}]", "too_large")
    assert Event.objects.count() == big  # every good event
    held = QuarantinedEvent.objects.get()
    assert (held.field, held.code, held.batch_index, held.message_id) == (f"batch[{big}]", "too_large", big, "big")


@pytest.mark.parametrize("gzip_body", [False, True], ids=["plain", "gzip"])
def test_a_batch_body_up_to_the_limit_is_taken_and_one_byte_more_is_413_naming_the_limit(api, settings, gzip_body):
    limit = settings.EVENT_API["MAX_BATCH_BYTES"]
    head = json.dumps({"batch": [{"type": "track", **track(messageId="edge")}], "pad": ""}).encode()
    body = head[:-2] + b"p" * (limit - len(head)) + b'"}'
    assert len(body) == limit

    assert api.post("batch", None, raw=body, gzip_body=gzip_body).json() == {"success": True}

    response = api.post("batch", None, raw=body[:-2] + b'p"}', gzip_body=gzip_body)
    assert response.status_code == 413
    message = response.json()["message"]
    assert response.json()["code"] == "too_large" and "limit" in message and f"{limit} bytes" in message
    assert Event.objects.count() == 1


def test_gzip_batch_of_4mb_is_stored_and_a_bomb_is_cut_off(api):
    batch = [{"type": "track", **track(messageId=f"gz-{i}", properties={"blob": "y" * 31_000})} for i in range(130)]
    assert api.post("batch", {"batch": batch}, gzip_body=True).json() == {"success": True}
    assert Event.objects.count() == 130

    bomb = b'{"batch": [], "pad": "' + b"z" * (16 * 1024 * 1024) + b'"}'  # 16 MB that compresses to ~16 KB
    response = api.post("batch", None, raw=bomb, gzip_body=True)
    assert response.status_code == 413
    assert "decompressed" in response.json()["message"]


def test_batch_over_2500_events_is_413(api):
    batch = [{"type": "track", "userId": "u", "event": "E"} for _ in range(2501)]
    response = api.post("batch", {"batch": batch})
    assert response.status_code == 413
    assert "2500" in response.json()["message"]
    assert Event.objects.count() == 0


def test_one_event_over_32kb_in_a_batch_is_quarantined(api):
    batch = [{"type": "track", **track()}, {"type": "track", **track(properties={"b": "x" * 33_000})}]
    response = api.post("batch", {"batch": batch})
    assert rejected_fields(response) == ["batch[1]"]
    assert response.json()["rejected"][0]["code"] == "too_large"
    assert Event.objects.count() == 1


def test_one_event_over_32kb_in_a_strict_batch_is_413_naming_its_index(api, strict):
    batch = [{"type": "track", **track()}, {"type": "track", **track(properties={"b": "x" * 33_000})}]
    response = api.post("batch", {"batch": batch})
    assert response.status_code == 413
    assert response.json()["field"] == "batch[1]"
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"{not json", "malformed JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'{"userId": "u", "event": "E", "properties": {"x": NaN}}', "NaN"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, ""),
    ],
)
def test_malformed_bodies_are_4xx(api, raw, needle):
    response = api.post("batch" if len(raw) > 1000 else "track", None, raw=raw)
    assert response.status_code in (400, 413)
    assert needle in response.json()["message"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"event": "E"}, "userId"),
        ({"userId": "u"}, "event"),
        ({"userId": "u", "event": ""}, "event"),
        ({"userId": "u", "event": 5}, "event"),
        ({"userId": "u", "event": "E", "timestamp": "yesterday"}, "timestamp"),
        ({"userId": "u", "event": "E", "sentAt": 12}, "sentAt"),
        ({"userId": "u", "event": "E", "properties": [1]}, "properties"),
        ({"userId": {"a": 1}, "event": "E"}, "userId"),
        ({"userId": "u", "event": "E", "properties": {"t": "bad\u0000null"}}, "properties.t"),
        ({"userId": "u", "event": "E", "messageId": "x" * 300}, "messageId"),
        ({"userId": "u", "event": "E", "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"}, "timestamp"),
    ],
)
def test_invalid_track_names_the_field(api, strict, body, field):
    response = api.post("track", body)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["message"]
    assert Event.objects.count() == 0


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z"])
def test_an_unset_client_clock_dates_the_event_by_its_receipt(api, stamp):
    before = datetime.now(timezone.utc)
    response = api.post("track", {"userId": "zero", "event": "E", "timestamp": stamp})
    assert response.status_code == 200, response.json()
    event = Event.objects.get()
    assert event.timestamp >= before - timedelta(seconds=1)
    assert event.original_timestamp.year in (1, 1970)  # what the client said is kept
    assert event.customer.first_seen >= before - timedelta(seconds=1)


def test_text_that_spells_a_nul_escape_is_stored_as_written(api):
    snippet = 'printf("\\u0000"); path C:\\\\u0000'  # backslash-u-0000 as characters, no NUL in it
    response = api.post("track", {"userId": "u", "event": "E", "properties": {"snippet": snippet}})
    assert response.status_code == 200 and not response.json().get("rejected"), response.json()
    assert Event.objects.get().properties["snippet"] == snippet


def test_invalid_track_of_a_lenient_source_is_quarantined_naming_the_field(api):
    response = api.post("track", {"userId": "u", "event": "E", "timestamp": "yesterday"})

    assert rejected_fields(response) == ["timestamp"]
    assert response.json()["rejected"][0]["message"].startswith("timestamp: cannot parse")
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "kind, raw, field",
    [
        ("track", b'{"userId": "u", "event": "E", "properties": {"t": 1e999}}', "properties.t"),
        ("identify", b'{"userId": "u", "traits": {"score": {"history": [1, -1e400]}}}', "traits.score.history[1]"),
        ("page", b'{"anonymousId": "a", "name": "Home", "context": {"screen": {"density": 2E+999}}}',
         "context.screen.density"),
    ],
)
def test_number_out_of_range_is_400_naming_its_path(api, strict, kind, raw, field):
    # 1e999 is valid JSON syntax but overflows to infinity, which no JSON column can store:
    # a retryable 503 (PostgreSQL) or a silent drop (SQLite) would leave the client retrying forever.
    response = api.post(kind, None, raw=raw)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["message"].startswith(f"{field}: is not a finite number")
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "extra, field",
    [
        (b'', "batch[1].properties.t"),
        (b', "context": {"app": {"build": 1e999}}', "context.app.build"),
    ],
)
def test_number_out_of_range_in_a_strict_batch_names_its_index(api, strict, extra, field):
    good = b'{"type": "track", "userId": "u", "event": "E", "messageId": "ok-%d", "properties": {"t": 1.5}}'
    bad = b'{"type": "track", "userId": "u", "event": "E", "properties": {"t": 1e999}}' if not extra else good % 1
    raw = b'{"batch": [' + good % 0 + b", " + bad + b"]" + extra + b"}"

    response = api.post("batch", None, raw=raw)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert Event.objects.count() == 0 and Customer.objects.count() == 0


def test_number_out_of_range_in_a_batch_quarantines_the_event_but_in_the_batch_context_refuses_the_request(api):
    good = b'{"type": "track", "userId": "u", "event": "E", "messageId": "ok-%d", "properties": {"t": 1.5}}'
    bad = b'{"type": "track", "userId": "u", "event": "E", "properties": {"t": 1e999}}'

    response = api.post("batch", None, raw=b'{"batch": [' + good % 0 + b", " + bad + b"]}")
    assert rejected_fields(response) == ["batch[1].properties.t"]
    assert Event.objects.count() == 1

    response = api.post("batch", None, raw=b'{"batch": [' + good % 2 + b'], "context": {"app": {"build": 1e999}}}')
    assert response.status_code == 400
    assert response.json()["field"] == "context.app.build"
    assert Event.objects.count() == 1


def test_a_value_the_database_refuses_is_an_error_not_a_duplicate(source):
    """Should a value slip past validation, the insert fails loudly: only a repeated
    messageId may be skipped (SQLite's INSERT OR IGNORE used to count such an event as a duplicate)."""
    from django.db import DatabaseError
    from django.utils import timezone as dj_timezone

    from journeys.services.ingest import event_ingest, events_parse

    events = events_parse(payloads=[track(messageId="m-inf")], received_at=dj_timezone.now(), event_type="track")
    events[0].properties = {"t": float("inf")}

    with pytest.raises(DatabaseError):
        event_ingest(source=source, events=events)
    assert Event.objects.count() == 0


def test_alias_needs_previous_id(api, strict):
    response = api.post("alias", {"userId": "u"})
    assert response.status_code == 400
    assert response.json()["field"] == "previousId"


@pytest.mark.parametrize(
    "item, field",
    [
        ({"type": "explode", "userId": "u"}, "batch[1].type"),
        ({"type": ["track"], "userId": "u", "event": "E"}, "batch[1].type"),
        ({"userId": "u", "event": "E"}, "batch[1].type"),
        ({"type": "track", "anonymousId": "a"}, "batch[1].event"),
        ({"type": "track", "event": "E"}, "batch[1].userId"),
        ({"type": "track", "userId": "u", "event": "E", "timestamp": "2024-13-45"}, "batch[1].timestamp"),
        ("just a string", "batch[1]"),
    ],
)
def test_bad_event_rejects_the_whole_strict_batch_naming_its_index(api, strict, item, field):
    batch = [{"type": "track", **track(messageId="ok-0")}, item, {"type": "track", **track(messageId="ok-2")}]

    response = api.post("batch", {"batch": batch})

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["message"].startswith(field)
    assert Event.objects.count() == 0
    assert Customer.objects.count() == 0


@pytest.mark.parametrize(
    "item, field",
    [
        ({"type": "explode", "userId": "u"}, "batch[1].type"),
        ({"type": "track", "anonymousId": "a"}, "batch[1].event"),
        ({"type": "track", "userId": "u", "event": "x" * 300}, "batch[1].event"),
        ("just a string", "batch[1]"),
    ],
)
def test_bad_event_is_quarantined_and_the_rest_of_the_batch_stored(api, item, field):
    batch = [{"type": "track", **track(messageId="ok-0")}, item, {"type": "track", **track(messageId="ok-2")}]

    response = api.post("batch", {"batch": batch})

    assert rejected_fields(response) == [field]
    assert response.json()["rejected"][0]["index"] == 1
    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["ok-0", "ok-2"]
    from journeys.models import QuarantinedEvent

    entry = QuarantinedEvent.objects.get()
    assert (entry.field, entry.batch_index, json.loads(entry.payload)) == (field, 1, item)


@pytest.mark.parametrize("body, field", [({}, "batch"), ({"batch": {}}, "batch"), ({"batch": []}, "batch"),
                                         ({"batch": [track()], "context": "x"}, "context")])
def test_batch_shape_errors(api, body, field):
    response = api.post("batch", body)
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_repeated_message_id_is_accepted_and_stored_once(api):
    assert api.post("track", track(messageId="dup")).status_code == 200
    assert api.post("track", track(messageId="dup")).status_code == 200
    batch = [{"type": "track", **track(messageId="dup")}, {"type": "track", **track(messageId="dup2")},
             {"type": "track", **track(messageId="dup2")}]
    assert api.post("batch", {"batch": batch}).status_code == 200

    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["dup", "dup2"]


def test_message_id_stored_by_a_concurrent_request_is_skipped_by_the_insert(api, source):
    """Between the duplicate check and the insert another request may store the same messageId:
    the insert skips that row and returns the ids of the new events only."""
    from journeys.services.bulk_ingest import events_insert

    api.post("track", track(messageId="taken"))
    now = datetime.now(timezone.utc)
    row = {"source_id": source.pk, "type": "track", "name": "E", "customer_id": Event.objects.get().customer_id,
           "timestamp": now, "received_at": now}

    ids = events_insert([{**row, "message_id": "taken"}, {**row, "message_id": "new"}])

    assert ids == [Event.objects.get(message_id="new").pk]
    assert Event.objects.count() == 2


def test_same_message_id_from_two_sources_is_two_events(api):
    _, other_key = make_source("mobile")
    api.post("track", track(messageId="same"))
    api.post("track", track(messageId="same"), key=other_key)
    assert Event.objects.count() == 2


def test_missing_message_id_is_assigned(api):
    api.post("track", track())
    assert Event.objects.get().message_id.startswith("jc-")


def test_batch_context_and_integrations_merge_into_each_event(api):
    body = {
        "batch": [
            {"type": "track", **track(), "context": {"device": {"type": "mobile"}}},
            {"type": "track", **track(), "context": {"ip": "10.0.0.2"}},
        ],
        "context": {"ip": "10.0.0.1", "library": {"name": "analytics-python"}},
        "integrations": {"All": True},
    }
    assert api.post("batch", body).status_code == 200

    first, second = Event.objects.order_by("id")
    assert first.context == {"ip": "10.0.0.1", "library": {"name": "analytics-python"}, "device": {"type": "mobile"}}
    assert second.context["ip"] == "10.0.0.2"
    assert first.integrations == {"All": True}


def test_timestamp_is_corrected_for_client_clock_skew(api):
    # The client's clock is one hour behind: it says it sent at 10:00:05 an event from 10:00:00.
    client_now = datetime.now(timezone.utc) - timedelta(hours=1)
    body = track(timestamp=(client_now - timedelta(seconds=5)).isoformat(), sentAt=client_now.isoformat())

    api.post("track", body)

    event = Event.objects.get()
    assert abs((event.received_at - event.timestamp) - timedelta(seconds=5)) < timedelta(seconds=1)
    assert event.original_timestamp < event.timestamp


def test_timestamp_with_a_far_offset_is_stored_in_utc(api):
    assert api.post("track", track(timestamp="2024-05-01T12:00:00-17:34")).status_code == 200
    assert Event.objects.get().timestamp == datetime(2024, 5, 2, 5, 34, tzinfo=timezone.utc)


def test_timestamp_without_sent_at_is_kept(api):
    api.post("track", track(timestamp="2024-05-01T12:00:00Z"))
    assert Event.objects.get().timestamp == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def test_rate_limit_per_source_answers_429_with_retry_after(api, source, settings):
    source.rate_limit = 2
    source.save()
    assert api.post("track", track()).status_code == 200
    assert api.post("track", track()).status_code == 200

    response = api.post("track", track())

    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert Event.objects.count() == 2


def test_other_sources_are_not_limited_by_a_busy_one(api, source):
    source.rate_limit = 1
    source.save()
    _, other_key = make_source("other")
    api.post("track", track())
    assert api.post("track", track()).status_code == 429
    assert api.post("track", track(), key=other_key).status_code == 200


def test_get_is_not_allowed(api):
    assert api.client.get("/v1/track").status_code == 405


def basic(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def test_a_body_of_a_type_the_api_does_not_read_is_a_415_naming_it(api, write_key):
    # given the same track call sent as a multipart form and as a urlencoded form
    auth = basic(write_key)
    multipart = api.client.post("/v1/track", {"userId": "u1", "event": "Form"}, HTTP_AUTHORIZATION=auth)
    form = api.client.generic("POST", "/v1/track", "userId=u1&event=Form",
                              content_type="application/x-www-form-urlencoded", HTTP_AUTHORIZATION=auth)

    # then each is a 415 that names its content type, in the API's error format, and nothing is stored
    assert multipart.status_code == 415, multipart.content
    assert multipart.json()["success"] is False and multipart.json()["code"] == "unsupported_media_type"
    assert multipart.json()["field"] == "Content-Type" and "'multipart/form-data'" in multipart.json()["message"]
    assert form.status_code == 415 and "'application/x-www-form-urlencoded'" in form.json()["message"]
    assert not Event.objects.exists()


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "text/plain;charset=UTF-8", ""])
def test_json_as_application_json_or_text_plain_or_without_a_type_is_read(client, write_key, content_type):
    # ("": no Content-Type at all; analytics.js and beacons send text/plain, server SDKs application/json)
    body = json.dumps({**track(), "writeKey": write_key})
    response = client.generic("POST", "/v1/track", body, content_type=content_type)
    assert response.status_code == 200, response.content
    assert Event.objects.count() == 1


def test_gzip_json_labelled_as_a_form_is_read_as_rudderstacks_node_sdk_sends_it(api, write_key):
    # rudder-sdk-node posts gzip JSON with axios's default type for a buffer (tests/clients/node)
    body = gzip.compress(json.dumps({"batch": [{"type": "track", **track()}]}).encode())
    response = api.client.generic("POST", "/v1/batch", body, content_type="application/x-www-form-urlencoded",
                                  HTTP_CONTENT_ENCODING="gzip",
                                  HTTP_AUTHORIZATION=basic(write_key))
    assert response.status_code == 200, response.content
    assert Event.objects.count() == 1


def test_an_accept_header_the_api_cannot_satisfy_is_a_406_in_its_error_format(api):
    response = api.post("track", track(), headers={"HTTP_ACCEPT": "application/xml"})

    assert response.status_code == 406
    assert response.json() == {"success": False, "code": "not_acceptable",
                               "message": "Could not satisfy the request Accept header."}
    assert not Event.objects.exists()
