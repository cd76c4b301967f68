"""The ops home dashboard: its numbers, its charts, its JSON feed and who may see it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from journeys.models import BusinessUnit, Event, Source, Workflow
from journeys.console.selectors import dashboard_deliveries
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db


def _metrics(client) -> dict:
    response = client.get(reverse("console:dashboard_data"))
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    return response.json()["metrics"]


def test_dashboard_shows_live_traffic(traffic, admin_client):
    # given sign-ups (two still waiting for activation) and an escalated support message
    # when ops opens the dashboard feed
    metrics = _metrics(admin_client)

    # then every panel has the figures of what just happened
    live = Workflow.objects.filter(live_version__isnull=False, status="active").count()
    assert live >= 4 and metrics["live_workflows"] == live  # the demo workflows and Onboarding
    received = Event.objects.exclude(source__name="internal").count()  # the five sent
    product = Event.objects.filter(source__name="internal").count()  # case opened, message sent...
    assert received == 5 and product > 0
    assert metrics["events_last_minute"] == received
    assert sum(metrics["events_per_minute"][-2:]) == sum(metrics["events_per_minute"]) == received
    assert metrics["product_events_last_minute"] == sum(metrics["product_events_per_minute"]) == product
    assert metrics["runs"] == {"active": 0, "waiting": 2, "failed_24h": 0}
    assert metrics["deliveries"] == {"sent": 1, "suppressed": 0, "failed": 0, "bounced": 0,
                                     "pending": 0}
    assert {"email", "push", "sms"} <= set(metrics["circuits"])
    assert set(metrics["circuits"].values()) == {"closed"}
    assert metrics["cases"]["total"] == 1 and metrics["cases"]["breached"] == 0
    assert metrics["queue"]["pending_events"] == 0 and metrics["queue"]["oldest_pending_at"] is None


def test_dashboard_page_draws_svg_charts_and_refreshes_from_the_feed(traffic, admin_client):
    page = admin_client.get(reverse("console:dashboard") + "?refresh=5").content.decode()
    assert 'data-refresh="5"' in page and reverse("console:dashboard_data") in page
    assert page.count('<svg class="chart"') == 3  # events, messages, cases
    assert "events received per minute" in page and "open cases by SLA" in page
    assert "/static/console/console.js" in page
    # the feed returns the same panels, server-rendered, for the page to swap in
    html = admin_client.get(reverse("console:dashboard_data")).json()["html"]
    assert 'data-panel="circuits"' in html and html.count('<svg class="chart"') == 3
    assert reverse("console:version_graph", args=[traffic.pk]) in html


def test_queue_depth_and_oldest_unprocessed_event(demo, admin_client):
    from django_q.models import OrmQ

    now = timezone.now()
    source = Source.objects.get(name="demo-web")
    customer = CustomerFactory()
    Event.objects.create(source=source, message_id="late", type="track", name="Stuck", customer=customer,
                         timestamp=now - timedelta(minutes=10), received_at=now - timedelta(minutes=10))
    Event.objects.create(source=source, message_id="new", type="track", name="Fresh", customer=customer,
                         timestamp=now, received_at=now)
    OrmQ.objects.create(key="journeys", payload="x")
    OrmQ.objects.create(key="journeys", payload="y", lock=now + timedelta(minutes=1))  # a worker holds it

    queue = _metrics(admin_client)["queue"]

    assert (queue["queued"], queue["in_progress"], queue["pending_events"]) == (1, 1, 2)
    assert 595 <= queue["oldest_pending_age_s"] <= 660


def test_open_breakers_and_failed_messages_stand_out(traffic, admin_client):
    from channels_app.models import Channel, ChannelBreaker, Delivery
    from journeys.models import Customer

    sms = Channel.objects.get(name="sms")
    ChannelBreaker.objects.update_or_create(channel=sms, defaults={"state": "open", "consecutive_failures": 5,
                                                                    "opened_at": timezone.now(), "last_error": "HTTP 503"})
    ada = Customer.objects.get(external_id="u-ada")
    Delivery.objects.create(idempotency_key="t:1", customer=ada, channel=sms, status="failed", reason="permanent_error")
    Delivery.objects.create(idempotency_key="t:2", customer=ada, channel=sms, status="suppressed", reason="do_not_contact")

    response = admin_client.get(reverse("console:dashboard_data")).json()

    assert response["metrics"]["circuits"]["sms"] == "open"
    assert response["metrics"]["deliveries"] == {"sent": 1, "suppressed": 1, "failed": 1,
                                                     "bounced": 0, "pending": 0}
    assert 'class="breaker-open" data-channel="sms"' in response["html"]
    assert 'title="HTTP 503"' in response["html"]
    this_hour = dashboard_deliveries(now=timezone.now())["hourly"][-1]
    assert (this_hour["sent"], this_hour["suppressed"], this_hour["failed"]) == (1, 1, 1)


def test_sla_buckets(demo, admin_client):
    from agents.models import Case

    now = timezone.now()
    customer = CustomerFactory()
    for due in (now - timedelta(minutes=5), now + timedelta(minutes=5), now + timedelta(minutes=30),
                now + timedelta(hours=3), None):
        Case.objects.create(customer=customer, subject="help", status="new", sla_due_at=due)
    Case.objects.create(customer=customer, subject="done", status="resolved", sla_due_at=now - timedelta(hours=1))

    cases = _metrics(admin_client)["cases"]

    assert cases == {"total": 5, "breached": 1, "due_15m": 1, "due_1h": 1, "on_track": 1, "answered": 1}


def test_admin_home_embeds_the_live_dashboard_for_ops(demo, admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "data-live-dashboard" in page and "data-load-now" in page
    assert reverse("console:dashboard_data") in page
    assert 'id="content-main"' in page  # the usual app list is still there


def test_staff_without_the_dashboard_permission_is_refused(demo, client):
    user = UserFactory(username="clerk", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_customer"))
    client.force_login(user)

    assert client.get(reverse("console:dashboard")).status_code == 403
    assert client.get(reverse("console:dashboard_data")).status_code == 403
    home = client.get(reverse("admin:index"))
    assert home.status_code == 200 and b"data-live-dashboard" not in home.content


def test_anonymous_is_sent_to_the_login(client):
    response = client.get(reverse("console:dashboard_data"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_a_unit_editor_sees_only_the_workflows_of_the_unit(traffic, client):
    from journeys.services.governance import business_unit_grant_editor

    editor = UserFactory(username="edna", is_staff=True)
    editor.user_permissions.add(Permission.objects.get(codename="view_ops_dashboard"))
    business_unit_grant_editor(unit=BusinessUnit.objects.get(slug="support"), user=editor)
    client.force_login(editor)

    metrics = _metrics(client)

    assert metrics["live_workflows"] == 1
    assert metrics["runs"]["waiting"] == 0  # the Onboarding runs belong to another unit
