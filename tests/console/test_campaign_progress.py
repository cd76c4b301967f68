"""A campaign watched by ops: a paused workflow stays on the dashboard with what it holds; each
live workflow shows its messages (queued, held, sending, sent, rate, ETA) on the dashboard and
its graph page; the deliveries list filters by workflow and says what holds a message *now*;
the events chart tells customers' events from the product's own."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest
from django.urls import reverse
from django.utils import timezone

from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.services import deliveries_dispatch, message_send
from journeys.models import BusinessUnit, JourneyRun, Workflow
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def _campaign(name: str, event: str) -> Workflow:
    workflow = workflow_create(name=name, business_unit=BusinessUnit.objects.get(slug="retention"))
    version_publish(version=version_build(workflow=workflow, definition={
        "trigger_event": event, "reentry_policy": "always",
        "steps": [{"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "cart-reminder"}}],
    }), reason="test")
    return Workflow.objects.get(pk=workflow.pk)


@pytest.fixture
def sale(demo):
    return _campaign("Winter sale", "Sale Started")


def _sent_to(send, customers, event="Sale Started"):
    """Each customer enters the campaign through the event API; its message is sent at once."""
    for customer in customers:
        send(userId=customer.external_id, event=event)


def _queued(workflow, customers, django_capture_on_commit_callbacks, key="later"):
    """One more message per customer's run, recorded but not handed to a worker yet (queued)."""
    template, email = MessageTemplate.objects.get(name="cart-reminder"), Channel.objects.get(name="email")
    ids = []
    with django_capture_on_commit_callbacks(execute=False):
        for customer in customers:
            run = JourneyRun.objects.get(workflow=workflow, customer=customer)
            ids.append(message_send(customer=customer, template=template, channel=email, context={},
                                    idempotency_key=f"{key}:{run.pk}", run_id=run.pk, step_key="mail").pk)
    return ids


def _pause(client, workflow, action="pause"):
    """The workflow list's Pause / Resume action, with its reason, as ops use it."""
    response = client.post(reverse("admin:journeys_workflow_changelist"), {
        "action": action, "_selected_action": workflow.pk, "reason": f"{action} the campaign", "index": 0})
    assert response.status_code == 302


