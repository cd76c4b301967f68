"""History retention (HISTORY_RETENTION_DAYS), applied by the events housekeeping schedule:
finished runs with their step executions and messages, closed cases, finished jobs, anonymous
profiles left with nothing, expired sessions and the old login log go; what re-entry limits,
frequency caps and open experiments rely on stays."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_app.models import Delivery, DeliveryAttempt, FrequencyCap
from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Customer, EntryGate, Event, Identity, JourneyRun, StepExecution
from journeys.services.workflows import version_build, version_publish, workflow_create
from journeys.tasks import events_housekeeping
from tests.channels_app.factories import ChannelFactory, TemplateFactory

pytestmark = pytest.mark.django_db

OLD = timedelta(days=40)  # past the 30 days kept below


@pytest.fixture
def retention(settings):
    settings.HISTORY_RETENTION_DAYS = 30
    reset_caches()
    ChannelFactory(name="mail", kind="email", provider="console")
    TemplateFactory(name="hello", subject="Hello", body="Hi")
    yield settings
    reset_caches()


def journey(name: str, *, policy: str = "once", trigger: str = "Signed Up") -> object:
    unit, _ = BusinessUnit.objects.get_or_create(slug="retention", defaults={"name": "Retention"})
    workflow = workflow_create(name=name, business_unit=unit)
    return version_publish(version=version_build(workflow=workflow, definition={
        "trigger_event": trigger, "reentry_policy": policy,
        "steps": [{"key": "send", "kind": "send_message", "config": {"channel": "mail", "template": "hello"}}],
    }), reason="test")


def age(runs, by: timedelta = OLD) -> None:
    """Make these runs (and their messages) finished that long ago."""
    then = timezone.now() - by
    ids = list(runs.values_list("pk", flat=True))
    JourneyRun.objects.filter(pk__in=ids).update(created_at=then, finished_at=then)
    Delivery.objects.filter(run_id__in=ids).update(created_at=then, sent_at=then)


def test_old_finished_runs_go_with_their_steps_and_messages_and_once_still_holds(retention, send):
    # Given a `once` journey that mailed ada 40 days ago, and bob yesterday
    journey("welcome", policy="once")
    send(userId="ada", event="Signed Up")
    send(userId="ada", event="Signed Up")  # refused: once
    assert JourneyRun.objects.count() == 1
    age(JourneyRun.objects.all())
    send(userId="bob", event="Signed Up")
    old_run = JourneyRun.objects.get(customer__external_id="ada")
    message = Delivery.objects.get(run_id=old_run.pk)
    DeliveryAttempt.objects.create(delivery=message, channel=message.channel, at=message.created_at, ok=True)
    assert StepExecution.objects.filter(run=old_run).exists()

    # When the housekeeping schedule runs
    result = events_housekeeping()

    # Then ada's old run, its step executions, messages and attempts are gone; bob's recent run stays
    assert result["history"]["runs"] == 1 and result["history"]["deliveries"] == 1
    assert list(JourneyRun.objects.values_list("customer__external_id", flat=True)) == ["bob"]
    assert not StepExecution.objects.filter(run_id=old_run.pk).exists()
    assert not Delivery.objects.filter(run_id=old_run.pk).exists()
    assert not DeliveryAttempt.objects.filter(delivery__run_id=old_run.pk).exists()
    # and `once` still holds for ada: her entry is kept as a gate row, she does not enter again
    assert EntryGate.objects.filter(customer__external_id="ada").exists()
    send(userId="ada", event="Signed Up")
    assert not JourneyRun.objects.filter(customer__external_id="ada").exists()


def test_once_holds_after_retention_even_for_an_entry_made_under_another_policy(retention, send):
    # Given an `always` journey ada entered 40 days ago (no gate row: `always` keeps none) ...
    version = journey("promo", policy="always")
    send(userId="ada", event="Signed Up")
    age(JourneyRun.objects.all())
    EntryGate.objects.all().delete()
    # ... whose retention runs, and which is then switched to `once`
    events_housekeeping()
    assert not JourneyRun.objects.exists()
    version.reentry_policy = "once"
    version.save(update_fields=["reentry_policy"])
    reset_caches()

    # When ada signs up again
    send(userId="ada", event="Signed Up")

    # Then her deleted run still counts as her one entry
    assert not JourneyRun.objects.exists()


def test_nothing_goes_without_a_retention_and_open_or_recent_runs_always_stay(retention, send):
    # Given one old finished run, one old open run (waiting) and retention unset
    journey("welcome", policy="always")
    send(userId="ada", event="Signed Up")
    age(JourneyRun.objects.all())
    JourneyRun.objects.create(workflow=JourneyRun.objects.get().workflow, version=JourneyRun.objects.get().version,
                              customer=Customer.objects.get(), trigger_key="open", status="waiting", exclusive=False)
    JourneyRun.objects.filter(trigger_key="open").update(created_at=timezone.now() - OLD)
    retention.HISTORY_RETENTION_DAYS = None

    events_housekeeping()
    assert JourneyRun.objects.count() == 2

    # When a retention is set, the finished one goes and the open one stays
    retention.HISTORY_RETENTION_DAYS = 30
    events_housekeeping()
    assert list(JourneyRun.objects.values_list("status", flat=True)) == ["waiting"]


def test_runs_a_frequency_cap_still_counts_are_kept(retention, send):
    # Given a cap over 60 days, longer than the 30 days of history kept
    FrequencyCap.objects.create(name="two a season", limit=2, window_s=60 * 86400)
    journey("welcome", policy="always")
    send(userId="ada", event="Signed Up")
    age(JourneyRun.objects.all())

    # When the housekeeping runs, the 40-day-old run (and its message, which the cap counts) stays
    events_housekeeping()
    assert JourneyRun.objects.count() == 1 and Delivery.objects.count() == 1

    # and goes once it is older than the cap's window
    age(JourneyRun.objects.all(), by=timedelta(days=61))
    events_housekeeping()
    assert not JourneyRun.objects.exists() and not Delivery.objects.exists()


def test_the_history_of_a_workflow_with_an_open_experiment_stays(retention, send):
    from experiments.models import Experiment

    # Given two journeys with old runs, one of them with an experiment still running
    tested = journey("tested", trigger="Signed Up")
    journey("plain", trigger="Signed Up")
    experiment = Experiment.objects.create(key="subject-line", name="Subject line", workflow=tested.workflow,
                                           status="running")
    send(userId="ada", event="Signed Up")
    age(JourneyRun.objects.all())

    # When the housekeeping runs, only the other journey's run goes
    events_housekeeping()
    assert list(JourneyRun.objects.values_list("workflow__name", flat=True)) == ["tested"]

    # and a concluded experiment's history stays too (its report reads the runs' conversions) ...
    Experiment.objects.filter(pk=experiment.pk).update(status="concluded")
    events_housekeeping()
    assert list(JourneyRun.objects.values_list("workflow__name", flat=True)) == ["tested"]
    # ... until the experiment is deleted
    Experiment.objects.filter(pk=experiment.pk).delete()
    events_housekeeping()
    assert not JourneyRun.objects.exists()


def test_anonymous_profiles_left_empty_by_event_retention_are_deleted(retention, send, source):
    # Given an anonymous visitor, an anonymous visitor with traits and a known customer, all with old events
    send(anonymousId="anon-1", event="Page Viewed")
    send(kind="identify", anonymousId="anon-2", traits={"plan": "pro"})
    send(userId="ada", event="Page Viewed")
    long_ago = timezone.now() - OLD
    Event.objects.update(received_at=long_ago)
    Customer.objects.update(updated_at=long_ago)
    # ... and the source keeps events 30 days
    source.retention_days = 30
    source.save(update_fields=["retention_days"])

    # When the housekeeping deletes the events
    result = events_housekeeping()

    # Then the anonymous profile that holds nothing now goes with its anonymous id; the others stay
    assert result["events_deleted"] == 3 and result["history"]["profiles_deleted"] == 1
    assert not Identity.objects.filter(value="anon-1").exists()
    assert Identity.objects.filter(value="anon-2").exists() and Customer.objects.filter(external_id="ada").exists()
    assert Customer.objects.count() == 2


def test_a_recently_touched_anonymous_profile_stays(retention, send, source):
    send(anonymousId="anon-1", event="Page Viewed")
    Event.objects.update(received_at=timezone.now() - OLD)
    source.retention_days = 30
    source.save(update_fields=["retention_days"])

    events_housekeeping()

    assert Identity.objects.filter(value="anon-1").exists()  # seen within the day: its next event may be on its way


def test_old_closed_cases_and_finished_jobs_go(retention):
    from agents.models import Case
    from journeys.models.jobs import Job
    from tests.factories import CustomerFactory

    customer = CustomerFactory()
    old, recent = timezone.now() - OLD, timezone.now() - timedelta(days=1)
    closed = Case.objects.create(customer=customer, subject="old", status="closed", closed_at=old)
    Case.objects.create(customer=customer, subject="new", status="closed", closed_at=recent)
    Case.objects.create(customer=customer, subject="open", status="new")
    Job.objects.create(kind="export", status="succeeded", finished_at=old)
    Job.objects.create(kind="export", status="succeeded", finished_at=recent)
    Job.objects.create(kind="export", status="queued")

    result = events_housekeeping()

    assert result["history"]["cases"] == 1 and result["history"]["jobs"] == 1
    assert sorted(Case.objects.values_list("subject", flat=True)) == ["new", "open"]
    assert not Case.history.filter(id=closed.pk).exists()
    assert sorted(Job.objects.values_list("status", flat=True)) == ["queued", "succeeded"]


def test_expired_sessions_and_the_old_login_log_are_cleaned(settings):
    from axes.models import AccessLog
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    # Given an expired and a live session, a login 100 days ago and one today
    for expiry in (-3600, 3600):
        store = SessionStore()
        store["x"] = 1
        store.set_expiry(expiry)
        store.save()
    old = AccessLog.objects.create(user_agent="x", ip_address="127.0.0.1", username="ada", http_accept="*/*",
                                   path_info="/admin/login/")
    AccessLog.objects.filter(pk=old.pk).update(attempt_time=timezone.now() - timedelta(days=100))
    AccessLog.objects.create(user_agent="x", ip_address="127.0.0.1", username="ada", http_accept="*/*",
                             path_info="/admin/login/")

    # When the housekeeping runs (no history retention set: these are cleaned anyway)
    result = events_housekeeping()

    # Then the expired session and the login older than LOGIN_LOG_KEEP_DAYS (90) are gone
    assert result["history"]["sessions_purged"] == 1 and result["history"]["login_log_purged"] == 1
    assert Session.objects.count() == 1 and AccessLog.objects.count() == 1


def test_an_empty_anonymous_profile_stays_without_a_retention_and_goes_with_one(retention, send, source):
    # Given an anonymous visitor whose old events the source's retention deletes, and no history retention
    retention.HISTORY_RETENTION_DAYS = None
    send(anonymousId="anon-1", event="Page Viewed")
    Event.objects.update(received_at=timezone.now() - OLD)
    Customer.objects.update(updated_at=timezone.now() - OLD)
    source.retention_days = 30
    source.save(update_fields=["retention_days"])

    # When the housekeeping runs, the profile stays (nothing of history goes without a retention)
    result = events_housekeeping()
    assert result["events_deleted"] == 1 and "profiles_deleted" not in result["history"]
    assert Identity.objects.filter(value="anon-1").exists()

    # and once a retention is set, it goes
    retention.HISTORY_RETENTION_DAYS = 30
    assert events_housekeeping()["history"]["profiles_deleted"] == 1
    assert not Identity.objects.filter(value="anon-1").exists()


def test_empty_anonymous_profiles_from_before_the_upgrade_are_found_a_batch_at_a_time(retention):
    from journeys.models import ProfileCheck, ProfileCheckBackfill
    from journeys.services.history_retention import profiles_backfill
    from tests.factories import CustomerFactory

    # Given profiles made before the retention queued any (none in ProfileCheck): two empty anonymous, one known
    long_ago = timezone.now() - OLD
    empty = [Customer.objects.create() for _ in range(2)]
    CustomerFactory(external_id="ada")
    Customer.objects.update(updated_at=long_ago)
    assert not ProfileCheck.objects.exists()

    # When the backfill walks them one at a time, it stops where it was and goes on from there
    profiles_backfill(deadline=float("inf"), batch=1)
    assert ProfileCheckBackfill.objects.get().done

    # and the housekeeping deletes the two empty ones, the known customer stays
    events_housekeeping()
    assert not Customer.objects.filter(pk__in=[c.pk for c in empty]).exists()
    assert list(Customer.objects.values_list("external_id", flat=True)) == ["ada"]


def test_a_finished_run_whose_message_was_never_sent_stays(retention, send):
    # Given two old finished runs, one whose message is still queued (a paused channel held it)
    journey("welcome", policy="always")
    send(userId="ada", event="Signed Up")
    send(userId="bob", event="Signed Up")
    age(JourneyRun.objects.all())
    JourneyRun.objects.update(status="completed")
    Delivery.objects.filter(customer__external_id="ada").update(status="queued")
    Delivery.objects.filter(customer__external_id="bob").update(status="sent")

    # When the housekeeping runs
    events_housekeeping()

    # Then ada's run and her unsent message stay; bob's go
    assert list(JourneyRun.objects.values_list("customer__external_id", flat=True)) == ["ada"]
    assert list(Delivery.objects.values_list("status", flat=True)) == ["queued"]


def test_a_run_an_open_case_came_from_stays_linked(retention, send):
    from agents.models import Case

    # Given two old finished runs, each the origin of a case: one open, one closed yesterday
    journey("welcome", policy="always")
    send(userId="ada", event="Signed Up")
    send(userId="bob", event="Signed Up")
    age(JourneyRun.objects.all())
    ada_run, bob_run = (JourneyRun.objects.get(customer__external_id=name) for name in ("ada", "bob"))
    open_case = Case.objects.create(customer=ada_run.customer, subject="help", status="new", origin_run=ada_run)
    closed = Case.objects.create(customer=bob_run.customer, subject="done", status="closed", origin_run=bob_run,
                                 closed_at=timezone.now() - timedelta(days=1))

    # When the housekeeping runs
    events_housekeeping()

    # Then the open case keeps its run; the closed case's run goes (the case loses the link)
    assert list(JourneyRun.objects.values_list("pk", flat=True)) == [ada_run.pk]
    open_case.refresh_from_db()
    closed.refresh_from_db()
    assert open_case.origin_run_id == ada_run.pk and closed.origin_run_id is None
