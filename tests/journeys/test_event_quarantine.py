"""The event quarantine: a bad event is kept aside, listed in the admin, fixed, replayed or discarded."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from journeys.models import BusinessUnit, Customer, Event, QuarantinedEvent
from journeys.services.quarantine import quarantine_discard, quarantine_replay
from journeys.services.quarantine_store import quarantine_purge
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import make_source
from tests.journeys.test_governance_fixtures import login, people, units  # noqa: F401

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:journeys_quarantinedevent_changelist"


def good(mid: str, **extra) -> dict:
    return {"type": "track", "userId": "ada", "event": "Order Completed", "messageId": mid,
            "properties": {"total": 12}, **extra}


@pytest.fixture
def tagging_workflow(db):
    """A live workflow that tags whoever completes an order (so 'processed' is visible on the profile)."""
    unit = BusinessUnit.objects.create(name="Q", slug="q")
    workflow = workflow_create(name="tag orders", business_unit=unit)
    definition = {"trigger_event": "Order Completed", "reentry": "always",
                  "steps": [{"key": "tag", "kind": "update_profile", "config": {"traits": {"ordered": True}}}],
                  "edges": []}
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def post_batch(api, capture, batch, **extra):
    with capture(execute=True):
        response = api.post("batch", {"batch": batch, **extra})
    assert response.status_code == 200, response.content
    return response.json()


def test_bad_event_round_trip_list_filter_fix_replay(
    api, source, people, client, tagging_workflow, django_capture_on_commit_callbacks,  # noqa: F811
):
    # Given a batch of two good events and one whose name is 300 characters long
    body = post_batch(api, django_capture_on_commit_callbacks,
                      [good("m-1"), good("m-2", event="x" * 300), good("m-3")],
                      context={"library": {"name": "analytics-python"}})
    assert body["rejected"] == [{"index": 1, "field": "batch[1].event", "code": "invalid_event",
                                 "message": "batch[1].event: is longer than 255 characters"}]
    assert sorted(Event.objects.filter(source=source).values_list("message_id", flat=True)) == ["m-1", "m-3"]
    _other, other_key = make_source("mobile")
    api.post("track", {"userId": "bob"}, key=other_key)  # another source's bad event (no name)

    # When ops list the quarantine, filtered by source and by reason
    ops = login(client, people["ops"])
    listing = ops.get(reverse(CHANGELIST), {"source__id__exact": source.pk, "code__exact": "invalid_event"})
    assert listing.status_code == 200
    entry = QuarantinedEvent.objects.get(source=source)
    assert f"/{entry.pk}/change/" in listing.text and "batch[1].event" in listing.text
    assert QuarantinedEvent.objects.filter(source__name="mobile").count() == 1
    assert "m-2" not in ops.get(reverse(CHANGELIST), {"source__id__exact": _other.pk}).text
    assert ops.get(reverse(CHANGELIST), {"code__exact": "schema"}).text.count("/change/") == 0

    # ... a fix that is still wrong is refused with the field named, nothing changes
    change = reverse("admin:journeys_quarantinedevent_change", args=[entry.pk])
    page = ops.get(change)
    assert page.status_code == 200 and "Save and replay" in page.text
    still_bad = json.dumps(good("m-2", event=""))
    response = ops.post(change, {"payload": still_bad, "change_reason": "shorten the name"})
    assert response.status_code == 200 and "event: is required for track events" in response.text
    assert QuarantinedEvent.objects.get(pk=entry.pk).payload == entry.payload

    # ... then a right one is saved and replayed
    with django_capture_on_commit_callbacks(execute=True):
        response = ops.post(change, {"payload": json.dumps(good("m-2", event="Order Completed")),
                                     "change_reason": "name was a stack trace", "_replay": "1"})
    assert response.status_code == 302

    # Then the event is stored through the same ingestion, processed by the live workflow, and the
    # entry says who replayed it and why; the batch context it was sent with came along
    entry.refresh_from_db()
    replayed = Event.objects.get(message_id="m-2")
    assert (entry.status, entry.event_id, entry.resolved_by) == ("replayed", replayed.pk, people["ops"])
    assert replayed.context == {"library": {"name": "analytics-python"}}
    assert replayed.status == "processed" and replayed.customer.traits["ordered"] is True
    reasons = list(entry.history.values_list("history_change_reason", "history_user__username"))
    assert ("name was a stack trace", "ops") in reasons
    assert ops.get(change).status_code == 200  # read-only now


def test_discard_needs_a_reason_and_records_it(api, people, client):  # noqa: F811
    api.post("batch", {"batch": [good("d-1", userId=None), good("d-2", userId=None)]})
    ids = list(QuarantinedEvent.objects.values_list("pk", flat=True))
    ops = login(client, people["ops"])
    action = {"action": "discard_selected", "_selected_action": ids}

    ops.post(reverse(CHANGELIST), {**action, "reason": ""})
    assert set(QuarantinedEvent.objects.values_list("status", flat=True)) == {"quarantined"}

    ops.post(reverse(CHANGELIST), {**action, "reason": "test traffic from a staging app"})
    assert set(QuarantinedEvent.objects.values_list("status", "resolution")) == {
        ("discarded", "test traffic from a staging app")}
    assert Event.objects.count() == 0


def test_a_discarded_entry_is_read_only_and_a_stale_fix_is_refused_on_the_form(api, people, client):  # noqa: F811
    # given two entries open on an ops page, one of which someone discards meanwhile
    api.post("batch", {"batch": [good("s-1", userId=None), good("s-2", userId=None)]})
    gone, stale = QuarantinedEvent.objects.order_by("pk")
    ops = login(client, people["ops"])
    url = reverse("admin:journeys_quarantinedevent_change", args=[stale.pk])
    assert ops.get(url).status_code == 200
    quarantine_discard(entries=[gone, stale], actor=people["ops"], reason="staging traffic")
    fix = {"payload": json.dumps(good("s-2")), "change_reason": "user id added"}

    # when ops saves the stale page, and posts to the discarded entry's page
    stale_answer = ops.post(url, fix)
    gone_answer = ops.post(reverse("admin:journeys_quarantinedevent_change", args=[gone.pk]), fix)

    # then no 500: the discarded entries are shown, not changed, and stay as they were
    assert stale_answer.status_code in (200, 403) and gone_answer.status_code in (200, 403)
    assert b"Server Error" not in stale_answer.content
    assert ops.get(url).status_code == 200
    assert set(QuarantinedEvent.objects.values_list("status", flat=True)) == {"discarded"}
    assert Event.objects.count() == 0


@pytest.mark.parametrize(("total", "message"), [
    ("NaN", "NaN is not a number JSON can store; write a finite number"),
    ("1e999", "properties.total: is not a finite number"),
])
def test_a_fix_with_a_number_no_json_column_holds_is_refused_at_the_payload(api, people, client, total,  # noqa: F811
                                                                              message):
    # given a quarantined event
    api.post("batch", {"batch": [good("n-1", userId=None)]})
    entry = QuarantinedEvent.objects.get()
    ops = login(client, people["ops"])

    # when ops "fix" it with a number the API itself would refuse
    payload = json.dumps(good("n-1")).replace('"total": 12', f'"total": {total}')
    response = ops.post(reverse("admin:journeys_quarantinedevent_change", args=[entry.pk]),
                        {"payload": payload, "change_reason": "user id added"})

    # then the form says what is wrong with it, and the entry stays as it was
    assert response.status_code == 200 and message in " ".join(response.context["adminform"].form.errors["payload"])
    assert QuarantinedEvent.objects.get(pk=entry.pk).payload == entry.payload and Event.objects.count() == 0


def test_replay_action_keeps_what_is_still_bad_and_names_why(api, people, client):  # noqa: F811
    api.post("batch", {"batch": [good("r-1", timestamp="yesterday")]})
    entry = QuarantinedEvent.objects.get()
    ops = login(client, people["ops"])

    response = ops.post(reverse(CHANGELIST), {"action": "replay_selected", "_selected_action": [entry.pk],
                                              "reason": "try again"}, follow=True)

    assert "1 still refused, left in the quarantine: 1 at timestamp" in response.text
    assert f"#{entry.pk}: timestamp: cannot parse" in response.text
    entry.refresh_from_db()
    assert (entry.status, entry.field) == ("quarantined", "batch[0].timestamp")  # as ingest named it


def test_replay_of_many_says_in_one_message_how_many_were_replayed_and_why_the_rest_were_not(
        api, people, client, tagging_workflow):  # noqa: F811
    # given entries still wrong in two ways, and some fixed ones
    api.post("batch", {"batch": [good(f"t-{n}", timestamp="yesterday") for n in range(3)]
                       + [good(f"e-{n}", event=7) for n in range(2)] + [good(f"ok-{n}", timestamp="x") for n in range(4)]})
    for entry in QuarantinedEvent.objects.filter(message_id__startswith="ok-"):
        entry.payload = json.dumps(good(entry.message_id))
        entry.save()
    ops = login(client, people["ops"])
    # when ops replay them all
    response = ops.post(reverse(CHANGELIST), {"action": "replay_selected", "select_across": "1", "index": "0",
                                              "_selected_action": [QuarantinedEvent.objects.first().pk],
                                              "reason": "try again"}, follow=True)
    # then one message says it all, the most common refusal first
    said = [str(m) for m in response.context["messages"]]
    assert len(said) == 1, said
    assert said[0].startswith("4 event(s) replayed: stored and sent to the engine. 5 still refused, left in the "
                              "quarantine: 3 at timestamp (e.g. #")
    assert "; 2 at event (e.g. #" in said[0]
    assert QuarantinedEvent.objects.filter(status="replayed").count() == 4


def test_replay_of_more_than_the_action_takes_is_refused_naming_the_command(api, people, client, monkeypatch):  # noqa: F811
    from journeys.admin import quarantine

    monkeypatch.setattr(quarantine, "REPLAY_ACTION_LIMIT", 2)
    api.post("batch", {"batch": [good(f"t-{n}", timestamp="yesterday") for n in range(3)]})
    ops = login(client, people["ops"])
    response = ops.post(reverse(CHANGELIST), {"action": "replay_selected", "select_across": "1", "index": "0",
                                              "_selected_action": [QuarantinedEvent.objects.first().pk],
                                              "reason": "try again"}, follow=True)
    assert "Nothing done: 3 quarantined events are selected and this action takes at most 2 at a time" in response.text
    assert "manage.py quarantine_replay" in response.text
    assert not QuarantinedEvent.history.filter(history_change_reason__startswith="replay").exists()


def test_the_replay_command_replays_what_its_filters_match(api, source, tagging_workflow, capsys):
    from django.core.management import CommandError, call_command

    api.post("batch", {"batch": [good(f"t-{n}", timestamp="x") for n in range(3)] + [good("e-1", event=7)]})
    for entry in QuarantinedEvent.objects.filter(message_id__startswith="t-"):
        entry.payload = json.dumps(good(entry.message_id))
        entry.save()
    call_command("quarantine_replay", "--reason", "fixed", "--dry-run")
    assert "4 quarantined event(s) match; nothing replayed" in capsys.readouterr().out
    call_command("quarantine_replay", "--reason", "fixed", "--source", source.name, "--limit", "3")
    out = capsys.readouterr().out
    assert "3 event(s) replayed" in out and QuarantinedEvent.objects.filter(status="replayed").count() == 3
    call_command("quarantine_replay", "--reason", "again", "--received-after", "2000-01-01")
    assert "0 event(s) replayed: stored and sent to the engine. 1 still refused" in capsys.readouterr().out
    for bad, option in ((["--source", "nope"], "--source"), (["--received-after", "2025-02-31"], "--received-after"),
                        (["--limit", "0"], "--limit"), (["--reason", " "], "--reason")):
        with pytest.raises(CommandError, match=option):
            call_command("quarantine_replay", *(["--reason", "r"] if "--reason" not in bad else []), *bad)


def test_a_schema_refusal_replayed_too_early_keeps_its_code_and_path_for_the_command_later(
        api, source, people, capsys):  # noqa: F811
    from django.core.management import call_command

    from journeys.models import EventDefinition
    from journeys.services.catalog import catalog_reset

    # given a source whose catalog refuses a total sent as text, and such an event in a batch
    source.schema_policy, source.strict = "reject", False
    source.save()
    definition = EventDefinition.objects.create(name="Order Completed", schema={
        "type": "object", "properties": {"total": {"type": "number"}}})
    catalog_reset()
    api.post("batch", {"batch": [good("s-0"), good("s-1", properties={"total": "12.50"})]})
    entry = QuarantinedEvent.objects.get()
    assert (entry.code, entry.field) == ("schema", "batch[1].properties.total")
    # when it is replayed while the catalog still refuses it
    result = quarantine_replay(entries=[entry], actor=people["ops"], reason="try again")
    # then it stays quarantined with the same reason and path as at ingest
    entry.refresh_from_db()
    assert result.still_bad and (entry.status, entry.code, entry.field) == ("quarantined", "schema",
                                                                            "batch[1].properties.total")
    assert "1 still refused, left in the quarantine: 1 at properties.total" in result.summary()
    # and once the catalog is fixed, the documented command finds and replays it
    definition.schema = {"type": "object", "properties": {"total": {"type": ["number", "string"]}}}
    definition.save()
    catalog_reset()
    call_command("quarantine_replay", "--reason", "schema fixed", "--code", "schema")
    assert "1 event(s) replayed" in capsys.readouterr().out
    entry.refresh_from_db()
    assert entry.status == "replayed"


def test_replaying_what_was_already_replayed_says_so(api, people, client):  # noqa: F811
    api.post("batch", {"batch": [good("r-2", timestamp="yesterday")]})
    entry = QuarantinedEvent.objects.get()
    QuarantinedEvent.objects.filter(pk=entry.pk).update(status="discarded")
    ops = login(client, people["ops"])

    response = ops.post(reverse(CHANGELIST), {"action": "replay_selected", "_selected_action": [entry.pk],
                                              "reason": "again"}, follow=True)

    assert "1 event(s) left as they were: already replayed or discarded." in response.text


def test_people_without_the_permission_can_neither_list_nor_replay(api, people, client):  # noqa: F811
    api.post("track", {"event": "No one"})
    entry = QuarantinedEvent.objects.get()

    analyst = login(client, people["analyst"])
    assert analyst.get(reverse(CHANGELIST)).status_code == 403
    from journeys.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        quarantine_replay(entries=[entry], actor=people["analyst"], reason="x")


def test_what_a_json_column_cannot_hold_is_kept_and_shown(api, source, people, client):  # noqa: F811
    """NUL, a lone surrogate, a number out of range, deep nesting: the payload is JSON text."""
    deep = "{\"a\":" * 80 + "1" + "}" * 80
    raw = ('{"batch": [{"type": "track", "userId": "u", "event": "NUL\\u0000"},'
           ' {"type": "track", "userId": "u", "event": "S", "properties": {"s": "\\ud800"}},'
           ' {"type": "track", "userId": "u", "event": "N", "properties": {"n": 1e999}},'
           f' {{"type": "track", "userId": "u", "event": "D", "properties": {deep}}}]}}')
    response = api.post("batch", None, raw=raw.encode())

    assert [r["code"] for r in response.json()["rejected"]] == ["invalid_event"] * 3 + ["too_deep"]
    ops = login(client, people["ops"])
    for entry in QuarantinedEvent.objects.all():
        page = ops.get(reverse("admin:journeys_quarantinedevent_change", args=[entry.pk]))
        assert page.status_code == 200
    assert json.loads(QuarantinedEvent.objects.get(batch_index=0).payload)["event"] == "NUL\x00"


def test_an_unstorable_message_id_is_quarantined_not_a_storage_error(api):
    """Found by the schema fuzzer on PostgreSQL: a messageId of a NUL character (or a lone
    surrogate) got the event refused, then the quarantine row itself could not be written."""
    raw = ('{"batch": [{"type": "track", "userId": "u", "event": "ok", "messageId": "fine-1"},'
           ' {"type": "track", "userId": "u", "event": "e", "messageId": "\\u0000"},'
           ' {"type": "track", "userId": "u", "event": "e", "messageId": "\\udc00x"}]}')

    response = api.post("batch", None, raw=raw.encode())
    single = api.post("track", None, raw=b'{"userId": "u", "event": "e", "messageId": "a\\u0000b"}')

    assert response.status_code == 200 and single.status_code == 200, (response.content, single.content)
    assert [r["index"] for r in response.json()["rejected"]] == [1, 2]
    assert Event.objects.filter(message_id="fine-1").count() == 1
    assert sorted(QuarantinedEvent.objects.values_list("message_id", flat=True)) == ["\\u0000", "\\udc00x", "a\\u0000b"]


def test_a_resent_batch_is_quarantined_once_and_the_write_key_is_not_kept(api, write_key):
    batch = {"batch": [good("w-1", event=7)], "writeKey": write_key}
    for _ in range(2):
        assert api.post("batch", {"batch": [{**good("w-1", event=7), "writeKey": write_key}]}).status_code == 200
    assert api.post("batch", batch).status_code == 200

    entry = QuarantinedEvent.objects.get()
    assert write_key not in entry.payload and write_key not in entry.defaults


def test_replay_of_a_message_id_already_stored_adds_nothing(api, source):
    api.post("batch", {"batch": [good("x-1", timestamp="never")]})
    entry = QuarantinedEvent.objects.get()
    api.post("track", good("x-1"))  # the client sent it right the second time
    entry.payload = json.dumps(good("x-1"))
    entry.save()

    result = quarantine_replay(entries=[entry], reason="fixed")

    assert [e.pk for e in result.replayed] == [entry.pk]
    assert Event.objects.count() == 1 and "already stored" in QuarantinedEvent.objects.get().resolution


def test_resolved_entries_are_purged_after_the_keep_window(api, settings):
    from datetime import timedelta

    from django.utils import timezone

    api.post("batch", {"batch": [good("p-1", event=""), good("p-2", event="")]})
    first, second = QuarantinedEvent.objects.order_by("batch_index")
    QuarantinedEvent.objects.filter(pk=first.pk).update(
        status="discarded", resolved_at=timezone.now() - timedelta(days=settings.EVENT_API["QUARANTINE_KEEP_DAYS"] + 1))

    assert quarantine_purge() == 1
    assert list(QuarantinedEvent.objects.values_list("pk", flat=True)) == [second.pk]
    assert Customer.objects.count() == 0


def rows_holding(text: str) -> list[str]:
    """Every stored row, in any table Django knows (history tables included), whose text holds `text`."""
    from django.apps import apps
    from django.db import models
    from django.db.models import Q
    from django.db.models.functions import Cast

    found = []
    for model in apps.get_models(include_auto_created=True):
        fields = [f.name for f in model._meta.concrete_fields
                  if isinstance(f, (models.CharField, models.TextField, models.JSONField))]
        if not fields:
            continue
        rows = model._base_manager.annotate(**{f"t_{name}": Cast(name, models.TextField()) for name in fields})
        match = Q()
        for name in fields:
            match |= Q(**{f"t_{name}__contains": text})
        found += [f"{model._meta.db_table} #{pk}" for pk in rows.filter(match).values_list("pk", flat=True)]
    return found


def test_the_purge_leaves_no_copy_of_the_payload_anywhere_history_included(api, settings):
    from datetime import timedelta

    from django.utils import timezone

    from journeys.tasks import events_housekeeping

    # Given a quarantined event holding a personal value, discarded with a reason (a history row with the payload)
    secret = "secret-note-0451"
    api.post("batch", {"batch": [good("s-1", event="", properties={"note": secret}), good("s-2", event="")]})
    entry, other = QuarantinedEvent.objects.order_by("batch_index")
    quarantine_discard(entries=[entry], reason="junk from a test device")
    assert rows_holding(secret)
    # ... resolved past the keep period
    QuarantinedEvent.objects.filter(pk=entry.pk).update(
        resolved_at=timezone.now() - timedelta(days=settings.EVENT_API["QUARANTINE_KEEP_DAYS"] + 1))

    # When the scheduled housekeeping purges it
    result = events_housekeeping()

    # Then no row anywhere (entry, history) holds the payload; the open entry stays
    assert result["quarantine_purged"] == 1
    assert rows_holding(secret) == []
    assert list(QuarantinedEvent.objects.values_list("pk", flat=True)) == [other.pk]


def test_the_upgrade_deletes_the_payloads_earlier_purges_left_in_history(api):
    import importlib

    from django.apps import apps

    # Given an entry purged by an older release: gone, its history rows (with the payload) left behind
    api.post("batch", {"batch": [good("o-1", event="", properties={"note": "old-secret-77"}), good("o-2", event="")]})
    gone, kept = QuarantinedEvent.objects.order_by("batch_index")
    quarantine_discard(entries=[gone, kept], reason="junk")
    QuarantinedEvent.objects.filter(pk=gone.pk).delete()
    assert QuarantinedEvent.history.filter(id=gone.pk).count() == 2

    # When the migration runs
    importlib.import_module("journeys.migrations.0030_quarantine_history_purged").purge_orphan_history(apps, None)

    # Then the gone entry's history is gone, the kept entry's stays
    assert rows_holding("old-secret-77") == []
    assert QuarantinedEvent.history.filter(id=kept.pk).count() == 1


def test_an_event_replayed_after_the_max_age_is_history_and_the_command_says_so(api, source, tagging_workflow, capsys):
    """Its age is measured when it is replayed: quarantined 8 days ago and fixed now, an order of
    then would start 'Thanks for your order' 8 days late."""
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    # given an event quarantined 8 days ago (bad timestamp) whose payload is fixed now
    api.post("batch", {"batch": [good("q-1", timestamp="x")]})
    entry = QuarantinedEvent.objects.get(message_id="q-1")
    QuarantinedEvent.objects.filter(pk=entry.pk).update(received_at=timezone.now() - timedelta(days=8))
    entry.refresh_from_db()
    entry.payload = json.dumps(good("q-1"))  # no timestamp: its receipt, 8 days ago
    entry.save()
    # when it is replayed now
    call_command("quarantine_replay", "--reason", "fixed")
    # then it is stored as history, saying why, started no workflow, and the command said how many and why
    event = Event.objects.get(message_id="q-1")
    assert event.status == "history" and "when accepted (replayed; first received " in event.error
    assert "ordered" not in Customer.objects.get(external_id="ada").traits
    out = capsys.readouterr().out
    assert "1 event(s) replayed" in out and "1 of them stored as history" in out and "EVENT_TRIGGER_MAX_AGE_S (7 days)" in out
    entry.refresh_from_db()
    assert "stored as history" in entry.resolution


def test_a_live_event_older_than_the_max_age_says_it_was_received_so_not_replayed(api, tagging_workflow):
    """A /v1/batch event 8 days old is history because of its age when received: nothing replayed it."""
    from datetime import timedelta

    from django.utils import timezone

    # given a batch with an order stamped 8 days ago and one of now
    old = (timezone.now() - timedelta(days=8)).isoformat()
    response = api.post("batch", {"batch": [good("late-1", timestamp=old), good("fresh-1")]})
    assert response.status_code == 200, response.content
    # then the old one is history saying it was that old when received, and the fresh one is live
    late, fresh = Event.objects.get(message_id="late-1"), Event.objects.get(message_id="fresh-1")
    assert late.status == "history" and "days 0 h old when received, older than EVENT_TRIGGER_MAX_AGE_S" in late.error
    assert "replayed" not in late.error and late.error.startswith("history: its timestamp was 8 days")
    assert fresh.status != "history" and fresh.error == ""
