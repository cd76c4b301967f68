"""send_best_channel: the channel chosen under each condition (urgency, stated preference,
last engagement, consent, quiet hours, caps) and the send time, each with its recorded reason."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from channels_app.models import Delivery
from channels_app.services import consent_set, deliveries_dispatch_due, delivery_dispatch
from journeys.engine.compiled import load_version
from journeys.engine.runner import run_enroll
from journeys.models import BusinessUnit, Event
from journeys.services.dry_run import version_dry_run
from journeys.services.internal_events import event_record_internal
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.factories import CapFactory, ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.factories import xact_table_stat

pytestmark = pytest.mark.django_db

# Tuesday 10 March 2026, 13:00 UTC (14:00 in Paris, 22:00 in Tokyo).
T0 = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)
_keys = itertools.count()


@pytest.fixture
def channels(db):
    """One channel of each kind a customer can be reached on (console provider: no network)."""
    return {
        "email": ChannelFactory(name="email", kind="email", provider="console"),
        "sms": ChannelFactory(name="sms", kind="sms", provider="console"),
        "push": ChannelFactory(name="push", kind="push", provider="console"),
        "chat": ChannelFactory(name="chat", kind="chat", provider="console"),
    }


@pytest.fixture
def template(db):
    return TemplateFactory(name="update", subject="Your order", body="Your order {{ event.properties.order }} moved",
                           topic=topic("product_updates"))


@pytest.fixture(params=["alone", "in_a_batch"])
def step(request, db, template, django_capture_on_commit_callbacks):
    """Publish a one-step workflow and run it for a customer at a given moment; returns the Delivery.
    Each test runs twice: the run alone (written at once), and inside an engine batch as
    events_process runs it (the step batch-safe: its message recorded at the batch's flush)."""
    from django.db import transaction

    from journeys.engine.batch import EngineBatch

    unit = BusinessUnit.objects.create(name="Ops", slug="ops")

    def run(customer, *, now=T0, event=None, **config):
        workflow = workflow_create(name=f"wf-{next(_keys)}", business_unit=unit)
        version = version_publish(version=version_build(workflow=workflow, definition={
            "trigger_event": "Order Moved",
            "steps": [{"key": "best", "kind": "send_best_channel", "config": {"template": "update", **config}}],
        }), reason="test")
        enrol = dict(version=load_version(version.pk), customer=customer, trigger_key=f"t:{next(_keys)}",
                     now=now, event=event or {"name": "Order Moved", "properties": {"order": "A1"}})
        with django_capture_on_commit_callbacks(execute=False):
            if request.param == "alone":
                journey = run_enroll(**enrol)
            else:
                batch = EngineBatch(customer_ids=[customer.pk], now=now)
                with transaction.atomic(), batch.active():
                    journey = run_enroll(**enrol)
                    assert not Delivery.objects.filter(run_id=journey.pk).exists()  # kept for the flush
                    batch.flush()
        return Delivery.objects.get(run_id=journey.pk)

    return run


def ada(**traits):
    return CustomerFactory(external_id=f"ada-{next(_keys)}", phone="+15550100", timezone="Europe/Paris",
                           traits={"push_token": "tok-1", "chat_id": "D1", **traits})


def engaged(customer, channel, at):
    """A past message on `channel` that the customer opened at `at`."""
    return Delivery.objects.create(idempotency_key=f"past:{next(_keys)}", customer=customer, channel=channel,
                                   status="opened", sent_at=at - timedelta(minutes=5), opened_at=at)


def test_urgent_update_goes_to_push_first(channels, step):
    delivery = step(ada(), urgency="urgent", send_time="now")

    assert delivery.channel.name == "push" and delivery.status == "queued"
    choice = delivery.notes["channel_choice"]
    assert choice["chosen_by"] == "urgency" and choice["urgency"] == "urgent"
    assert delivery.choice_reason.startswith("push: urgent: push/sms first")
    assert "urgent message: sent now" in delivery.choice_reason


def test_urgency_can_come_from_the_event(channels, step):
    delivery = step(ada(), urgency="event", event={"name": "Order Moved", "properties": {"urgency": "triage"}})
    assert (delivery.channel.name, delivery.notes["channel_choice"]["chosen_by"]) == ("chat", "urgency")
    assert "chat: triage: chat first" in delivery.choice_reason


def test_urgent_update_follows_a_preference_between_push_and_sms(channels, step):
    delivery = step(ada(preferred_channel="sms"), urgency="urgent")
    assert delivery.channel.name == "sms"
    assert "stated preference (preferred_channel=sms), and urgent messages go to push/sms first" in delivery.choice_reason


def test_stated_preference_wins_for_a_normal_message(channels, step):
    customer = ada(preferred_channel="chat")
    engaged(customer, channels["email"], T0 - timedelta(hours=2))  # engagement elsewhere does not override it

    delivery = step(customer, send_time="now")

    assert (delivery.channel.name, delivery.to) == ("chat", "D1")
    assert delivery.notes["channel_choice"]["chosen_by"] == "preference"
    assert "chat: stated preference (preferred_channel=chat)" in delivery.choice_reason


def test_without_preference_the_last_engaged_channel_is_chosen(channels, step):
    customer = ada()
    engaged(customer, channels["email"], T0 - timedelta(days=3))
    event_record_internal(customer=customer, name="Push Opened", at=T0 - timedelta(days=1), message_id="po-1")

    delivery = step(customer, send_time="now")

    assert delivery.channel.name == "push"
    assert delivery.notes["channel_choice"]["chosen_by"] == "last_engaged"
    assert "push: last engaged on push (2026-03-09 13:00 UTC, 1 engagements)" in delivery.choice_reason


def test_opens_of_past_deliveries_count_as_engagement(channels, step):
    customer = ada()
    engaged(customer, channels["sms"], T0 - timedelta(hours=5))
    delivery = step(customer, send_time="now")
    assert (delivery.channel.name, delivery.notes["channel_choice"]["chosen_by"]) == ("sms", "last_engaged")


def test_consent_refusal_skips_the_preferred_channel_with_its_reason(channels, step):
    customer = ada(preferred_channel="sms")
    consent_set(customer=customer, channel_kind="sms", topic=None, status="opted_out", source="sms_keyword:STOP")
    engaged(customer, channels["email"], T0 - timedelta(days=1))

    delivery = step(customer, send_time="now")

    assert delivery.channel.name == "email" and delivery.status == "queued"
    considered = delivery.notes["channel_choice"]["considered"]
    assert considered[0] == {"channel": "sms", "kind": "sms", "ranked_by": "preference",
                             "why": "stated preference (preferred_channel=sms)", "skipped": "channel_opt_out",
                             "detail": "Opted out of the channel"}
    assert "sms skipped (channel_opt_out: Opted out of the channel)" in delivery.choice_reason
    assert "email: last engaged on email" in delivery.choice_reason


def test_quiet_hours_skip_a_channel_that_would_wait(channels, step):
    channels["push"].quiet_start, channels["push"].quiet_end = time(21, 0), time(8, 0)
    channels["push"].save()
    tokyo = ada()
    tokyo.timezone = "Asia/Tokyo"  # 22:00 there
    tokyo.save()

    delivery = step(tokyo, urgency="urgent")

    assert delivery.channel.name == "sms"
    skipped = delivery.notes["channel_choice"]["considered"][0]
    assert (skipped["channel"], skipped["skipped"]) == ("push", "quiet_hours")
    assert "quiet hours 21:00-08:00 Asia/Tokyo (until 2026-03-10 23:00 UTC)" in skipped["detail"]
    assert delivery_dispatch(delivery_id=delivery.pk, now=T0).status == "sent"


def test_when_every_channel_is_held_the_message_waits_on_the_best_one(channels, step):
    for channel in channels.values():
        channel.quiet_start, channel.quiet_end = time(21, 0), time(8, 0)
        channel.save()
    tokyo = ada()
    tokyo.timezone = "Asia/Tokyo"
    tokyo.save()

    delivery = step(tokyo, urgency="urgent")

    assert delivery.channel.name == "push" and delivery.notes["channel_choice"]["chosen_by"] == "held"
    assert "every channel is held" in delivery.choice_reason
    held = delivery_dispatch(delivery_id=delivery.pk, now=T0)
    assert (held.status, held.reason) == ("deferred", "quiet_hours")


def test_a_frequency_cap_skips_the_capped_channel(channels, step):
    CapFactory(name="one sms a day", channel=channels["sms"], limit=1, window_s=86400, action="suppress")
    customer = ada(preferred_channel="sms")
    Delivery.objects.create(idempotency_key="earlier-sms", customer=customer, channel=channels["sms"], status="sent",
                            sent_at=T0 - timedelta(hours=3))

    delivery = step(customer, send_time="now")

    assert delivery.channel.name != "sms"
    sms = delivery.notes["channel_choice"]["considered"][0]
    assert (sms["channel"], sms["skipped"], sms["detail"]) == ("sms", "frequency_cap",
                                                               "cap one sms a day: 1/1 in 86400s")


def test_no_reachable_channel_is_a_suppressed_delivery_with_the_reason(channels, step):
    customer = CustomerFactory(external_id="dnc", timezone="UTC")
    consent_set(customer=customer, channel_kind="", topic=None, status="opted_out", source="admin")

    delivery = step(customer, send_time="now")

    assert (delivery.status, delivery.reason) == ("suppressed", "do_not_contact")
    assert "no channel may reach the customer" in delivery.choice_reason


def test_send_time_waits_for_the_customers_usual_hour(channels, step):
    customer = ada()  # Paris: T0 is 14:00 local
    for day in range(1, 6):  # five evenings at 19:xx Paris (18:xx UTC), one morning
        engaged(customer, channels["email"], datetime(2026, 3, 10 - day, 18, 10 + day, tzinfo=UTC))
    engaged(customer, channels["email"], datetime(2026, 3, 3, 8, 0, tzinfo=UTC))

    delivery = step(customer)

    due = datetime(2026, 3, 10, 18, 0, tzinfo=UTC)  # 19:00 in Paris
    assert (delivery.status, delivery.reason, delivery.next_attempt_at) == ("deferred", "send_time", due)
    timing = delivery.notes["channel_choice"]["timing"]
    assert timing["decision"] == "deferred" and timing["hour"] == 19
    assert ("deferred to 19:00 Europe/Paris, their most frequent engagement hour "
            "(5 of 6 engagements at 19:00 Europe/Paris)") in delivery.choice_reason

    deliveries_dispatch_due(now=due - timedelta(minutes=1))
    assert Delivery.objects.get(pk=delivery.pk).status == "deferred"
    delivery_dispatch(delivery_id=delivery.pk, now=due)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.sent_at) == ("sent", due)