def _held_by_a_pause(client, workflow, send, n, django_capture_on_commit_callbacks) -> list[int]:
    """n customers got the campaign's message and have one more on its way when ops pauses the
    workflow from its list; a worker then picks those up and holds them. Returns their ids."""
    customers = CustomerFactory.create_batch(n)
    _sent_to(send, customers)
    held = _queued(workflow, customers, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        _pause(client, workflow)
    deliveries_dispatch(delivery_ids=held)
    return held


def _dashboard(client) -> dict:
    response = client.get(reverse("console:dashboard_data"))
    assert response.status_code == 200
    return response.json()


def test_a_paused_workflow_stays_on_the_dashboard_marked_paused_with_what_it_holds(
        sale, ops, send, django_capture_on_commit_callbacks):
    # given a campaign that sent to four customers and has four more messages on their way when
    # ops pauses it from the workflow list; a worker then picks the messages up
    held = _held_by_a_pause(ops, sale, send, 4, django_capture_on_commit_callbacks)
    assert set(Delivery.objects.filter(pk__in=held).values_list("status", "reason")) == {("deferred", "paused")}

    # then the dashboard still lists it, marked paused, with the messages it holds and why
    data = _dashboard(ops)
    row = data["metrics"]["workflows"]["Winter sale"]
    assert row["status"] == "paused"
    assert (row["messages"]["held"], row["messages"]["queued"], row["messages"]["sending"]) == (4, 0, 0)
    assert [(h["key"], h["n"]) for h in row["messages"]["held_by"]] == [("workflow_paused", 4)]
    assert row["messages"]["eta_label"] == "nothing due, all held"
    assert data["metrics"]["paused_workflows"] == 1
    assert data["metrics"]["live_workflows"] == Workflow.objects.filter(live_version__isnull=False).count()
    html = re.sub(r"\s+", " ", data["html"])
    assert f'<tr data-workflow="{sale.pk}" class="workflow-paused">' in html
    assert 'Winter sale <small>Retention</small> <span class="pill paused">paused</span>' in html
    assert "4 held (workflow paused)" in html

    # and after the resume the row is live again and the messages went out
    with django_capture_on_commit_callbacks(execute=True):
        _pause(ops, sale, "resume")
    row = _dashboard(ops)["metrics"]["workflows"]["Winter sale"]
    assert row["status"] == "active" and row["messages"]["held"] == 0
    assert Delivery.objects.filter(pk__in=held, status="sent").count() == 4


def test_each_live_workflow_shows_its_messages_with_a_send_rate_and_an_eta(
        sale, ops, send, django_capture_on_commit_callbacks):
    # given a campaign whose runs are all "completed" (their step recorded the message) while
    # six messages went out in the last minutes and three are still queued
    customers = CustomerFactory.create_batch(6)
    _sent_to(send, customers)
    _queued(sale, customers[:3], django_capture_on_commit_callbacks)
    assert set(JourneyRun.objects.filter(workflow=sale).values_list("status", flat=True)) == {"completed"}

    # when ops reads the dashboard
    messages = _dashboard(ops)["metrics"]["workflows"]["Winter sale"]["messages"]

    # then the campaign is not "done": 3 queued, 6 sent in the last 5 minutes (1.2 a minute), so
    # the queued ones need about 2.5 more minutes
    assert (messages["queued"], messages["held"], messages["sending"]) == (3, 0, 0)
    assert (messages["sent_recent"], messages["window_min"], messages["rate_per_min"]) == (6, 5, 1.2)
    assert messages["eta_s"] == 150 and messages["eta_label"] == "~2 min"

    # and a message sent then reported bounced counts as bounced, not also as sent
    bounced = Delivery.objects.filter(run_id__in=JourneyRun.objects.filter(workflow=sale).values("pk"),
                                      status="sent").order_by("pk").first()
    Delivery.objects.filter(pk=bounced.pk).update(status="bounced", updated_at=timezone.now())
    messages = _dashboard(ops)["metrics"]["workflows"]["Winter sale"]["messages"]
    assert (messages["sent_recent"], messages["bounced_recent"], messages["rate_per_min"]) == (5, 1, 1.0)
    Delivery.objects.filter(pk=bounced.pk).update(status="sent")

    # and the graph page of the live version says how far the send is and links to its messages
    page = ops.get(reverse("console:version_graph", args=[sale.live_version_id])).content.decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "Messages of v1: 6 of 9 sent · 0 suppressed · 0 failed · 0 bounced · 3 not sent yet" in text
    assert "3 queued · 0 held · 0 sending · 1.2/min · ETA ~2 min" in text
    link = re.search(r'href="(/admin/channels_app/delivery/\?workflow=[^"]+)"', page).group(1).replace("&amp;", "&")
    listed = ops.get(link)
    assert link.startswith(f"{reverse('admin:channels_app_delivery_changelist')}?workflow={sale.pk}&")
    assert listed.status_code == 200 and len(listed.context["cl"].result_list) == 3


def test_the_deliveries_list_filters_by_workflow_from_the_workflows_table(
        sale, ops, send, django_capture_on_commit_callbacks):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given two campaigns and a draft-only workflow
    spring = _campaign("Spring sale", "Spring Started")
    workflow_create(name="Not live yet", business_unit=BusinessUnit.objects.get(slug="retention"))
    winter_customers, spring_customers = CustomerFactory.create_batch(3), CustomerFactory.create_batch(2)
    _sent_to(send, winter_customers)
    _sent_to(send, spring_customers, event="Spring Started")
    url = reverse("admin:channels_app_delivery_changelist")

    # when ops filters the deliveries by the spring campaign
    with CaptureQueriesContext(connection) as queries:
        page = ops.get(f"{url}?workflow={spring.pk}")

    # then only its messages are listed, and the filter's choices come from the workflows table
    assert page.status_code == 200
    shown = {d.customer.external_id for d in page.context["cl"].result_list}
    assert shown == {c.external_id for c in spring_customers}
    assert "Winter sale" in page.content.decode() and "Not live yet" not in page.content.decode()
    reads_of_deliveries_for_choices = [q["sql"] for q in queries.captured_queries
                                       if "DISTINCT" in q["sql"] and "channels_app_delivery" in q["sql"]]
    assert reads_of_deliveries_for_choices == []
    # a workflow id that is not a number is refused, not a server error
    refused = ops.get(f"{url}?workflow=abc")
    assert refused.status_code == 302 and refused["Location"].endswith("?e=1")


def test_the_deliveries_list_says_what_holds_a_message_now(sale, ops, send, django_capture_on_commit_callbacks):
    # given two messages held by a workflow pause
    held = _held_by_a_pause(ops, sale, send, 2, django_capture_on_commit_callbacks)
    url = reverse("admin:channels_app_delivery_changelist")

    def column(query=""):
        page = ops.get(f"{url}?status__exact=deferred{query}")
        assert page.status_code == 200
        return [page.context["cl"].model_admin.held_by(d) for d in page.context["cl"].result_list]

    # then the list says the workflow holds them (not the channel), and so do the filters
    assert [text.split(",")[0] for text in column()] == ["Held: workflow paused"] * 2
    page = ops.get(f"{url}?hold=workflow_paused").content.decode()
    assert "Channel paused" not in page and "Paused (channel, workflow or safe mode)" in page
    assert len(column("&hold=workflow_paused")) == 2 and column("&hold=channel_paused") == []
    one = ops.get(reverse("admin:channels_app_delivery_change", args=[held[0]])).content.decode()
    assert "Held: workflow paused" in one and "Channel paused" not in one

    # when the email channel is paused as well, the channel's pause is what holds them first
    Channel.objects.filter(name="email").update(paused=True)
    assert [text.split(",")[0] for text in column()] == ["Held: channel paused"] * 2

    # when both are lifted but no worker has looked at the messages yet, they are no longer held
    Channel.objects.filter(name="email").update(paused=False)
    with django_capture_on_commit_callbacks(execute=False):  # the release task has not run yet
        _pause(ops, sale, "resume")
    texts = column()
    assert all(t.startswith("No longer held (was: workflow paused); looked at again ") for t in texts), texts
    assert column("&hold=workflow_paused") == [] and len(column("&hold=due")) == 2
    # and once their time has come they are due, waiting their turn
    Delivery.objects.filter(pk__in=held).update(next_attempt_at=timezone.now() - timedelta(minutes=2))
    assert all(t.startswith("Due since ") and t.endswith("waiting its turn (was held: workflow paused)")
               for t in column())


def test_events_per_minute_tell_customer_events_from_the_products_own(sale, ops, send):
    # given three customers who entered the campaign (three events) and got its message (three
    # "Message Sent" events the product recorded itself)
    _sent_to(send, CustomerFactory.create_batch(3))

    metrics = _dashboard(ops)["metrics"]

    # then the headline counts the customers' events, the product's are shown apart
    assert metrics["events_last_minute"] == 3 and sum(metrics["events_per_minute"]) == 3
    assert metrics["product_events_last_minute"] >= 3 and sum(metrics["product_events_per_minute"]) >= 3
    html = _dashboard(ops)["html"]
    assert 'id="m-product-events-last-minute"' in html and "recorded by the product" in html


def test_messages_whose_worker_died_show_as_waiting_for_its_lease_not_as_sending(
        sale, ops, send, django_capture_on_commit_callbacks):
    # given a campaign with three messages claimed by a worker that died three minutes ago (its
    # claim waits for the send lease) and one claimed just now by a live worker
    from channels_app.services.claim import deliveries_claim, sending_lease

    customers = CustomerFactory.create_batch(4)
    _sent_to(send, customers)
    ids = _queued(sale, customers, django_capture_on_commit_callbacks)
    died_at = timezone.now() - timedelta(minutes=3)
    deliveries_claim(ids=ids[:3], now=died_at)
    deliveries_claim(ids=ids[3:], now=timezone.now())
    assert Delivery.objects.filter(pk__in=ids, status="sending").count() == 4

    # when ops reads the dashboard
    data = _dashboard(ops)
    messages = data["metrics"]["workflows"]["Winter sale"]["messages"]

    # then only the live worker's message is "sending"; the three others wait for the lost
    # worker's lease, until it ends, and the ETA does not count them as being sent
    assert (messages["queued"], messages["held"], messages["sending"]) == (0, 3, 1)
    until = Delivery.objects.get(pk=ids[0]).claimed_at + sending_lease()
    assert [(h["key"], h["n"]) for h in messages["held_by"]] == [("lease", 3)]
    html = unescape(re.sub(r"\s+", " ", data["html"]))
    assert f"3 held (Waiting for a lost worker's lease until {timezone.localtime(until):%H:%M} UTC)" in html
    assert "1 sending" in html


def test_a_hold_ending_on_another_day_shows_its_date(sale, ops, send, django_capture_on_commit_callbacks,
                                                    monkeypatch):
    """Given messages a frequency cap holds until tomorrow and others a rate limit holds for a minute,
    the dashboard gives the date of tomorrow's end (a time alone reads as one already past) and only the
    time of today's. The dashboard is read at noon, whatever the clock says (a minute before midnight,
    "in a minute" is tomorrow)."""
    customers = CustomerFactory.create_batch(3)
    _sent_to(send, customers)
    capped = _queued(sale, customers[:2], django_capture_on_commit_callbacks)
    [limited] = _queued(sale, customers[2:], django_capture_on_commit_callbacks)
    noon = timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)
    tomorrow, soon = noon + timedelta(days=1), noon + timedelta(minutes=1)
    Delivery.objects.filter(pk__in=capped).update(status="deferred", reason="frequency_cap", next_attempt_at=tomorrow)
    Delivery.objects.filter(pk=limited).update(status="deferred", reason="rate_limit", next_attempt_at=soon)
    monkeypatch.setattr(timezone, "now", lambda: noon)

    html = re.sub(r"\s+", " ", _dashboard(ops)["html"])

    assert f"frequency cap until {tomorrow:%Y-%m-%d %H:%M} UTC" in html, html
    assert f"until {soon:%H:%M} UTC" in html and f"until {soon:%Y-%m-%d}" not in html, html
