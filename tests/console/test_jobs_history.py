"""An import is history unless ops opt in: a backfill of old sign-ups stores the events (they
count) but starts no workflow, and customers moved in get their traits but enter no
attribute-change or segment-entry workflow and sends nothing; events older than EVENT_TRIGGER_MAX_AGE_S never
start one, whatever the API they came through."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from journeys.engine.processor import events_process
from journeys.engine.scheduler import watches_fire_due
from journeys.models import Event, Job, JourneyRun, Source, TriggerWatch
from tests.console.conftest import demo, ops  # noqa: F401 - the demo data and its signed-in ops admin
from tests.factories import live_workflow

pytestmark = pytest.mark.django_db

WELCOME = {"trigger_event": "Backfill Signed Up", "steps": [{"key": "done", "kind": "goal", "config": {}}],
           "edges": []}


def upload(client, capture, text: str, *, kind: str = "import_events", **extra):
    source = Source.objects.get(name="demo-web")
    with capture(execute=True):
        response = client.post(f"{reverse('admin:journeys_job_add')}?kind={kind}",
                               {"file": SimpleUploadedFile("import.csv", text.encode()), "source": source.pk, **extra})
    assert response.status_code == 302, response.content.decode()[-2000:]
    job = Job.objects.latest("pk")
    assert job.status == "succeeded", job.error
    return job


def process_pending() -> None:
    events_process(event_ids=list(Event.objects.filter(status="pending").values_list("pk", flat=True)))


def test_an_event_import_is_history_unless_start_workflows_is_ticked(ops, django_capture_on_commit_callbacks):  # noqa: F811
    # given a live workflow started by "Backfill Signed Up", and a file of sign-ups (two in 2023, one today)
    workflow = live_workflow(name="backfill welcome", definition=WELCOME)
    today = timezone.now().replace(microsecond=0).isoformat()
    text = ("user_id,event,timestamp\n"
            "h-1,Backfill Signed Up,2023-01-05T10:00:00Z\n"
            "h-2,Backfill Signed Up,2023-05-05T10:00:00Z\n"
            f"h-3,Backfill Signed Up,{today}\n")
    # when it is imported without ticking "Start workflows for these events"
    job = upload(ops, django_capture_on_commit_callbacks, text)
    process_pending()
    # then the three events are stored as history, saying why, and no run started
    events = Event.objects.filter(name="Backfill Signed Up")
    assert sorted(events.values_list("status", flat=True)) == ["history"] * 3
    assert all(f"imported by job {job.pk}" in e.error for e in events)
    assert not JourneyRun.objects.filter(version__workflow=workflow).exists()
    page = ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert "Workflows: none started" in page

    # when another file is imported with the box ticked (today's sign-up of h-4, one of 2023)
    text = ("user_id,event,timestamp\n"
            "h-4,Backfill Signed Up,2023-02-01T10:00:00Z\n"
            f"h-5,Backfill Signed Up,{today}\n")
    job = upload(ops, django_capture_on_commit_callbacks, text, start_workflows="on")
    process_pending()
    # then only today's event starts a run: the 2023 one is older than EVENT_TRIGGER_MAX_AGE_S
    assert job.params["start_workflows"] is True
    runs = JourneyRun.objects.filter(version__workflow=workflow)
    assert list(runs.values_list("customer__external_id", flat=True)) == ["h-5"]
    old = Event.objects.get(user_id="h-4")
    assert old.status == "history" and "EVENT_TRIGGER_MAX_AGE_S" in old.error
    assert Event.objects.get(user_id="h-5").status == "processed"


def test_the_start_page_offers_the_opt_in_unticked(ops):  # noqa: F811
    page = ops.get(f"{reverse('admin:journeys_job_add')}?kind=import_events").content.decode()
    assert "Start workflows for these events" in page
    assert 'name="start_workflows"' in page and "checked" not in page.split('name="start_workflows"')[1][:40]


def test_an_api_event_older_than_the_max_age_starts_no_workflow(api, source):
    # given a live workflow, and a backfill through /v1/import: one sign-up of 2023, one of an hour ago
    workflow = live_workflow(name="backfill welcome", definition=WELCOME)
    hour_ago = (timezone.now() - timedelta(hours=1)).isoformat()
    batch = [{"type": "track", "userId": "b-old", "event": "Backfill Signed Up", "timestamp": "2023-02-01T00:00:00Z"},
             {"type": "track", "userId": "b-new", "event": "Backfill Signed Up", "timestamp": hour_ago}]
    # when it is posted and the engine runs
    assert api.post("import", {"batch": batch}).status_code == 200
    process_pending()
    # then both are stored, only the recent one started a run, and the old one says why
    runs = JourneyRun.objects.filter(version__workflow=workflow)
    assert list(runs.values_list("customer__external_id", flat=True)) == ["b-new"]
    old = Event.objects.get(user_id="b-old")
    assert old.status == "history" and "older than EVENT_TRIGGER_MAX_AGE_S" in old.error


@override_settings(EVENT_TRIGGER_MAX_AGE_S=0)
def test_with_the_max_age_off_an_old_api_event_starts_its_workflow(api, source):
    workflow = live_workflow(name="backfill welcome", definition=WELCOME)
    event = {"userId": "b-old", "event": "Backfill Signed Up", "timestamp": "2023-02-01T00:00:00Z"}
    assert api.post("track", event).status_code == 200
    process_pending()
    assert JourneyRun.objects.filter(version__workflow=workflow).count() == 1


CART = {"trigger_kind": "inactivity", "trigger_event": "Checkout Started",
        "trigger_config": {"followed_by": "Order Completed", "within": "2d"},
        "steps": [{"key": "remind", "kind": "update_profile", "config": {"traits": {"reminded": True}}}], "edges": []}


def test_an_imported_order_closes_the_cart_window_and_converts_the_run(ops, api, django_capture_on_commit_callbacks):  # noqa: F811
    # given a cart reminder window opened by a checkout an hour ago, and a run whose goal is an order
    cart = live_workflow(name="cart reminder", definition=CART)
    buying = live_workflow(name="buying", definition={
        "trigger_event": "Trial Started", "goal_event": "Order Completed",
        "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "3d"}}], "edges": []})
    hour_ago = (timezone.now() - timedelta(hours=1)).isoformat()
    with django_capture_on_commit_callbacks(execute=True):
        for name in ("Checkout Started", "Trial Started"):
            api.post("track", {"userId": "pos-1", "event": name, "timestamp": hour_ago})
    run = JourneyRun.objects.get(version__workflow=buying)
    assert run.status == "waiting"
    # when today's POS orders are imported without ticking "Start workflows for these events"
    now = timezone.now().replace(microsecond=0).isoformat()
    upload(ops, django_capture_on_commit_callbacks, f"user_id,event,timestamp\npos-1,Order Completed,{now}\n")
    # then the order is history, yet it closed the window (no reminder) and converted the run
    assert Event.objects.get(name="Order Completed").status == "history"
    assert TriggerWatch.objects.get(version__workflow=cart, customer__external_id="pos-1").cancelled_at is not None
    watches_fire_due(now=timezone.now() + timedelta(days=3))
    run.refresh_from_db()
    assert run.status == "completed" and run.converted_at is not None
    assert not JourneyRun.objects.filter(version__workflow=cart).exists()



def test_a_customer_import_sets_traits_but_starts_workflows_only_when_ticked(ops, django_capture_on_commit_callbacks):  # noqa: F811
    # given live "plan changed to pro" (attribute change) and "joined the pro segment" (segment entry) workflows
    done = {"steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []}
    changed = live_workflow(name="to pro", definition={
        "trigger_kind": "attribute_change", "trigger_config": {"attribute": "imp_plan", "to": "pro"}, **done})
    joined = live_workflow(name="pro segment", definition={
        "trigger_kind": "segment_entry", "trigger_config": {"rule": "profile.imp_plan == 'pro'"}, **done})
    runs = JourneyRun.objects.filter(version__workflow__in=[changed, joined])
    # when customers are moved in from another tool, the box left unticked
    job = upload(ops, django_capture_on_commit_callbacks,
                 "user_id,email,imp_plan\nm-1,m1@example.com,pro\nm-2,m2@example.com,free\n", kind="import_customers")
    process_pending()
    # then their traits are set, nobody entered either workflow, and the job page says so
    from journeys.models import Customer

    assert Customer.objects.get(external_id="m-1").traits["imp_plan"] == "pro"
    assert not runs.exists()
    page = ops.get(reverse("admin:journeys_job_change", args=[job.pk])).content.decode()
    assert "Workflows: none started" in page

    # when a sync of real changes is imported with "Start workflows for these changes" ticked
    job = upload(ops, django_capture_on_commit_callbacks, "user_id,imp_plan\nm-2,pro\n", kind="import_customers",
                 start_workflows="on")
    process_pending()
    # then m-2's upgrade starts both, and m-1 (imported before) still none
    assert job.params["start_workflows"] is True
    assert sorted(runs.values_list("version__workflow__name", "customer__external_id")) == [
        ("pro segment", "m-2"), ("to pro", "m-2")]
    assert "Start workflows for these changes" in ops.get(
        f"{reverse('admin:journeys_job_add')}?kind=import_customers").content.decode()


def test_an_unticked_customer_import_enters_nobody_at_the_next_refreshes(ops, django_capture_on_commit_callbacks):  # noqa: F811
    """The refreshes compare who is in a segment (or a rule stage) with what was recorded: a
    history import records the segment members and sets the stage quietly, so neither the hourly
    segment-entry refresh nor the stage refresh takes the imported customers for newcomers."""
    from journeys.engine.listeners import stages_reset
    from journeys.engine.scheduler import segment_entries_refresh, stages_refresh
    from journeys.models import Customer, LifecycleStage, StageTransition

    # given a live segment-entry workflow (its members recorded at go-live), a rule stage and a
    # workflow started by entering that stage
    done = {"steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []}
    joined = live_workflow(name="pro segment", definition={
        "trigger_kind": "segment_entry", "trigger_config": {"rule": "profile.imp_plan == 'pro'"}, **done})
    LifecycleStage.objects.create(key="imp_pro", name="Imported pro", order=0, rule="profile.imp_plan == 'pro'")
    stages_reset()
    staged = live_workflow(name="pro stage", definition={
        "trigger_event": "Stage Entered", "trigger_config": {"filter": "event.properties.stage == 'imp_pro'"}, **done})
    runs = JourneyRun.objects.filter(version__workflow__in=[joined, staged])
    now = timezone.now()
    segment_entries_refresh(now=now)
    # when a customer is moved in with the box unticked, then the hourly refreshes run
    upload(ops, django_capture_on_commit_callbacks, "user_id,imp_plan\nm-1,pro\n", kind="import_customers")
    process_pending()
    with django_capture_on_commit_callbacks(execute=True):
        stages_refresh(now=now + timedelta(hours=1))
        segment_entries_refresh(now=now + timedelta(hours=1))
    process_pending()
    # then m-1 entered neither workflow, and is in the stage (moved quietly, saying why)
    assert not runs.exists()
    assert Customer.objects.get(external_id="m-1").stage == "imp_pro"
    assert StageTransition.objects.get(customer__external_id="m-1").reason.startswith("history: ")
    assert not Event.objects.filter(user_id="m-1", name__startswith="Stage ").exists()

    # when another customer is imported with the box ticked, they enter both
    upload(ops, django_capture_on_commit_callbacks, "user_id,imp_plan\nm-2,pro\n", kind="import_customers",
           start_workflows="on")
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            process_pending()
    with django_capture_on_commit_callbacks(execute=True):
        segment_entries_refresh(now=now + timedelta(hours=2))
    assert sorted(runs.values_list("version__workflow__name", "customer__external_id")) == [
        ("pro segment", "m-2"), ("pro stage", "m-2")]