def test_send_time_is_now_without_enough_history(channels, step):
    customer = ada()
    for day in range(1, 5):
        engaged(customer, channels["email"], datetime(2026, 3, 10 - day, 18, 0, tzinfo=UTC))

    delivery = step(customer)

    assert delivery.status == "queued" and delivery.next_attempt_at is None
    assert "sent now: 4 engagements in 90 days (a best hour needs 5)" in delivery.choice_reason


def test_send_time_is_now_when_it_is_already_their_hour(channels, step):
    customer = ada()
    for day in range(1, 6):
        engaged(customer, channels["email"], datetime(2026, 3, 10 - day, 13, 20, tzinfo=UTC))  # 14:xx Paris
    delivery = step(customer)
    assert delivery.status == "queued"
    assert "sent now: their best hour (5 of 5 engagements at 14:00 Europe/Paris)" in delivery.choice_reason


def test_urgent_messages_never_wait_for_the_best_hour(channels, step):
    customer = ada()
    for day in range(1, 7):
        engaged(customer, channels["email"], datetime(2026, 3, 10 - day, 18, 0, tzinfo=UTC))
    delivery = step(customer, urgency="urgent")
    assert delivery.status == "queued" and delivery.notes["channel_choice"]["timing"]["decision"] == "now"


def test_a_retried_step_records_one_delivery(channels, step, template):
    customer = ada()
    first = step(customer, send_time="now")
    from channels_app.services import message_send

    again = message_send(customer=customer, template=template, channel=first.channel,
                         idempotency_key=first.idempotency_key, context={})
    assert again.pk == first.pk and Delivery.objects.filter(customer=customer).count() == 1


