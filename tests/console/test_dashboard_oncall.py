"""What the on-call sees on the ops dashboard beyond the traffic: a storm of events refused into
the quarantine (and its log line), and workers that stopped with the tasks they took."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db


def _feed(client) -> dict:
    response = client.get(reverse("console:dashboard_data"))
    assert response.status_code == 200
    return response.json()


def _bad_batch(i: int) -> dict:
    """Five events a client release broke (names of 300 characters), with personal data in them."""
    return {"batch": [{"type": "track", "userId": f"ada-{i}-{j}", "event": "x" * 300, "messageId": f"q-{i}-{j}",
                       "properties": {"email": "ada@example.com"}} for j in range(5)]}


def test_a_storm_of_refused_events_shows_on_the_dashboard_and_in_a_few_log_lines(
        api, source, admin_client, settings, caplog, django_capture_on_commit_callbacks):
    from journeys.services.oplog import ops_log_reset

    ops_log_reset()
    caplog.set_level("WARNING", logger="journeys.services.quarantine_store")
    settings.OPS_LOG_INTERVAL_S = 3600
    # given a client whose every event is refused, three batches in a row
    for i in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post("batch", _bad_batch(i))
        assert response.status_code == 200 and len(response.json()["rejected"]) == 5

    # then the log has one WARNING for them (not one per batch or event), naming the source and the
    # reason codes, and no personal data
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"quarantine: 5 event(s) from source 'web' (id {source.pk}) refused into the quarantine: ")
    code = line.split("quarantine: ")[2].split(" ")[0]
    assert "ada" not in caplog.text and "x" * 300 not in caplog.text
    # and once the interval has passed, the next line counts everything refused since the last one
    settings.OPS_LOG_INTERVAL_S = 0
    with django_capture_on_commit_callbacks(execute=True):
        api.post("batch", _bad_batch(3))
    assert re.match(rf"quarantine: 15 event\(s\) from source 'web' \(id {source.pk}\) refused into the quarantine "
                    rf"in the last \d+ s: {code} 15; ", caplog.records[-1].getMessage())

    # and the dashboard counts them per source, marked, with a link to review them
    feed = _feed(admin_client)
    assert feed["metrics"]["quarantine"] == {
        "last_hour": 20, "unreviewed": 20, "unreviewed_capped": False,
        "by_source": [{"source": "web", "n": 20, "codes": {code: 20}}]}
    html = feed["html"]
    assert '<div class="bad"><dt title="events refused into the quarantine in the last hour and not reviewed yet ' \
           '(replayed or discarded ones are not counted)">refused (1 h), unreviewed</dt><dd id="m-quarantine-hour">' \
           '<a href="/admin/journeys/quarantinedevent/?status__exact=quarantined">20</a>' in html
    assert f'<li data-source="web">web: 20 refused in the last hour ({code} 20)</li>' in html


def test_tasks_taken_longer_ago_than_a_task_may_run_are_marked_stale(admin_client, settings):
    from django_q.models import OrmQ

    # given two tasks the main cluster's workers took: one 10 s ago, one 150 s ago (its timeout is 120 s)
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "retry": 180, "timeout": 120}
    now = timezone.now()
    OrmQ.objects.create(key="journeys", payload="fresh", lock=now + timedelta(seconds=170))
    OrmQ.objects.create(key="journeys", payload="frozen", lock=now + timedelta(seconds=30))

    # when the on-call looks at the dashboard
    feed = _feed(admin_client)

    # then "tasks taken" says how old the oldest is, and that one is stale
    queue = feed["metrics"]["queue"]
    assert queue["in_progress"] == 2 and 149 <= queue["running_oldest_s"] <= 155 and queue["running_stale"] == 1
    assert re.search(r'<small id="m-tasks-oldest">oldest 1[45]\d s: 1 stale</small>', feed["html"])
    # and the card says "taken", not "running": a worker fetches tasks ahead of running them
    assert ("fetched ahead by a worker (q2 hands out several at a time) and waiting for it\">tasks taken</dt>"
            in feed["html"])
