"""The workflow graph: nodes, labelled edges, counts per step, links, layout and side-by-side review."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from journeys.console.graph import version_graph
from journeys.models import BusinessUnit, Step, Workflow
from journeys.services.workflows import (
    version_build,
    version_new_draft,
    workflow_create,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _nodes(page: str) -> dict[str, dict[str, str]]:
    found = re.findall(r'<g class="node[^"]*" data-key="([^"]+)" data-entered="(\d+)" data-waiting="(\d+)" '
                       r'data-converted="(\d+)" data-errors="(\d+)">', page)
    return {k: {"entered": int(e), "waiting": int(w), "converted": int(c), "errors": int(x)} for k, e, w, c, x in found}


def test_graph_shows_steps_edges_and_counts(traffic, admin_client):
    # given three sign-ups, one of which activated
    page = admin_client.get(reverse("console:version_graph", args=[traffic.pk])).content.decode()

    nodes = _nodes(page)
    assert set(nodes) == {"welcome", "wait", "yay", "nudge"}
    assert nodes["welcome"] == {"entered": 3, "waiting": 0, "converted": 1, "errors": 0}
    assert nodes["wait"]["entered"] == 3 and nodes["wait"]["waiting"] == 2 and nodes["wait"]["converted"] == 1
    assert nodes["nudge"]["entered"] == 0
    assert re.search(r'data-source="wait" data-target="yay" data-outcome="event">.*?>event</text>', page)
    assert 'data-outcome="timeout"' in page and 'marker-end="url(#arrow)"' in page
    assert "2 waiting" in page and "1 converted" in page


def test_each_node_links_to_its_step_in_the_admin(traffic, admin_client):
    page = admin_client.get(reverse("console:version_graph", args=[traffic.pk])).content.decode()
    change_url = reverse("admin:journeys_workflowversion_change", args=[traffic.pk])
    links = dict(re.findall(rf'data-key="([^"]+)"[^>]*><a href="{re.escape(change_url)}#(steps-\d+)"', page))
    assert set(links) == {"welcome", "wait", "yay", "nudge"}

    admin_page = admin_client.get(change_url).content.decode()
    for key, anchor in links.items():  # the anchor is the inline row of that very step
        row = re.search(rf'<tr[^>]*id="{anchor}".*?</tr>', admin_page, re.S).group(0)
        assert f"<p>{key}</p>" in row


def test_counts_link_to_the_runs_waiting_at_the_step(traffic, admin_client):
    page = admin_client.get(reverse("console:version_graph", args=[traffic.pk])).content.decode()
    url = re.search(r'<a href="([^"]+current_step=wait)"', page).group(1).replace("&amp;", "&")

    runs = admin_client.get(url)

    assert runs.status_code == 200
    assert b"2 journey runs" in runs.content


def test_layered_layout_when_steps_have_no_positions(traffic):
    graph = version_graph(version=traffic)
    rows = {n.key: n.y for n in graph.nodes}
    assert graph.layout == "layered"
    assert rows == {"welcome": 0, "wait": 1, "yay": 2, "nudge": 2}
    assert next(n for n in graph.nodes if n.key == "welcome").is_entry


def test_saved_positions_are_kept_and_loops_terminate(demo, admin_client):
    unit = BusinessUnit.objects.get(slug="retention")
    workflow = workflow_create(name="Loop", business_unit=unit)
    version = version_build(workflow=workflow, definition={
        "trigger_event": "Ping",
        "steps": [{"key": "a", "kind": "delay", "config": {"duration": "1h"}},
                  {"key": "b", "kind": "condition", "config": {"rule": "profile.plan == 'pro'"}}],
        "edges": [{"from": "a", "outcome": "next", "to": "b"}, {"from": "b", "outcome": "no", "to": "a"}],
    })
    assert version_graph(version=version).layout == "layered"  # a loop: still one layer per step
    Step.objects.filter(version=version, key="a").update(x=300, y=0)
    Step.objects.filter(version=version, key="b").update(x=0, y=200)

    graph = version_graph(version=version)
    page = admin_client.get(reverse("console:version_graph", args=[version.pk])).content.decode()

    assert graph.layout == "saved" and 'data-layout="saved"' in page
    assert 'data-source="b" data-target="a" data-outcome="no"' in page  # the back edge is drawn


def test_side_by_side_review_marks_added_and_changed_steps(traffic, admin_client):
    draft = version_new_draft(version=traffic)
    Step.objects.filter(version=draft, key="nudge").update(config={"traits": {"nudged": "twice"}})
    Step.objects.create(version=draft, key="extra", kind="exit")

    page = admin_client.get(reverse("console:version_graph", args=[draft.pk]) + f"?compare={traffic.pk}").content.decode()

    assert 'id="graph-v1"' in page and 'id="graph-v2"' in page
    assert page.index('id="graph-v1"') < page.index('id="graph-v2"')  # older on the left
    assert 'class="node added" data-key="extra"' in page
    assert page.count('class="node changed" data-key="nudge"') == 2
    assert reverse("admin:journeys_workflow_diff", args=[traffic.workflow_id]) in page


def test_comparing_with_another_workflow_is_ignored(traffic, admin_client):
    other = Workflow.objects.get(name="High-value support query").live_version
    page = admin_client.get(reverse("console:version_graph", args=[traffic.pk]) + f"?compare={other.pk}").content.decode()
    assert page.count('class="graph-panel"') == 1


def test_someone_else_s_workflow_is_not_found(traffic, client):
    from journeys.services.governance import business_unit_grant_editor

    editor = UserFactory(username="sam", is_staff=True)
    business_unit_grant_editor(unit=BusinessUnit.objects.get(slug="support"), user=editor)
    client.force_login(editor)
    support = Workflow.objects.get(name="High-value support query").live_version

    assert client.get(reverse("console:version_graph", args=[traffic.pk])).status_code == 404
    assert client.get(reverse("console:version_graph", args=[support.pk])).status_code == 200


def test_analyst_can_read_graphs(traffic, client):
    analyst = UserFactory(username="ann", is_staff=True)
    analyst.user_permissions.add(Permission.objects.get(codename="view_workflow"))
    client.force_login(analyst)
    assert client.get(reverse("console:version_graph", args=[traffic.pk])).status_code == 200


def test_counts_cover_the_recent_runs_and_the_page_says_since_when(traffic, admin_client):
    from datetime import timedelta

    from django.utils import timezone

    from journeys.console.selectors import COUNT_WINDOW
    from journeys.models import JourneyRun

    # Given the three sign-ups, one of which finished long ago (its run started before the window)
    finished = JourneyRun.objects.filter(version=traffic).exclude(status="waiting").get()
    JourneyRun.objects.filter(pk=finished.pk).update(created_at=timezone.now() - COUNT_WINDOW - timedelta(hours=1))

    # When ops open the graph
    page = admin_client.get(reverse("console:version_graph", args=[traffic.pk])).content.decode()

    # Then the per-step counts cover the two recent runs only; the waiting ones are all counted;
    # the page says which runs the counts cover
    nodes = _nodes(page)
    assert nodes["welcome"] == {"entered": 2, "waiting": 0, "converted": 0, "errors": 0}
    assert nodes["wait"]["waiting"] == 2
    assert "2 waiting" in page and "0 completed" in page
    window = re.search(r'id="count-window-v1">(.*?)</span>', page, re.S).group(1)
    assert "cover the 2 runs" in " ".join(window.split()) and f"the last {COUNT_WINDOW.days} days" in window