def test_dry_run_describes_the_choice_without_sending(channels, template):
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    workflow = workflow_create(name="wf-dry", business_unit=unit)
    version = version_build(workflow=workflow, definition={
        "trigger_event": "Order Moved",
        "steps": [{"key": "best", "kind": "send_best_channel", "config": {"template": "update", "urgency": "urgent"}}],
    })
    customer = ada(preferred_channel="email")

    report = version_dry_run(version=version, customer=customer, event={"name": "Order Moved"}, now=T0)

    [action] = report.actions
    assert action["channel"] == "push" and action["chosen_by"] == "urgency" and action["to"] == "tok-1"
    assert [c["channel"] for c in action["considered"]] == ["push"]
    assert action["why"][0] == "push: urgent: push/sms first"
    assert Delivery.objects.count() == 0 and not Event.objects.filter(name="Message Sent").exists()


def test_step_options_are_validated(channels, template, db):
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    TemplateFactory(name="mail-only", channel_kind="email")

    def build(config):
        workflow = workflow_create(name=f"wf-{next(_keys)}", business_unit=unit)
        return version_publish(version=version_build(workflow=workflow, definition={
            "trigger_event": "X", "steps": [{"key": "b", "kind": "send_best_channel", "config": config}]}),
            reason="test")

    for bad, field in (({"template": "update", "urgency": "soon"}, "urgency"),
                       ({"template": "update", "send_time": "later"}, "send_time"),
                       ({"template": "update", "channels": ["pigeon"]}, "channels"),
                       ({"template": "mail-only"}, "templates"),
                       ({"template": "nope"}, "template")):
        with pytest.raises(ValidationError) as error:
            build(bad)
        assert field in str(error.value), (bad, error.value)
    version = build({"template": "update", "channels": ["sms", "email"], "min_gap_other_channel": "2h"})
    assert version.steps.get().config == {"template": "update", "channels": ["sms", "email"], "urgency": "normal",
                                          "send_time": "best_hour", "min_engagements": 5,
                                          "min_gap_other_channel": 7200, "recent_contact_action": "defer"}


