"""The outbound event stream against a real local HTTP server that fails on demand: batches
signed per Standard Webhooks (checked with the reference library), retried with backoff while
the destination is down, delivered in order, paused after repeated failure, nothing lost."""

from __future__ import annotations

import threading
from datetime import timedelta
from email.utils import format_datetime

import pytest
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook

from journeys.choices import StreamEventType
from journeys.models import BusinessUnit, StreamBatch, StreamDestination, StreamEvent
from journeys.services.stream import StreamItem, stream_deliver_due, stream_emit, stream_purge
from journeys.services.stream_destinations import destination_resume, destination_save
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.channels_app.servers import FakeVendor, Plan

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def stream_timing(settings):
    """Quick retries in milliseconds, and a task time (2 s) shorter than the first backoff (2.5-5 s):
    a task retries an error at once but leaves a real backoff to the tick, as the tests drive it."""
    settings.STREAM = {**settings.STREAM, "QUICK_RETRY_S": 0.01, "TASK_S": 2}


@pytest.fixture
def vendor():
    server = FakeVendor().start()
    yield server
    server.stop()


@pytest.fixture
def destination(vendor, settings):
    """A destination on the local server (allowed: the test settings allow-list 127.0.0.0/8)."""

    def make(**fields):
        dest = StreamDestination(name=fields.pop("name", "warehouse"), url=vendor.url + "/hook", **fields)
        secret = destination_save(destination=dest, reason="test")
        return dest, secret

    return make


def items(n: int, start: int = 0) -> list[StreamItem]:
    now = timezone.now()
    return [StreamItem(StreamEventType.MESSAGE_SENT, f"message.sent:{i}", now, {"delivery_id": i}) for i in
            range(start, start + n)]


def headers(request) -> dict:
    """HTTP header names are case-insensitive (urllib sends `Webhook-id`)."""
    return {k.lower(): v for k, v in request.headers.items()}


def delivered_ids(vendor) -> list[int]:
    seen, out = set(), []
    for request in vendor.requests:
        body = request.json()
        if headers(request)["webhook-id"] in seen:
            continue
        seen.add(headers(request)["webhook-id"])
        out.extend(e["data"]["delivery_id"] for e in body["data"]["events"])
    return out


