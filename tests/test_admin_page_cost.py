"""The cost of a big-table admin page follows what it shows (a page of rows, one customer's
rows), never the size of the table: no facet counts over every row, per-row extras (a delivery's
hold) only for the rows shown, no sort over an unindexed column, searches for an email, phone or
id that probe indexes. Asserted on the SQL the pages run (and on PostgreSQL on the plans)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

BIG_LISTS = ["/admin/channels_app/delivery/", "/admin/journeys/journeyrun/", "/admin/journeys/event/",
             "/admin/journeys/customer/", "/admin/experiments/assignment/", "/admin/agents/case/"]


def _page(client, url: str):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response, [q["sql"] for q in queries.captured_queries]


@pytest.mark.parametrize("url", BIG_LISTS)
def test_big_lists_offer_no_facet_counts(admin_client, url):
    # when ops click "Show counts" (or follow a bookmark with it) on a list over a growing table
    response, sqls = _page(admin_client, url + "?_facets=True")
    # then no filter choice is counted (each such count reads the whole table) and none is offered
    assert not [sql for sql in sqls if "FILTER (WHERE" in sql or "FILTER(WHERE" in sql]
    assert "Show counts" not in response.content.decode()


@pytest.fixture
def run_deliveries():
    """Three messages of a workflow's runs, one of them queued, the workflow paused."""
    from channels_app.models import Delivery
    from journeys.models import JourneyRun, Workflow
    from tests.channels_app.factories import ChannelFactory
    from tests.factories import CustomerFactory, live_workflow

    workflow: Workflow = live_workflow(name="welcome", definition={"trigger_event": "Signed Up", "steps": [
        {"key": "done", "kind": "exit", "config": {}}]})
    workflow.refresh_from_db()
    channel = ChannelFactory()
    out = []
    for n, status in enumerate(["sent", "deferred", "queued"]):
        customer = CustomerFactory(external_id=f"buyer-{n}", email=f"buyer{n}@example.com")
        run = JourneyRun.objects.create(workflow=workflow, version_id=workflow.live_version_id, customer=customer,
                                        trigger_key=f"k{n}", status="completed")
        out.append(Delivery.objects.create(idempotency_key=f"d{n}", customer=customer, channel=channel, run_id=run.pk,
                                           to=f"to{n}@example.com", status=status,
                                           reason="paused" if status == "deferred" else ""))
    Workflow.objects.filter(pk=workflow.pk).update(status="paused")
    return out


def test_deliveries_page_works_out_holds_for_its_rows_only(admin_client, run_deliveries, monkeypatch):
    from channels_app.admin.deliveries import DeliveryAdmin

    # given pages of one delivery
    monkeypatch.setattr(DeliveryAdmin, "list_per_page", 1)
    # when ops open the second page, sorted by a column (a hand-written link) too
    for url in ("/admin/channels_app/delivery/?p=2", "/admin/channels_app/delivery/?p=2&o=10"):
        response, sqls = _page(admin_client, url)
        # then the rows skipped to reach it are read from the primary key alone, in receipt order:
        # no run probed per row, no join, no sort over another column
        skipping = [sql for sql in sqls if "OFFSET" in sql]
        assert skipping and all("journeys_journeyrun" not in sql and "JOIN" not in sql
                                and 'ORDER BY "channels_app_delivery"."id" DESC' in sql for sql in skipping), skipping
        # and the row shown still says what holds it now (its workflow is paused)
        assert [d.pk for d in response.context["cl"].result_list] == [run_deliveries[1].pk]
        assert "Held: workflow paused" in response.content.decode()
    # the column headers offer no sort
    assert 'class="sortable' not in response.content.decode()
    # the change page says it too
    response = admin_client.get(f"/admin/channels_app/delivery/{run_deliveries[1].pk}/change/")
    assert "Held: workflow paused" in response.content.decode()


@pytest.mark.parametrize("url, table", [
    ("/admin/journeys/customer/", "journeys_customer"),
    ("/admin/journeys/journeyrun/", "journeys_journeyrun"),
    ("/admin/channels_app/delivery/", "channels_app_delivery"),
])
def test_customer_searches_are_exact_and_use_no_like(admin_client, run_deliveries, url, table):
    def found(term):
        response, sqls = _page(admin_client, f"{url}?q={term}")
        # no substring scan of the big table (nor of the customers it would join)
        assert not [sql for sql in sqls if "LIKE" in sql and ("journeys_customer" in sql or table in sql)]
        return {getattr(row, "customer_id", row.pk) for row in response.context["cl"].result_list}

    buyer = run_deliveries[1].customer_id
    # when ops search for a customer by email (any case), user id or row id
    assert found("buyer1@example.com") == {buyer}
    assert found("Buyer1@Example.com") == {buyer}
    assert found("buyer-1") == {buyer}
    # then that customer's rows are listed; a part of an id is not a match
    assert found("buyer") == set() and found("example.com") == set()
    assert found("") == {d.customer_id for d in run_deliveries}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans: PostgreSQL only")
def test_events_per_minute_read_a_range_of_the_source_index_not_all_of_it():
    from django.utils import timezone

    from journeys.console.selectors import dashboard_events_per_minute
    from tests.factories import make_source

    make_source("web")
    # when the dashboard's events-per-minute chart is planned
    with CaptureQueriesContext(connection) as queries:
        dashboard_events_per_minute(now=timezone.now())
    [sql] = [q["sql"] for q in queries.captured_queries if "journeys_event" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = " ".join(row[0] for row in cursor.fetchall())
    # then the (source, received_at) index is read as a range per source: its leading column is in
    # the index condition, so the chart reads the window shown, not every event ever received
    assert "source_id_received_at_idx" in plan and "Index Cond: ((source_id = " in plan, plan