def test_end_to_end_an_urgent_event_goes_out_by_push_over_http(api, vendor, monkeypatch, template,
                                                                django_capture_on_commit_callbacks):
    """Through the event API, the engine and the worker to an FCM-style server (a real local HTTP server)."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_FCM_TOKEN", "fcm-secret")
    ChannelFactory(name="email", kind="email", provider="console")
    ChannelFactory(name="push", kind="push", provider="fcm",
                   settings={"base_url": vendor.url, "project_id": "demo", "access_token_env": "JOURNEYS_SECRET_TEST_FCM_TOKEN"})
    unit = BusinessUnit.objects.create(name="Ops", slug="ops")
    workflow = workflow_create(name="delays", business_unit=unit)
    version_publish(version=version_build(workflow=workflow, definition={
        "trigger_event": "Order Delayed",
        "steps": [{"key": "tell", "kind": "send_best_channel", "config": {"template": "update", "urgency": "event"}}],
    }), reason="test")

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("identify", {"userId": "zoe", "traits": {"email": "zoe@example.com",
                                                                   "push_token": "tok-zoe"}}).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("track", {"userId": "zoe", "event": "Order Delayed",
                                  "properties": {"urgency": "urgent", "order": "Z9"}}).status_code == 200

    delivery = Delivery.objects.get()
    assert (delivery.channel.name, delivery.status, delivery.to) == ("push", "sent", "tok-zoe")
    assert delivery.choice_reason.startswith("push: urgent: push/sms first")
    [request] = vendor.requests
    assert request.path == "/v1/projects/demo/messages:send"
    assert request.json()["message"]["notification"]["body"] == "Your order Z9 moved"
    from journeys.models import StepExecution

    detail = StepExecution.objects.get(step_key="tell").detail
    assert detail["chosen_by"] == "urgency" and detail["why"][0] == "push: urgent: push/sms first"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="reads PostgreSQL's per-transaction table counters")
def test_the_last_engaged_channel_is_read_from_recent_messages_not_the_whole_history(channels, step):
    """Given a customer with 2,000 old SMS messages (opened years ago) and one push opened
    yesterday, when the best channel is chosen, then push wins on the recent open (an open of a
    message sent before the 90-day history and its 30-day lag does not count) and the choice
    fetches the recent messages from the deliveries table, not the customer's whole history."""
    customer = ada()
    Delivery.objects.bulk_create([
        Delivery(idempotency_key=f"old:{n}", customer=customer, channel=channels["sms"], status="opened",
                 sent_at=T0 - timedelta(days=400 + n), opened_at=T0 - timedelta(days=400 + n))
        for n in range(2000)])
    late_open = Delivery.objects.create(idempotency_key="late-open", customer=customer, channel=channels["sms"],
                                        status="opened", sent_at=T0 - timedelta(days=200),
                                        opened_at=T0 - timedelta(hours=1))
    engaged(customer, channels["push"], T0 - timedelta(days=1))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE channels_app_delivery")
    before = xact_table_stat("channels_app_delivery", "seq_tup_read", "idx_tup_fetch")

    delivery = step(customer, send_time="now")

    read = xact_table_stat("channels_app_delivery", "seq_tup_read", "idx_tup_fetch") - before
    assert (delivery.channel.name, delivery.notes["channel_choice"]["chosen_by"]) == ("push", "last_engaged")
    assert read < 100, read
