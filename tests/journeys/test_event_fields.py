"""Every field a client sends is kept; the sender's address; nesting and batch-level defaults checked."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from journeys.models import Event, QuarantinedEvent
from journeys.rules import RuleContext, compile_rule
from journeys.engine.runtime import event_dict

pytestmark = pytest.mark.django_db

# What analytics-python / RudderStack's SDKs put on the wire, plus fields nobody here knows.
SCREEN = {
    "type": "screen", "userId": "u1", "name": "Checkout", "category": "Shop", "messageId": "s-1",
    "timestamp": "2024-05-01T12:00:05Z", "originalTimestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:06Z",
    "channel": "mobile", "version": 2, "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
    "rudderId": "f1c0a2", "request_ip": "10.9.8.7", "properties": {"step": 2}, "context": {"app": {"build": "42"}},
}


def test_every_field_is_kept_and_rules_can_read_them(api):
    alias = {"type": "alias", "userId": "u1", "previousId": "anon-1", "messageId": "a-1"}
    group = {"type": "group", "userId": "u1", "groupId": "acme", "traits": {"plan": "pro"}, "messageId": "g-1"}

    response = api.post("batch", {"batch": [SCREEN, alias, group]})

    assert response.json() == {"success": True}
    screen = Event.objects.get(message_id="s-1")
    assert (screen.name, screen.category, screen.channel, screen.version) == ("Checkout", "Shop", "mobile", "2")
    assert screen.metadata == {"bundled": ["Segment.io"], "unbundled": []}
    assert screen.other == {"rudderId": "f1c0a2", "request_ip": "10.9.8.7"}
    assert screen.original_timestamp == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)  # beside timestamp
    assert Event.objects.get(message_id="a-1").previous_id == "anon-1"
    assert Event.objects.get(message_id="g-1").group_id == "acme"

    rule = ("event.category == 'Shop' and event.channel == 'mobile' and event.other.rudderId == 'f1c0a2'"
            " and event.metadata.bundled[0] == 'Segment.io' and event.version == '2'")
    result = compile_rule(rule).evaluate(RuleContext(event=event_dict(screen)))
    assert result.value is True, result.error


def test_the_write_key_in_a_body_is_never_stored(api, write_key):
    api.post("track", {"userId": "u", "event": "E", "writeKey": write_key, "extra": 1}, key=None)
    assert Event.objects.get().other == {"extra": 1}


@pytest.mark.parametrize(
    "trusted, remote, forwarded, expected",
    [
        ([], "203.0.113.5", "198.51.100.1", "203.0.113.5"),  # no trusted proxy: the header is ignored
        (["10.0.0.0/8"], "203.0.113.5", "198.51.100.1", "203.0.113.5"),  # not from the proxy: ignored
        (["10.0.0.0/8"], "10.0.0.2", "198.51.100.1", "198.51.100.1"),
        (["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.9", "198.51.100.1"),  # forged left part unused
        (["10.0.0.0/8", "::1"], "::1", "2001:db8::7", "2001:db8::7"),
        (["10.0.0.0/8"], "10.0.0.2", "not-an-ip", "10.0.0.2"),
        # a host name (journeys.E004 refuses it at every manage.py command) is trusted for nothing,
        # the other entries still are; before, every request failed (500, ValueError)
        (["lb.internal", "10.0.0.0/8"], "10.0.0.2", "198.51.100.1", "198.51.100.1"),
        (["lb.internal"], "10.0.0.2", "198.51.100.1", "10.0.0.2"),
    ],
)
def test_sender_address_honours_only_trusted_proxies(api, settings, trusted, remote, forwarded, expected):
    settings.TRUSTED_PROXIES = trusted

    api.post("track", {"userId": "u", "event": "E"}, headers={"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": forwarded})

    assert Event.objects.get().ip == expected


def test_an_events_context_ip_is_its_address_as_segment_records_it(api):
    # a server-side SDK names its user's address; the request comes from the customer's server
    batch = [
        {"type": "track", "userId": "u", "event": "Own", "context": {"ip": "203.0.113.9"}},
        {"type": "track", "userId": "u", "event": "Batch"},  # the batch-level context's
        {"type": "track", "userId": "u", "event": "Mapped", "context": {"ip": "::ffff:198.51.100.3"}},
        {"type": "track", "userId": "u", "event": "V6", "context": {"ip": "2001:db8::7"}},
        {"type": "track", "userId": "u", "event": "Junk", "context": {"ip": "not-an-ip"}},
        {"type": "track", "userId": "u", "event": "Zone", "context": {"ip": "fe80::1%eth0"}},
        {"type": "track", "userId": "u", "event": "Number", "context": {"ip": 12}},
    ]
    response = api.post("batch", {"batch": batch, "context": {"ip": "192.0.2.1"}}, headers={"REMOTE_ADDR": "10.1.1.1"})

    assert response.json() == {"success": True}
    assert dict(Event.objects.values_list("name", "ip")) == {
        "Own": "203.0.113.9", "Batch": "192.0.2.1", "Mapped": "198.51.100.3", "V6": "2001:db8::7",
        "Junk": "10.1.1.1", "Zone": "10.1.1.1", "Number": "10.1.1.1"}
    assert Event.objects.get(name="Junk").context["ip"] == "not-an-ip"  # kept as sent


def test_quarantined_event_keeps_the_address_too(api):
    api.post("track", {"userId": "u"}, headers={"REMOTE_ADDR": "192.0.2.44"})
    assert QuarantinedEvent.objects.get().ip == "192.0.2.44"


def nested(levels: int, leaf=1) -> dict:
    node = leaf
    for _ in range(levels):
        node = {"a": node}
    return node


def test_nesting_is_capped_at_64_levels(api):
    # The event is level 1, its properties object level 2: 63 objects deep from there fit, 64 do not.
    ok = {"userId": "u", "event": "E", "messageId": "ok", "properties": nested(63)}
    deep = {"userId": "u", "event": "E", "messageId": "deep", "properties": nested(64)}

    assert api.post("track", ok).json() == {"success": True}
    answer = api.post("track", deep).json()

    assert answer["rejected"][0]["code"] == "too_deep"
    assert answer["rejected"][0]["field"] == "properties" + ".a" * 63
    assert list(Event.objects.values_list("message_id", flat=True)) == ["ok"]


def test_nesting_in_a_strict_batch_is_a_400_naming_index_and_field(api, source):
    source.strict = True
    source.save()
    batch = [{"type": "identify", "userId": "u", "traits": {"ok": 1}},
             {"type": "identify", "userId": "u", "traits": nested(900)}]  # what broke the admin pages

    response = api.post("batch", {"batch": batch})

    assert response.status_code == 400
    assert response.json()["code"] == "too_deep"
    assert response.json()["field"].startswith("batch[1].traits.a.a")
    assert Event.objects.count() == 0


def test_a_body_too_deep_for_the_parser_is_a_400_naming_where(api):
    raw = ('{"batch": [{"type": "track", "userId": "u", "event": "E"}, {"type": "track", "userId": "u",'
           ' "event": "E", "properties": {"x": ' + "[" * 50_000 + "]" * 50_000 + "}}]}")

    response = api.post("batch", None, raw=raw.encode())

    assert response.status_code == 400
    assert response.json()["code"] == "too_deep"
    assert response.json()["field"].startswith("batch[1].properties.x[0][0]")
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "defaults, field, status",
    [
        ({"context": {"note": "nul\u0000"}}, "context", 400),
        ({"integrations": {"x": "\ud800"}}, "integrations", 400),
        ({"context": nested(64)}, "context.a", 400),
        ({"context": {"pad": "x" * 33_000}}, "context", 413),
        ({"sentAt": "soon"}, "sentAt", 400),
    ],
)
def test_a_bad_batch_level_field_refuses_the_whole_request_naming_it(api, defaults, field, status):
    raw = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}], **defaults}, ensure_ascii=True)

    response = api.post("batch", None, raw=raw.encode())

    assert response.status_code == status
    assert response.json()["field"].startswith(field)
    assert Event.objects.count() == QuarantinedEvent.objects.count() == 0


def test_each_event_is_checked_after_the_batch_context_is_merged(api):
    # 20 KB of batch context + an event with 20 KB of its own is over 32 KB once merged: quarantined.
    batch = [{"type": "track", "userId": "u", "event": "E", "messageId": "small"},
             {"type": "track", "userId": "u", "event": "E", "messageId": "big", "context": {"own": "y" * 20_000}}]

    answer = api.post("batch", {"batch": batch, "context": {"pad": "x" * 20_000}}).json()

    assert [(r["field"], r["code"]) for r in answer["rejected"]] == [("batch[1]", "too_large")]
    stored = Event.objects.get()
    assert stored.message_id == "small" and len(stored.context["pad"]) == 20_000
    assert json.loads(QuarantinedEvent.objects.get().defaults)["context"]["pad"] == "x" * 20_000


def test_batch_context_cannot_multiply_what_a_request_stores(api):
    # The 139 KB request: 30 KB of context merged into 2,500 tiny events would store 75 MB.
    batch = [{"type": "track", "userId": "u", "event": "E"} for _ in range(2500)]

    response = api.post("batch", {"batch": batch, "context": {"pad": "x" * 30_000}})

    assert response.status_code == 413
    assert response.json()["field"] == "context"
    assert Event.objects.count() == 0
