"""Quiet hours in the customer's timezone, frequency caps, the gap after the last contact
on another channel. A held message waits (deferred) or is suppressed with its reason."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.services import deliveries_dispatch, deliveries_dispatch_due, delivery_dispatch, message_send
from tests.channels_app.factories import CapFactory, ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.factories import xact_table_stat

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)


@pytest.fixture
def sms():
    return ChannelFactory(name="sms", kind="sms", provider="console", quiet_start=time(21, 0), quiet_end=time(8, 0))


@pytest.fixture
def email():
    return ChannelFactory(name="email", kind="email", provider="console")


def person(name: str, tz: str):
    return CustomerFactory(external_id=name, phone=f"+1555{abs(hash(name)) % 10**6:06d}", timezone=tz)


def queue(channel, customer, key, *, template=None, now=T0, policy=None, django_capture_on_commit_callbacks):
    """Record the delivery at `now` and dispatch it as the worker would at `now`."""
    template = template or TemplateFactory(topic=topic("product_updates"))
    with django_capture_on_commit_callbacks(execute=False):
        delivery = message_send(customer=customer, template=template, channel=channel, idempotency_key=key,
                                context={}, policy_options=policy, now=now)
    return delivery_dispatch(delivery_id=delivery.pk, now=now)


def test_quiet_hours_follow_each_customers_clock(sms, django_capture_on_commit_callbacks):
    tokyo, new_york = person("tokyo", "Asia/Tokyo"), person("ny", "America/New_York")

    night = queue(sms, tokyo, "t", django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)  # 22:00 JST
    day = queue(sms, new_york, "n", django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)  # 09:00 EDT

    assert day.status == "sent"
    assert (night.status, night.reason) == ("deferred", "quiet_hours")
    assert night.next_attempt_at == datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo
    assert "Asia/Tokyo" in night.error

    deliveries_dispatch_due(now=night.next_attempt_at - timedelta(minutes=1))
    assert Delivery.objects.get(pk=night.pk).status == "deferred"
    deliveries_dispatch_due(now=night.next_attempt_at)
    night.refresh_from_db()
    assert night.status == "sent" and night.sent_at == datetime(2026, 3, 10, 23, 0, tzinfo=UTC)


def test_quiet_hours_end_is_computed_in_local_time_across_a_dst_change(sms, django_capture_on_commit_callbacks):
    new_york = person("ny", "America/New_York")
    before_jump = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # 01:30 EST; clocks go to EDT at 02:00

    held = queue(sms, new_york, "n", now=before_jump, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    assert held.next_attempt_at == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # 08:00 EDT, not 13:00 UTC


@pytest.mark.parametrize(("now", "until"), [
    # 2026-11-01, clocks set back at 02:00 EDT: 01:00-02:00 comes twice
    (datetime(2026, 11, 1, 5, 10, tzinfo=UTC), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),  # first 01:10 (EDT)
    (datetime(2026, 11, 1, 6, 10, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),  # second 01:10 (EST)
])
def test_quiet_hours_ending_in_the_hour_the_clock_repeats_hold_until_a_moment_to_come(
        now, until, django_capture_on_commit_callbacks):
    # given quiet hours 23:00-01:30 on a New York customer's clock, on the night it is set back
    night = ChannelFactory(name="night", kind="sms", provider="console", quiet_start=time(23, 0),
                           quiet_end=time(1, 30))
    new_york = person("ny", "America/New_York")

    # when a message is sent at 01:10, the first or the second time the clock reads it
    held = queue(night, new_york, "n", now=now, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    # then it waits for the 01:30 that follows it (never a moment already past, which the
    # dispatcher would claim and hold again at once, over and over)
    assert (held.status, held.reason, held.next_attempt_at) == ("deferred", "quiet_hours", until)
    assert deliveries_dispatch_due(now=now + timedelta(minutes=1)) == 0
    assert Delivery.objects.get(pk=held.pk).attempts == held.attempts
    deliveries_dispatch_due(now=until)
    assert Delivery.objects.get(pk=held.pk).status == "sent"


def test_quiet_hours_ending_at_a_time_the_clock_skips_end_when_it_jumps(django_capture_on_commit_callbacks):
    # given quiet hours 23:00-02:30 on a New York customer's clock, on the night it jumps from 02:00 to 03:00
    night = ChannelFactory(name="night", kind="sms", provider="console", quiet_start=time(23, 0),
                           quiet_end=time(2, 30))
    new_york = person("ny", "America/New_York")

    # when a message is sent at 01:30 EST
    held = queue(night, new_york, "n", now=datetime(2026, 3, 8, 6, 30, tzinfo=UTC),
                 django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    # then it waits until the jump (03:00 EDT, the first moment the clock reads 02:30 or later)
    assert (held.status, held.reason) == ("deferred", "quiet_hours")
    assert held.next_attempt_at == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_transactional_messages_ignore_quiet_hours(sms, django_capture_on_commit_callbacks):
    tokyo = person("tokyo", "Asia/Tokyo")
    receipt = TemplateFactory(topic=topic("transactional"))
    sent = queue(sms, tokyo, "r", template=receipt, django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    assert sent.status == "sent"


def test_global_cap_suppresses_the_extra_message(email, sms, django_capture_on_commit_callbacks):
    CapFactory(name="one a day", limit=1, window_s=86400, action="suppress")
    ada = person("ada", "UTC")
    kw = {"django_capture_on_commit_callbacks": django_capture_on_commit_callbacks}

    first = queue(email, ada, "1", **kw)
    second = queue(sms, ada, "2", now=T0 + timedelta(hours=1), **kw)
    next_day = queue(sms, ada, "3", now=T0 + timedelta(hours=25), **kw)

    assert first.status == "sent"
    assert (second.status, second.reason) == ("suppressed", "frequency_cap")
    assert "one a day" in second.error
    assert next_day.status == "sent"


def test_topic_cap_defers_until_the_window_allows(email, django_capture_on_commit_callbacks):
    CapFactory(name="updates", topic=topic("product_updates"), limit=2, window_s=3600, action="defer")
    ada = person("ada", "UTC")
    kw = {"django_capture_on_commit_callbacks": django_capture_on_commit_callbacks}
    updates = TemplateFactory(topic=topic("product_updates"))
    marketing_free = TemplateFactory(topic=topic("transactional"))

    queue(email, ada, "1", template=updates, **kw)
    queue(email, ada, "2", template=updates, now=T0 + timedelta(minutes=10), **kw)
    third = queue(email, ada, "3", template=updates, now=T0 + timedelta(minutes=20), **kw)
    other = queue(email, ada, "4", template=marketing_free, now=T0 + timedelta(minutes=21), **kw)

    assert (third.status, third.reason) == ("deferred", "frequency_cap")
    assert third.next_attempt_at == T0 + timedelta(hours=1, seconds=1)
    assert other.status == "sent"  # other topics (and transactional ones) are not capped by it
    deliveries_dispatch_due(now=third.next_attempt_at)
    third.refresh_from_db()
    assert third.status == "sent"


def test_channel_cap_counts_only_that_channel(email, sms, django_capture_on_commit_callbacks):
    CapFactory(name="sms daily", channel=sms, limit=1, window_s=86400)
    ada = person("ada", "UTC")
    kw = {"django_capture_on_commit_callbacks": django_capture_on_commit_callbacks}
    assert queue(email, ada, "1", **kw).status == "sent"
    assert queue(sms, ada, "2", **kw).status == "sent"
    assert queue(email, ada, "3", **kw).status == "sent"
    assert queue(sms, ada, "4", **kw).reason == "frequency_cap"


@pytest.mark.parametrize("action,expected", [("defer", "deferred"), ("suppress", "suppressed")])
def test_no_send_within_the_gap_after_contact_on_another_channel(email, sms, action, expected,
                                                                 django_capture_on_commit_callbacks):
    ada = person("ada", "UTC")
    kw = {"django_capture_on_commit_callbacks": django_capture_on_commit_callbacks}
    gap = {"min_gap_other_channel_s": 4 * 3600, "recent_contact_action": action}
    queue(email, ada, "mail", **kw)

    sms_soon = queue(sms, ada, "sms", now=T0 + timedelta(hours=1), policy=gap, **kw)
    email_soon = queue(email, ada, "mail2", now=T0 + timedelta(hours=1), policy=gap, **kw)  # same channel: fine

    assert (sms_soon.status, sms_soon.reason) == (expected, "recent_contact")
    assert email_soon.status == "sent"
    if action == "defer":
        assert sms_soon.next_attempt_at == T0 + timedelta(hours=4)
        deliveries_dispatch_due(now=T0 + timedelta(hours=4))
        sms_soon.refresh_from_db()  # the second email (at +1h) moved the gap on: now +5h
        assert (sms_soon.status, sms_soon.next_attempt_at) == ("deferred", T0 + timedelta(hours=5))
        deliveries_dispatch_due(now=T0 + timedelta(hours=5))
        sms_soon.refresh_from_db()
        assert sms_soon.status == "sent"


def test_recent_engagement_counts_as_contact(sms, django_capture_on_commit_callbacks):
    ada = person("ada", "UTC")
    ada.last_engaged_at = T0 - timedelta(minutes=30)
    ada.save()
    held = queue(sms, ada, "x", policy={"min_gap_other_channel_s": 3600, "recent_contact_action": "suppress"},
                 django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)
    assert held.reason == "recent_contact"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="reads PostgreSQL's per-transaction table counters")
def test_a_frequency_cap_reads_the_recent_contacts_not_the_customers_whole_history(
        email, django_capture_on_commit_callbacks):
    """Given a daily cap of 3 and 21 customers with 300 messages each from the last year and one
    (the last customer: three) today, when a batch of one new message each for the first 20 is
    claimed, then the claim fetches their recent contacts from the deliveries table, not every
    row of their histories, and all 20 go out; the last customer's is held by the cap."""
    CapFactory(limit=3, window_s=86400)
    people = [CustomerFactory(external_id=f"h{i}", email=f"h{i}@example.com") for i in range(21)]
    now = timezone.now()
    Delivery.objects.bulk_create([
        Delivery(idempotency_key=f"old-{c.pk}-{n}", customer=c, channel=email, status="sent", attempts=1,
                 claimed_at=now - timedelta(days=n + 2), sent_at=now - timedelta(days=n + 2))
        for c in people for n in range(300)])
    recent = [1] * 20 + [3]  # the last customer has had 3 today
    Delivery.objects.bulk_create([
        Delivery(idempotency_key=f"today-{c.pk}-{n}", customer=c, channel=email, status="delivered", attempts=1,
                 claimed_at=now - timedelta(hours=n + 1), sent_at=now - timedelta(hours=n + 1))
        for c, count in zip(people, recent) for n in range(count)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE channels_app_delivery")
    template = TemplateFactory(topic=topic("product_updates"))
    with django_capture_on_commit_callbacks(execute=False):
        new = [message_send(customer=c, template=template, channel=email, idempotency_key=f"new-{c.pk}", context={})
               for c in people]

    before = xact_table_stat("channels_app_delivery", "seq_tup_read", "idx_tup_fetch")
    deliveries_dispatch(delivery_ids=[d.pk for d in new[:20]])
    read = xact_table_stat("channels_app_delivery", "seq_tup_read", "idx_tup_fetch") - before
    deliveries_dispatch(delivery_ids=[new[20].pk])

    states = dict(Delivery.objects.filter(pk__in=[d.pk for d in new]).values_list("customer_id", "status"))
    assert [states[c.pk] for c in people] == ["sent"] * 20 + ["suppressed"]
    assert read < 300, read  # the 20 new rows, their 20 recent contacts, locks and rereads; not 6,000 old rows


@pytest.mark.parametrize("report", ["delivered", "bounced"])
def test_a_message_reported_on_before_its_batch_is_recorded_counts_under_the_cap(
        email, sms, report, django_capture_on_commit_callbacks):
    """The vendor accepted the email (the send's mark) and reported it delivered before the
    dispatcher's batch wrote its results: it is a contact all the same, and the SMS a minute
    later is held by a cap of one a day."""
    from channels_app.services.tracking import delivery_status_record

    CapFactory(name="one a day", limit=1, window_s=86400, action="suppress")
    ada = person("ada", "UTC")
    # delivered: after the send's mark; a bounce can come even before it (the claim's moment counts)
    email_sent = Delivery.objects.create(idempotency_key="in-flight", customer=ada, channel=email, status="sending",
                                         attempts=1, claimed_at=T0, accepted_at=T0 if report == "delivered" else None)
    with django_capture_on_commit_callbacks(execute=False):
        delivery_status_record(delivery_id=email_sent.pk, status=report, at=T0 + timedelta(seconds=2))

    second = queue(sms, ada, "2", now=T0 + timedelta(minutes=1), django_capture_on_commit_callbacks=django_capture_on_commit_callbacks)

    assert (second.status, second.reason) == ("suppressed", "frequency_cap")
    email_sent.refresh_from_db()
    assert (email_sent.status, email_sent.sent_at) == (report, T0)


def test_transactional_messages_do_not_use_up_a_marketing_cap(email, sms, django_capture_on_commit_callbacks):
    """Given a global cap of 1 a day, when a customer gets two receipts, then today's campaign still reaches
    them (the receipts went out over the cap and are not counted), and a second campaign message is capped."""
    CapFactory(name="one a day", limit=1, window_s=86400, action="suppress")
    ada = person("ada", "UTC")
    kw = {"django_capture_on_commit_callbacks": django_capture_on_commit_callbacks}
    receipt = TemplateFactory(topic=topic("transactional"))

    receipts = [queue(email, ada, f"r{i}", template=receipt, now=T0 + timedelta(minutes=i), **kw) for i in range(2)]
    campaign = queue(sms, ada, "c1", now=T0 + timedelta(minutes=5), **kw)
    another = queue(email, ada, "c2", now=T0 + timedelta(minutes=6), **kw)

    assert [r.status for r in receipts] == ["sent", "sent"] and all(r.transactional for r in receipts)
    assert campaign.status == "sent"
    assert (another.status, another.reason, another.error) == ("suppressed", "frequency_cap",
                                                                "cap one a day: 1/1 in 86400s")