def test_events_arrive_in_signed_batches_a_standard_webhooks_library_verifies(destination, vendor,
                                                                             django_capture_on_commit_callbacks):
    # given a destination taking batches of 2
    dest, secret = destination(batch_size=2)
    assert secret.startswith("whsec_")

    # when 3 things happen (and the transaction commits)
    with django_capture_on_commit_callbacks(execute=True):
        stream_emit(items=items(3))

    # then 2 requests arrive, in order, each verified by the reference implementation
    assert len(vendor.requests) == 2
    for request in vendor.requests:
        payload = Webhook(secret).verify(request.body, headers(request))
        assert payload["type"] == "journeys.batch"
        assert all(e["type"] == "message.sent" and e["id"].startswith("evt_") for e in payload["data"]["events"])
    assert delivered_ids(vendor) == [0, 1, 2]
    assert StreamBatch.objects.filter(delivered_at__isnull=False).count() == 2

    # and a tampered body or another secret does not verify
    from standardwebhooks.webhooks import WebhookVerificationError

    first = vendor.requests[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(first.body.replace(b"message.sent", b"message.sEnt"), headers(first))
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(first.body, headers(first))


def test_a_destination_down_for_a_while_gets_everything_in_order_once_back(destination, vendor):
    # given a destination that answers 503 three times, then recovers
    dest, _ = destination(batch_size=10)
    vendor.plan(Plan(503, {"error": "down"}, {"Retry-After": "30"}), Plan(500), Plan(502))
    now = timezone.now()

    # when 5 events are recorded and delivery is attempted now and later
    stream_emit(items=items(5))
    assert stream_deliver_due(now=now) == 1  # one delivery task started
    dest.refresh_from_db()
    assert dest.consecutive_failures == 1 and dest.next_attempt_at >= now + timedelta(seconds=30)
    assert stream_deliver_due(now=now + timedelta(seconds=10)) == 0  # still backing off: nothing sent
    assert len(vendor.requests) == 1
    stream_emit(items=items(3, start=5))  # more happens while it is down
    later = now
    for _ in range(3):
        later += timedelta(hours=1)
        stream_deliver_due(now=later)

    # then the first batch was retried under the same webhook-id, then the rest followed, in order
    ids = [headers(r)["webhook-id"] for r in vendor.requests]
    assert ids[:3] == [ids[0]] * 3 and len(set(ids)) == 2
    assert delivered_ids(vendor) == list(range(8))
    assert not StreamEvent.objects.filter(batch__delivered_at__isnull=True).exists()  # nothing left behind
    dest.refresh_from_db()
    assert dest.consecutive_failures == 0 and dest.paused_at is None
    # and the delivery log kept every attempt with its answer
    first = StreamBatch.objects.order_by("id").first()
    assert list(first.attempt_log.order_by("at", "id").values_list("status_code", "ok")) == [
        (503, False), (500, False), (502, False), (200, True)]


@pytest.mark.parametrize("retry_after", ["7200", "date"])
def test_a_retry_after_in_seconds_or_as_an_http_date_is_honoured(destination, vendor, retry_after):
    # given a destination that answers 503 asking to come back in two hours (seconds or a date)
    dest, _ = destination()
    now = timezone.now()
    if retry_after == "date":
        retry_after = format_datetime(now + timedelta(hours=2), usegmt=True)
    vendor.plan(Plan(503, {"error": "maintenance"}, {"Retry-After": retry_after}))
    stream_emit(items=items(1))

    # when delivery is attempted now and again an hour later
    stream_deliver_due(now=now)
    stream_deliver_due(now=now + timedelta(hours=1))

    # then it waited as asked (the backoff alone would have tried again within seconds), then delivered
    dest.refresh_from_db()
    assert len(vendor.requests) == 1
    assert dest.next_attempt_at >= now + timedelta(hours=2) - timedelta(seconds=1)
    stream_deliver_due(now=now + timedelta(hours=2, minutes=1))
    assert delivered_ids(vendor) == [0]


def test_repeated_failure_pauses_the_destination_and_resuming_sends_the_backlog(destination, vendor):
    # given a destination that pauses after 2 failures in a row, and a server that is down
    dest, _ = destination(max_failures=2)
    vendor.fail(2, status=500)
    now = timezone.now()
    stream_emit(items=items(2))
    stream_deliver_due(now=now)
    stream_deliver_due(now=now + timedelta(hours=2))

    # then it is paused, saying why, and nothing more is attempted while paused
    dest.refresh_from_db()
    assert dest.paused_at is not None and "2 failed attempts" in dest.pause_reason
    stream_emit(items=items(2, start=2))  # events keep being recorded for it
    stream_deliver_due(now=now + timedelta(days=1))
    assert len(vendor.requests) == 2

    # when ops resume it (the server is back)
    destination_resume(destination=dest, reason="endpoint fixed")
    stream_deliver_due(now=now + timedelta(days=1))

    # then everything goes out, in order
    assert delivered_ids(vendor) == [0, 1, 2, 3]


def test_410_gone_pauses_at_once(destination, vendor):
    dest, _ = destination()
    vendor.plan(Plan(410))
    stream_emit(items=items(1))
    stream_deliver_due()
    dest.refresh_from_db()
    assert "410" in dest.pause_reason


def test_nothing_is_recorded_without_destinations_and_a_fact_is_recorded_once(destination):
    # without a destination, emitting writes nothing
    assert stream_emit(items=items(2)) == 0
    assert not StreamEvent.objects.exists()

    # with one that wants only message.sent, other types are skipped and a repeated key is stored once
    destination(event_types=[StreamEventType.MESSAGE_SENT])
    stream_emit(items=items(2))
    stream_emit(items=items(2))
    stream_emit(items=[StreamItem(StreamEventType.CASE_OPENED, "case.opened:1:0", timezone.now(), {})])
    assert StreamEvent.objects.count() == 2


def test_delivered_batches_are_purged_after_the_keep_period_and_undelivered_never(destination, vendor, settings,
                                                                                    django_capture_on_commit_callbacks):
    dest, _ = destination(batch_size=1)
    with django_capture_on_commit_callbacks(execute=True):
        stream_emit(items=items(1))
    vendor.fail(settings.STREAM["QUICK_RETRIES"] + 1)  # failed, and again on each quick retry: backing off
    stream_emit(items=items(1, start=1))
    stream_deliver_due()
    assert stream_purge(now=timezone.now() + timedelta(days=8)) == 1
    assert list(StreamEvent.objects.values_list("key", flat=True)) == ["message.sent:1"]


def test_bad_destination_urls_are_refused_naming_the_field(settings):
    from django.core.exceptions import ValidationError

    settings.OUTBOUND_ALLOWED_NETWORKS, settings.OUTBOUND_ALLOWED_HOSTS = [], []
    for url in ("http://example.com/hook", "ftp://example.com/x", "https://user:pw@example.com/x",
                "https://127.0.0.1/hook", "https://10.0.0.5/hook"):
        with pytest.raises(ValidationError) as refused:
            destination_save(destination=StreamDestination(name="x", url=url), reason="test")
        assert "url" in refused.value.message_dict


@pytest.mark.parametrize(("allowed", "url"), [
    (["hooks.invalid"], "http://hooks.invalid./events"),  # a final dot names the same host
    (["Hooks.Invalid."], "http://hooks.invalid/events"),
    ([], "http://[::ffff:127.0.0.1]:9/events"),  # an allow-listed network, written as IPv4-mapped IPv6
])
def test_plain_http_goes_to_a_host_the_outbound_allow_list_opens_however_it_is_written(settings, allowed, url):
    # given the allow-list the outbound guard reads (the test settings open 127.0.0.0/8)
    settings.OUTBOUND_ALLOWED_HOSTS = allowed

    # when a destination on plain http to such a host is saved
    dest = StreamDestination(name="internal", url=url)
    destination_save(destination=dest, reason="test")

    # then it is accepted, as the guard would accept the call itself
    assert StreamDestination.objects.filter(pk=dest.pk, url=url).exists()


# --------------------------------------------------------------------------- from the product


def test_journeys_messages_and_their_reasons_reach_the_stream(destination, vendor, send):
    """A journey run and the message it tried to send: entered, step reached, suppressed (with the
    reason), exited — written with the engine batch, delivered after commit."""
    from channels_app.models import Channel, MessageTemplate

    dest, secret = destination()
    Channel.objects.create(name="email", kind="email", provider="console")
    MessageTemplate.objects.create(name="welcome", channel_kind="email", subject="Hi", body="Hello")
    unit = BusinessUnit.objects.create(name="Growth", slug="growth")
    workflow = workflow_create(name="welcome", business_unit=unit)
    version_publish(version=version_build(workflow=workflow, definition={
        "trigger_event": "Signed Up",
        "steps": [{"key": "mail", "kind": "send_message", "config": {"template": "welcome", "channel": "email"}}],
        "edges": [],
    }), reason="test")

    # when a customer without an email address signs up
    send(userId="u-stream", event="Signed Up")

    # then the destination heard the run enter, reach its step, the message be suppressed and the run end
    events = [e for r in vendor.requests for e in Webhook(secret).verify(r.body, headers(r))["data"]["events"]]
    types = [e["type"] for e in events]
    assert {"journey.entered", "journey.step_reached", "message.suppressed", "journey.exited"} <= set(types)
    assert types.index("journey.entered") < types.index("journey.step_reached") < types.index("journey.exited")
    suppressed = next(e for e in events if e["type"] == "message.suppressed")
    assert suppressed["data"]["reason"] == "no_address" and suppressed["data"]["user_id"] == "u-stream"
    assert next(e for e in events if e["type"] == "journey.exited")["data"]["status"] == "completed"


def test_without_destinations_recording_costs_no_query(django_assert_num_queries):
    stream_emit(items=items(1))  # the (empty) list of destinations is read once and cached
    with django_assert_num_queries(0):
        assert stream_emit(items=items(100)) == 0


def test_cases_opened_and_resolved_and_message_callbacks_reach_the_stream(destination, vendor,
                                                                          django_capture_on_commit_callbacks):
    """The agents app (case opened/resolved) and the channels app's tracking (delivered, opened,
    clicked, bounced) tell the stream, each in the transaction that records it."""
    from agents.services.cases import case_resolve
    from channels_app.models import Channel, Delivery
    from channels_app.services.tracking import delivery_click_record, delivery_open_record, delivery_status_record
    from tests.agents.conftest import open_case
    from tests.agents.factories import AgentFactory, TeamFactory
    from tests.factories import CustomerFactory

    dest, secret = destination()
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})
    customer = CustomerFactory(external_id="cara", email="cara@example.com")
    case = open_case(customer=customer, capture=django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        case_resolve(case=case, actor=agent.user, code="refunded")
    channel = Channel.objects.create(name="mail", kind="email")
    sent = Delivery.objects.create(idempotency_key="d1", customer=customer, channel=channel, status="sent")
    lost = Delivery.objects.create(idempotency_key="d2", customer=customer, channel=channel, status="sent")
    with django_capture_on_commit_callbacks(execute=True):
        delivery_status_record(delivery_id=sent.pk, status="delivered")
        delivery_open_record(delivery_id=sent.pk)
        delivery_click_record(delivery_id=sent.pk, url="https://shop.example.com/a")
        delivery_status_record(delivery_id=lost.pk, status="bounced", detail="mailbox full")

    events = [e for r in vendor.requests for e in Webhook(secret).verify(r.body, headers(r))["data"]["events"]]
    by_type = {e["type"]: e["data"] for e in events}
    assert by_type["case.opened"]["case_id"] == case.pk
    assert by_type["case.resolved"]["resolution_code"] == "refunded"
    assert by_type["message.delivered"]["delivery_id"] == sent.pk
    assert by_type["message.opened"]["delivery_id"] == sent.pk
    assert by_type["message.clicked"]["url"] == "https://shop.example.com/a"
    assert by_type["message.bounced"]["delivery_id"] == lost.pk


# --------------------------------------------------------------------------- at volume


def test_a_destination_failing_every_third_request_drains_its_backlog_in_one_task(destination, vendor, settings):
    """A destination that errs now and then keeps draining: each failed request is retried when
    its (short) backoff ends, by the same task, under the same webhook-id, on one keep-alive
    connection; it does not wait for new events or the minute tick."""
    from journeys.services.stream import stream_deliver
    from tests.channels_app.servers import Plan

    # given 300 waiting events, batches of 10, and a server failing every third request
    settings.STREAM = {**settings.STREAM, "TASK_S": 30}
    dest, secret = destination(batch_size=10)
    stream_emit(items=items(300))
    vendor.plan(*[Plan(200), Plan(200), Plan(500, {"error": "flaky"})] * 30)

    # when one delivery task runs (no kick, no tick)
    delivered = stream_deliver(destination_id=dest.pk)

    # then every batch went out, every event exactly once and in order
    assert delivered == 30
    assert delivered_ids(vendor) == list(range(300))
    statuses = [200, 200, 500] * 30
    accepted = [r for r, status in zip(vendor.requests, statuses) if status == 200]
    assert sorted(e["data"]["delivery_id"] for r in accepted for e in r.json()["data"]["events"]) == list(range(300))
    # and each failed request was re-sent next, under the same webhook-id, still verifying
    for i, status in enumerate(statuses[:len(vendor.requests)]):
        if status == 500:
            assert headers(vendor.requests[i + 1])["webhook-id"] == headers(vendor.requests[i])["webhook-id"]
            Webhook(secret).verify(vendor.requests[i + 1].body, headers(vendor.requests[i + 1]))
    assert len(vendor.requests) == 44  # 30 batches + 14 re-sends
    assert len(set(vendor.ports)) == 1  # one keep-alive connection for the whole task
    dest.refresh_from_db()
    assert dest.consecutive_failures == 0 and dest.lease_until is None
    assert not StreamEvent.objects.filter(batch__delivered_at__isnull=True).exists()


def test_a_destination_that_answers_slowly_when_failing_is_not_retried_at_once(destination, vendor, settings,
                                                                               monkeypatch):
    """Quick retries are for failures that come fast: a request that failed after a second or more
    (a hanging destination) goes to the backoff, so the task lets the worker go instead of holding
    it for a timeout per retry."""
    from journeys.services import stream
    from tests.channels_app.servers import Plan

    monkeypatch.setattr(stream, "QUICK_RETRY_MAX_MS", 200)
    settings.STREAM = {**settings.STREAM, "TASK_S": 0.5}  # shorter than the backoff
    dest, _ = destination(batch_size=10)
    stream_emit(items=items(20))
    vendor.plan(Plan(500, {"error": "slow"}, delay=0.3), Plan(200), Plan(200))

    assert stream.stream_deliver(destination_id=dest.pk) == 0
    assert len(vendor.requests) == 1  # not retried by this task: the backoff (the tick) retries it
    dest.refresh_from_db()
    assert dest.consecutive_failures == 1 and dest.lease_until is None
    assert dest.next_attempt_at is not None


def test_a_delivery_task_hands_over_when_its_time_is_up(destination, vendor, settings, monkeypatch):
    """One destination never holds a worker longer than STREAM["TASK_S"]: the task stops after
    the request that used its time and queues the next one, which goes on from there."""
    from journeys.services import stream

    settings.STREAM = {**settings.STREAM, "TASK_S": 0}
    dest, _ = destination(batch_size=10)
    stream_emit(items=items(30))
    queued = []
    monkeypatch.setattr(stream, "deliver_later", lambda pk, now=None: queued.append(pk))

    assert stream.stream_deliver(destination_id=dest.pk) == 1
    assert queued == [dest.pk]
    assert stream.stream_deliver(destination_id=dest.pk) == 1
    assert delivered_ids(vendor) == list(range(20))


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers (SQLite has one writer at a time)")
def test_events_go_out_in_id_order_when_a_transaction_with_lower_ids_commits_later(destination, vendor):
    """Two transactions record events; the one that took the lower ids commits last. The stream
    waits for it (it is still open when delivery starts) instead of sending the higher ids first."""
    from django.db import connections, transaction

    from journeys.services.stream import stream_deliver

    dest, _ = destination(batch_size=100)
    recorded, release = threading.Event(), threading.Event()

    def slow_writer():  # takes ids first, commits after the other one
        try:
            with transaction.atomic():
                stream_emit(items=items(3, start=0))
                recorded.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert recorded.wait(10)
    threading.Timer(0.5, release.set).start()  # the first transaction commits half a second from now
    with transaction.atomic():
        stream_emit(items=items(3, start=3))  # higher ids, committed now (its kick delivers at once)

    # when delivery runs while the first transaction is still open (and again until all is out)
    for _ in range(5):
        stream_deliver(destination_id=dest.pk)
    thread.join()
    stream_deliver(destination_id=dest.pk)

    # then the receiver got the events in id order: the lower ids first
    events = [e for r in vendor.requests for e in r.json()["data"]["events"]]
    ids = [int(e["id"].removeprefix("evt_")) for e in events]
    assert ids == sorted(ids) and len(ids) == 6
    assert [e["data"]["delivery_id"] for e in events] == [0, 1, 2, 3, 4, 5]


def test_the_destination_list_shows_the_lag_and_a_backlog_is_not_ok(destination, vendor, admin_client):
    """A destination whose oldest waiting event is old reads "behind by ...", with its age, even
    when its last request succeeded (a flaky one resets its failure count on every success)."""
    from django.urls import reverse

    # given a destination with 3 events waiting, the oldest recorded 2 hours ago
    dest, _ = destination(name="flaky")
    stream_emit(items=items(3))
    StreamEvent.objects.filter(destination=dest).update(created_at=timezone.now() - timedelta(hours=2))
    destination(name="caught-up")

    # when ops open the destination list
    page = admin_client.get(reverse("admin:journeys_streamdestination_changelist")).content.decode()

    # then the backlog's age shows, and the state says it is behind, not ok
    row = page[page.index(">flaky<"):]
    row = row[:row.index("</tr>")]
    assert "behind by 2h" in row and ">3<" in row
    other = page[page.index(">caught-up<"):]
    assert ">ok<" in other[:other.index("</tr>")]


def test_after_a_rotation_requests_verify_with_the_new_and_the_old_secret_for_the_overlap(destination, vendor):
    """Standard Webhooks allows several signatures: for STREAM["ROTATION_OVERLAP_S"] after a
    rotation both secrets sign, so a receiver switches when it likes; then only the new one."""
    from standardwebhooks.webhooks import WebhookVerificationError

    from journeys.services.stream import stream_deliver
    from journeys.services.stream_destinations import destination_rotate_secret

    # given a destination whose secret was just rotated
    dest, old = destination()
    new = destination_rotate_secret(destination=dest, reason="yearly rotation")
    assert new != old

    # when an event goes out
    stream_emit(items=items(1))
    stream_deliver(destination_id=dest.pk)

    # then it verifies with either secret
    request = vendor.requests[-1]
    assert len(headers(request)["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(request.body, headers(request))
    Webhook(old).verify(request.body, headers(request))

    # and once the overlap is over, only with the new one
    StreamDestination.objects.filter(pk=dest.pk).update(secret_rotated_at=timezone.now() - timedelta(days=2))
    stream_emit(items=items(1, start=1))
    stream_deliver(destination_id=dest.pk)
    request = vendor.requests[-1]
    Webhook(new).verify(request.body, headers(request))
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(request.body, headers(request))


def test_rotating_in_the_admin_shows_the_new_secret_and_the_overlap(destination, vendor, admin_client):
    from django.urls import reverse

    dest, old = destination()
    response = admin_client.post(reverse("admin:journeys_streamdestination_changelist"), {
        "action": "rotate_secrets", "_selected_action": [dest.pk], "reason": "yearly"}, follow=True)
    text = response.content.decode()
    dest.refresh_from_db()
    assert "New signing secret for warehouse" in text and "old one too for 1d" in text
    assert dest.previous_secret_salt and dest.secret_rotated_at is not None
