"""The deliveries admin's "Send failed or deferred deliveries again now": a confirmation page
first, and a message that never rendered (its template failed) is rendered again from its
fixed template before it is sent, or refused; it never goes out blank."""

from __future__ import annotations

import pytest

from channels_app.models import Delivery
from tests.channels_app.conftest import HOOK, orders
from tests.channels_app.factories import TemplateFactory, topic

pytestmark = pytest.mark.django_db

ACTION = "/admin/channels_app/delivery/"


def requeue(client, capture, ids, **extra):
    with capture(execute=True):
        return client.post(ACTION, {"action": "requeue", "_selected_action": ids, **extra}, follow=bool(extra))


def told(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_message_whose_template_failed_is_rendered_again_from_the_fixed_template(
        order_hook, api, vendor, admin_client, django_capture_on_commit_callbacks):
    # given two orders, one without a total: its message fails to render (nothing posted)
    orders(api, django_capture_on_commit_callbacks, {"ref": "A", "total": 5}, {"ref": "B"})
    failed = Delivery.objects.get(status="failed")
    assert (failed.reason, failed.body, failed.attempts) == ("template_error", "", 0)
    assert [r.json()["payload"]["ref"] for r in vendor.requests] == ["A"]
    sent = Delivery.objects.get(status="sent")

    # and the on-call fixes the template
    order_hook.body = HOOK % "|default:0"
    order_hook.save()

    # when they choose the action on both rows: a confirmation page first, and nothing is sent yet
    page = requeue(admin_client, django_capture_on_commit_callbacks, [failed.pk, sent.pk])
    assert page.status_code == 200
    text = page.content.decode()
    assert "Send <b>1</b> of the 2 selected deliveries again now" in text
    assert "<td>hook</td><td>failed</td><td>1</td><td>1</td>" in text
    assert "1 of them never rendered" in text and "1 selected delivery is not failed or deferred" in text
    assert len(vendor.requests) == 1

    # and when they confirm
    done = requeue(admin_client, django_capture_on_commit_callbacks, [failed.pk, sent.pk], post="yes")

    # then the failed one is rendered from the fixed template with its order's data, and sent
    failed.refresh_from_db()
    assert failed.status == "sent" and failed.body
    assert vendor.requests[-1].json()["payload"] == {"ref": "B", "user": "u-B", "total": 0}
    assert len(vendor.requests) == 2
    assert told(done) == ["1 delivery queued to be sent again now (1 rendered again from their template first).",
                          "1 delivery left alone: only failed or deferred deliveries are sent again."]


def test_a_message_that_still_does_not_render_is_refused_never_sent_blank(
        order_hook, api, vendor, admin_client, django_capture_on_commit_callbacks):
    # given an order whose message failed to render, and a template nobody fixed
    orders(api, django_capture_on_commit_callbacks, {"ref": "B"})
    failed = Delivery.objects.get()

    # when the on-call sends it again
    done = requeue(admin_client, django_capture_on_commit_callbacks, [failed.pk], post="yes")

    # then nothing is posted, the row stays failed as it was, and the message says how many and why
    assert vendor.requests == []
    failed.refresh_from_db()
    assert (failed.status, failed.reason, failed.body, failed.attempts) == ("failed", "template_error", "", 0)
    [message] = told(done)
    assert message.startswith("1 delivery not sent (a message is never sent without content) - 1: never rendered, "
                              "and it still fails: ")
    assert "not valid JSON" in message


def test_an_sms_that_never_rendered_outside_any_run_is_refused(
        sms, vendor, admin_client, django_capture_on_commit_callbacks):
    from channels_app.services import message_send
    from tests.channels_app.factories import CustomerFactory

    # given a message of a run whose SMS template renders over the segment limit (a bad edit)
    long = TemplateFactory(topic=topic("product_updates"), subject="", body=(
        "{% for c in 'abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz' %}"
        "Hi {{ profile.first_name }}, your cart is waiting. {% endfor %}"))
    customer = CustomerFactory(phone="+15550001", traits={"first_name": "Bea"})
    with django_capture_on_commit_callbacks(execute=True):
        blank = message_send(customer=customer, template=long, channel=sms, idempotency_key="no-run", context={})
    assert (blank.status, blank.reason, blank.body) == ("failed", "template_error", "")

    # when it is sent again (its template unchanged, and it was sent outside any run)
    done = requeue(admin_client, django_capture_on_commit_callbacks, [blank.pk], post="yes")

    # then no blank SMS reaches the vendor
    assert vendor.requests == []
    assert "never rendered, and it was not sent by a journey run" in told(done)[0]
    blank.refresh_from_db()
    assert blank.status == "failed"


def test_only_who_may_change_deliveries_may_send_them_again(
        order_hook, api, vendor, client, django_capture_on_commit_callbacks):
    # given a message that failed, someone given only the right to read deliveries, and an ops admin
    from django.contrib.auth.models import Group, Permission

    from journeys.services.governance import ROLE_OPS, roles_setup
    from tests.factories import UserFactory

    orders(api, django_capture_on_commit_callbacks, {"ref": "B"})
    failed = Delivery.objects.get(status="failed")
    roles_setup()
    reader, ops = (UserFactory(username=name, is_staff=True) for name in ("reader", "ops"))
    reader.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    ops.groups.add(Group.objects.get(name=ROLE_OPS))

    # when the reader opens the list and posts the action anyway
    client.force_login(reader)
    listed = client.get(ACTION)
    refused = requeue(client, django_capture_on_commit_callbacks, [failed.pk], post="yes")

    # then the action is not offered, and nothing is queued
    assert listed.status_code == 200 and b'value="requeue"' not in listed.content
    assert refused.status_code == 200 and "queued" not in " ".join(told(refused))
    failed.refresh_from_db()
    assert failed.status == "failed"

    # while an ops admin is offered it
    client.force_login(ops)
    assert b'value="requeue"' in client.get(ACTION).content


def test_a_message_held_until_its_send_time_is_left_alone_and_keeps_its_time(
        order_hook, api, vendor, admin_client, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    orders(api, django_capture_on_commit_callbacks, {"ref": "A", "total": 5})
    held = Delivery.objects.get()
    at = timezone.now() + timedelta(hours=3)
    Delivery.objects.filter(pk=held.pk).update(status="deferred", reason="send_time", next_attempt_at=at)

    page = requeue(admin_client, django_capture_on_commit_callbacks, [held.pk])
    assert "usual engagement hour (1: they go out then)" in page.content.decode()
    done = requeue(admin_client, django_capture_on_commit_callbacks, [held.pk], post="yes")

    held.refresh_from_db()
    assert (held.status, held.reason, held.next_attempt_at) == ("deferred", "send_time", at)
    assert len(vendor.requests) == 1
    assert told(done) == ["1 delivery left alone: held until the customer's usual engagement hour, they go out then."]


def test_a_message_sent_after_waiting_for_an_event_is_rendered_again_from_that_event(
        vendor, api, admin_client, django_capture_on_commit_callbacks, monkeypatch):
    """The engine renders a send step after wait_for_event with the awaited event, not the trigger."""
    from tests.channels_app.conftest import HOOK, hook_workflow

    template = hook_workflow(vendor, monkeypatch, name="checkout", definition={
        "trigger_event": "Checkout Started",
        "steps": [{"key": "wait", "kind": "wait_for_event", "config": {"event": "Order Completed", "timeout": "1d"}},
                  {"key": "hook", "kind": "send_message", "config": {"channel": "hook", "template": "order-hook"}}],
        "edges": [{"from": "wait", "outcome": "event", "to": "hook"}]})
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "track", "userId": "u-A", "event": "Checkout Started", "messageId": "m1",
                                      "properties": {"ref": "cart", "total": 9}}]})
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", {"batch": [{"type": "track", "userId": "u-A", "event": "Order Completed", "messageId": "m2",
                                      "properties": {"ref": "order"}}]})  # no total: the message fails to render
    failed = Delivery.objects.get()
    assert (failed.status, failed.reason) == ("failed", "template_error")

    template.body = HOOK % "|default:0"
    template.save()
    requeue(admin_client, django_capture_on_commit_callbacks, [failed.pk], post="yes")

    failed.refresh_from_db()
    assert failed.status == "sent"
    assert vendor.requests[-1].json()["payload"] == {"ref": "order", "user": "u-A", "total": 0}
