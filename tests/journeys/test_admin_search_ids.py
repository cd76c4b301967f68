"""What support types into the deliveries and runs admin searches besides a customer (review 26-3
#5-#7): a provider's message id, an event's trigger key; an address the customer no longer has is
said not to be searched."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from channels_app.models import Delivery
from journeys.engine.compiled import reset_caches
from journeys.engine.processor import events_process
from journeys.models import JourneyRun
from tests.channels_app.factories import ChannelFactory
from tests.factories import CustomerFactory, live_workflow, pending_events

DELIVERIES = "admin:channels_app_delivery_changelist"
RUNS = "admin:journeys_journeyrun_changelist"
SID = "SM0123456789abcdef0123456789abcdef"


def _rows(client, url_name, term):
    page = client.get(reverse(url_name), {"q": term})
    assert page.status_code == 200
    return list(page.context["cl"].result_list), page.content.decode()


@pytest.mark.django_db
def test_a_message_is_found_by_the_provider_id_on_a_support_ticket(admin_client):
    # given an SMS whose Twilio SID a customer quotes in a ticket, and a queued one with no id yet
    ann = CustomerFactory(external_id="u-ann")
    channel = ChannelFactory()
    sent = Delivery.objects.create(customer=ann, channel=channel, to="+14155550100", idempotency_key="k1",
                                   provider_message_id=SID)
    Delivery.objects.create(customer=ann, channel=channel, to="+14155550100", idempotency_key="k2")
    # then the deliveries search finds that message exactly (a part of the id finds nothing)
    rows, content = _rows(admin_client, DELIVERIES, f" {SID} ")
    assert [d.pk for d in rows] == [sent.pk]
    assert _rows(admin_client, DELIVERIES, SID[:10])[0] == []
    # and the help text says what the search matches
    assert "provider&#x27;s message id" in content or "provider's message id" in content
    assert "no longer has is not searched" in content


@pytest.mark.django_db
def test_the_provider_id_search_reads_the_partial_index():
    if connection.vendor != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    from django.contrib.admin.sites import site
    from django.test import RequestFactory

    model_admin = site._registry[Delivery]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    queryset, _ = model_admin.get_search_results(RequestFactory().get("/"), Delivery.objects.all(), SID)
    with CaptureQueriesContext(connection):
        sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = " ".join(row[0] for row in cursor.fetchall())
    assert "delivery_provider_id_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.django_db
def test_a_message_to_an_address_the_customer_no_longer_has_is_said_not_to_be_searched(admin_client):
    ann = CustomerFactory(external_id="u-ann", email="ann.smith@example.com")
    Delivery.objects.create(customer=ann, channel=ChannelFactory(), to="old.ann@example.com", idempotency_key="k3")
    rows, content = _rows(admin_client, DELIVERIES, "old.ann@example.com")
    assert rows == []
    assert "an address the customer no longer has is not searched" in content


@pytest.mark.django_db
def test_a_run_is_found_by_its_trigger_key(admin_client):
    # given a run started by an event, and another customer's run
    ann, bob = CustomerFactory(external_id="u-ann"), CustomerFactory(external_id="u-bob")
    reset_caches()
    live_workflow(name="waiter", definition={
        "trigger_kind": "event", "trigger_event": "Started", "reentry_policy": "always",
        "steps": [{"key": "wait", "kind": "wait_for_event", "config": {"event": "Came Back", "timeout": "7d"}}]})
    events_process(event_ids=pending_events([ann, bob], name="Started", source="s1"))
    run = JourneyRun.objects.get(customer=ann)
    reset_caches()
    assert run.trigger_key.startswith("event:")
    # then searching its key finds that run only; an unknown event or another kind finds nothing
    rows, content = _rows(admin_client, RUNS, run.trigger_key)
    assert [r.pk for r in rows] == [run.pk]
    assert _rows(admin_client, RUNS, "event:999999")[0] == []
    assert _rows(admin_client, RUNS, f"inactivity:{run.trigger_key.partition(':')[2]}")[0] == []
    assert "trigger key" in content
