"""Changelists over tables that grow without bound read one page, whatever the table's size: newest
first by primary key (its index serves the LIMIT), no COUNT of the whole table, no DISTINCT over
every row (date hierarchy, list filters of stored values), and the event search probes indexes
instead of LIKE scans. Asserted on the SQL the page runs, not on timings."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db


def _page(client, url: str):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response, [q["sql"] for q in queries.captured_queries]


def _on(table: str, sqls: list[str]) -> list[str]:
    return [sql for sql in sqls if f'FROM "{table}"' in sql]


def _unbounded(table: str, sqls: list[str]) -> list[str]:
    """Queries that read the whole table: a COUNT without a LIMIT inside, a DISTINCT, a MIN/MAX."""
    return [sql for sql in _on(table, sqls)
            if ("COUNT(" in sql and "LIMIT" not in sql) or "DISTINCT" in sql or re.search(r"\b(MIN|MAX)\(", sql)]


@pytest.fixture
def three_customers_events(send):
    for n in range(12):
        send(userId=f"u-{n % 3}", event=f"Step {n}", messageId=f"m-{n}", anonymousId=f"anon-{n % 3}")


def test_events_list_reads_one_page_newest_received_first(admin_client, three_customers_events, monkeypatch):
    from journeys.admin.events import EventAdmin
    from journeys.models import EventDefinition

    # given more events than the count cap (pages of 2, counting stops past 5)
    monkeypatch.setattr(EventAdmin.paginator, "cap", 5, raising=False)
    monkeypatch.setattr(EventAdmin, "list_per_page", 2)
    # when ops open the events list
    response, sqls = _page(admin_client, "/admin/journeys/event/")
    # then no query reads every event: no full COUNT, no DISTINCT (names, date hierarchy), no MIN/MAX
    assert _unbounded("journeys_event", sqls) == []
    listing = [sql for sql in _on("journeys_event", sqls) if "LIMIT" in sql and "COUNT(" not in sql]
    assert listing and all(re.search(r'ORDER BY "journeys_event"\."id" DESC LIMIT', sql) for sql in listing)
    # the newest event is listed first, the count says it stopped counting
    body = response.content.decode()
    assert body.index("Step 11") < body.index("Step 10")
    assert "more than 5 events" in body
    if connection.vendor == "postgresql":  # once analysed, the whole table's count is PostgreSQL's estimate
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE journeys_event")
        response, sqls = _page(admin_client, "/admin/journeys/event/")
        assert "about 12 events" in response.content.decode()
        assert not [sql for sql in _on("journeys_event", sqls) if "COUNT(" in sql]
    # the name filter offers the catalog's names (not a DISTINCT over the table), and still filters
    response, sqls = _page(admin_client, "/admin/journeys/event/?name=Step+3")
    assert "Step 3" in response.content.decode() and "Step 4" not in response.content.decode()
    assert _unbounded("journeys_event", sqls) == []
    # a name the catalog does not know (an empty catalog, a bookmark) still filters, never ignored
    EventDefinition.objects.all().delete()
    response, _ = _page(admin_client, "/admin/journeys/event/?name=Step+3")
    assert "Step 3" in response.content.decode() and "Step 4" not in response.content.decode()


@pytest.mark.parametrize("term, expected", [
    ("u-1", {"Step 1", "Step 4", "Step 7", "Step 10"}),       # a user id: that customer's events
    ("anon-2", {"Step 2", "Step 5", "Step 8", "Step 11"}),    # an anonymous id
    ("m-6", {"Step 6"}),                                      # a message id
    ("Step 9", {"Step 9"}),                                   # an event name
    ("u-", set()),                                            # exact, not a substring
])
def test_event_search_is_exact_and_uses_no_like(admin_client, three_customers_events, term, expected):
    from journeys.models import EventDefinition, Event

    response, sqls = _page(admin_client, f"/admin/journeys/event/?q={term}")
    assert not [sql for sql in _on("journeys_event", sqls) if "LIKE" in sql]
    listed = {e.name for e in response.context["cl"].result_list}
    assert listed == expected
    assert set(Event.objects.filter(name__in=expected).values_list("name", flat=True)) == expected


@pytest.mark.parametrize("url, table", [
    ("/admin/channels_app/delivery/", "channels_app_delivery"),
    ("/admin/journeys/journeyrun/", "journeys_journeyrun"),
    ("/admin/journeys/apirequest/", "journeys_apirequest"),
    ("/admin/journeys/quarantinedevent/", "journeys_quarantinedevent"),
    ("/admin/journeys/streambatch/", "journeys_streambatch"),
    ("/admin/experiments/assignment/", "experiments_assignment"),
    ("/admin/agents/case/", "agents_case"),
    ("/admin/journeys/customer/", "journeys_customer"),
    ("/admin/channels_app/datasubject/", "journeys_customer"),
])
def test_growing_tables_are_listed_by_primary_key_without_a_full_count(admin_client, url, table):
    # when ops open the changelist (filtered too: a filter is counted with a LIMIT)
    for query in ("", "?q=x"):
        _response, sqls = _page(admin_client, url + query)
        # then nothing counts, sorts or spans the whole table
        assert [sql for sql in _on(table, sqls) if ("COUNT(" in sql and "LIMIT" not in sql)
                or re.search(r"\b(MIN|MAX)\(", sql)] == []
        listing = [sql for sql in _on(table, sqls) if "COUNT(" not in sql and "DISTINCT" not in sql
                   and "ORDER BY" in sql]
        # (a search that names nothing may be answered without reading the table at all)
        assert (listing or query) and all(re.search(rf'ORDER BY "{table}"\."id" DESC', sql) for sql in listing), listing



def test_runs_list_runs_as_many_queries_for_50_runs_as_for_5(admin_client):
    from journeys.models import JourneyRun, Workflow
    from tests.factories import CustomerFactory, live_workflow

    # given a live workflow and one customer's finished runs of it
    workflow: Workflow = live_workflow(name="welcome", definition={"trigger_event": "Signed Up", "steps": [
        {"key": "done", "kind": "exit", "config": {}}]})
    workflow.refresh_from_db()
    customer = CustomerFactory()

    def runs_page_queries(n: int) -> int:
        JourneyRun.objects.all().delete()
        JourneyRun.objects.bulk_create(JourneyRun(workflow=workflow, version_id=workflow.live_version_id,
                                                  customer=customer, trigger_key=f"k{i}", status="completed")
                                       for i in range(n))
        response, sqls = _page(admin_client, "/admin/journeys/journeyrun/?all=")
        assert response.content.decode().count("welcome v1 (live)") == n  # each row names its version
        return len(sqls)

    # when ops list 5 runs, then 50
    # then the page runs the same queries: a row's version does not load its workflow on its own
    assert runs_page_queries(50) == runs_page_queries(5)
