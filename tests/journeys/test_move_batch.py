"""start_workflow in the engine's batches (journeys.engine.moves.MoveBatch): a batch's moves end
the runs they name, enrol their customers through the entry checks and start the new runs in the
batch, with statements that do not grow with it (before: a flush of the batch, a savepoint and
~15 statements per visit). Every case runs twice, alone (the step written at once) and inside an
engine batch, with the same outcome."""

from __future__ import annotations

from itertools import count

import pytest
from django.db import transaction
from django.utils import timezone

from journeys.engine.batch import EngineBatch
from journeys.engine.compiled import load_version, reset_caches
from journeys.engine.processor import events_process
from journeys.engine.runner import run_enroll
from journeys.models import BusinessUnit, Customer, JourneyRun, StepExecution, Workflow
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.factories import CustomerFactory, events_process_counted, pending_events

_keys = count()


def _publish(name: str, steps: list[dict], *, trigger: str = "Never", **extra) -> int:
    unit, _ = BusinessUnit.objects.get_or_create(slug="growth", defaults={"name": "Growth"})
    version = version_publish(version=version_build(workflow=workflow_create(name=name, business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": trigger, "steps": steps,
        "edges": [{"from": a["key"], "outcome": "event" if a["kind"] == "wait_for_event" else "next", "to": b["key"]}
                  for a, b in zip(steps, steps[1:])],
        **extra,
    }), reason="test")
    return version.pk


def _move(workflow: str, *, exit_current: bool = True, exit_workflows: tuple[str, ...] = ()) -> dict:
    return {"key": "move", "kind": "start_workflow",
            "config": {"workflow": workflow, "exit_current": exit_current, "exit_workflows": list(exit_workflows)}}


WAIT = {"key": "wait", "kind": "wait_for_event", "config": {"event": "Came Back", "timeout": "7d"}}
TAG = {"key": "tag", "kind": "update_profile", "config": {"traits": {"rescued": True}}}


@pytest.fixture
def journeys(db):
    reset_caches()
    _publish("nurture", [WAIT], trigger="Joined")
    _publish("rescue", [TAG, WAIT])
    _publish("onboard", [_move("rescue", exit_workflows=("nurture",))], trigger="Signed Up", reentry_policy="always")
    yield
    reset_caches()


@pytest.fixture(params=["alone", "in_a_batch"])
def enter(request, db, django_capture_on_commit_callbacks):
    """Enter customers into a workflow at once: each alone (written as it goes), or all in one
    engine batch as events_process and runs_wake run them."""

    def run(workflow: str, customers: list[Customer]) -> None:
        version = load_version(Workflow.objects.get(name=workflow).live_version_id)
        now = timezone.now()
        with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
            if request.param == "alone":
                for customer in customers:
                    run_enroll(version=version, customer=customer, trigger_key=f"t:{next(_keys)}", now=now)
                return
            batch = EngineBatch(customer_ids=[c.pk for c in customers], now=now)
            with batch.active():
                for customer in customers:
                    run_enroll(version=version, customer=customer, trigger_key=f"t:{next(_keys)}", now=now)
                batch.flush()

    run.mode = request.param
    return run


def _breaking_event() -> list[int]:
    """An event whose routing breaks (an inactivity watch whose window cannot be read): a batch
    holding it is replayed one event at a time."""
    from journeys.models import WorkflowVersion

    broken = _publish("watch", [TAG], trigger="Oops", trigger_kind="inactivity",
                      trigger_config={"followed_by": "Fixed", "within": "1h"})
    WorkflowVersion.objects.filter(pk=broken).update(trigger_config={"followed_by": "Fixed", "within": "soon"})
    reset_caches()
    return pending_events([CustomerFactory(external_id="oops")], name="Oops", source="o")


def _runs(workflow: str, customer: Customer) -> list[JourneyRun]:
    return list(JourneyRun.objects.filter(workflow__name=workflow, customer=customer).order_by("id"))


def _move_detail(customer: Customer, workflow: str = "onboard") -> dict:
    return StepExecution.objects.get(run__workflow__name=workflow, run__customer=customer, step_key="move").detail


def test_a_move_ends_the_named_runs_and_starts_the_target_whose_first_steps_run(journeys, enter):
    people = [CustomerFactory(external_id=f"m{i}") for i in range(3)]
    events_process_counted(pending_events(people, name="Joined"))  # each waits in nurture

    enter("onboard", people)

    for customer in people:
        [onboard], [nurture], [rescue] = _runs("onboard", customer), _runs("nurture", customer), _runs("rescue", customer)
        assert onboard.status == "exited"
        assert (nurture.status, nurture.error) == ("exited", "moved to rescue") and nurture.next_wake_at is None
        wait = nurture.executions.get()  # the step it waited at ends with it
        assert (wait.outcome, wait.finished_at) == ("exited", nurture.finished_at)
        assert rescue.status == "waiting" and rescue.current_step == "wait"
        assert rescue.trigger_key == f"moved:run:{onboard.pk}:move:1"
        assert _move_detail(customer) == {"workflow": "rescue", "exit_current": True, "started_run": rescue.pk}
        customer.refresh_from_db()
        assert customer.traits["rescued"] is True  # the new run's first step ran
        assert list(rescue.executions.order_by("id").values_list("step_key", "outcome")) == [("tag", "next"), ("wait", "")]


def test_a_start_that_is_not_a_move_goes_on_and_a_refused_entry_is_logged_as_none(db, enter):
    reset_caches()
    _publish("welcome", [TAG], reentry_policy="once")
    _publish("main", [{"key": "move", "kind": "start_workflow", "config": {"workflow": "welcome"}},
                      {"key": "after", "kind": "update_profile", "config": {"traits": {"after": True}}}])
    ada, bob = CustomerFactory(external_id="ada"), CustomerFactory(external_id="bob")
    enter("welcome", [bob])  # bob has entered welcome once already

    enter("main", [ada, bob])

    for customer in (ada, bob):
        [main] = _runs("main", customer)
        assert main.status == "completed"
        customer.refresh_from_db()
        assert customer.traits == {"rescued": True, "after": True}
    [welcome] = _runs("welcome", ada)
    assert _move_detail(ada, "main") == {"workflow": "welcome", "exit_current": False, "started_run": welcome.pk}
    assert len(_runs("welcome", bob)) == 1  # re-entry once: refused
    assert _move_detail(bob, "main")["started_run"] is None
    reset_caches()


def test_an_entry_rule_is_read_with_the_profile_of_the_moment_and_moves_chain(db, enter):
    reset_caches()
    _publish("vip", [TAG], entry_rule="profile.ltv >= 100")
    _publish("middle", [_move("vip")])
    _publish("first", [{"key": "ltv", "kind": "update_profile", "config": {"traits": {"ltv": {"rule": "profile.spend"}}}},
                       _move("middle")])
    rich = CustomerFactory(external_id="rich", traits={"spend": 500})
    poor = CustomerFactory(external_id="poor", traits={"spend": 5})

    enter("first", [rich, poor])

    assert [r.status for r in _runs("first", rich) + _runs("middle", rich)] == ["exited", "exited"]
    [vip] = _runs("vip", rich)
    assert vip.status == "completed" and Customer.objects.get(pk=rich.pk).traits["rescued"] is True
    assert [r.status for r in _runs("middle", poor)] == ["exited"]
    assert _runs("vip", poor) == []  # the entry rule refused: ltv 5
    assert _move_detail(poor, "middle")["started_run"] is None
    reset_caches()


def test_a_target_without_a_live_version_is_an_error_on_the_step_and_the_run_goes_on(db, enter):
    reset_caches()
    unit = BusinessUnit.objects.create(slug="drafts", name="Drafts")
    workflow_create(name="draft", business_unit=unit)
    _publish("main", [{"key": "move", "kind": "start_workflow", "config": {"workflow": "draft"}}, TAG])
    ada = CustomerFactory(external_id="ada")

    enter("main", [ada])

    [main] = _runs("main", ada)
    step = StepExecution.objects.get(run=main, step_key="move")
    assert main.status == "completed" and step.error == "workflow 'draft' has no live version"
    reset_caches()


@pytest.mark.django_db
def test_a_batch_moves_its_customers_with_statements_that_do_not_grow_with_it(journeys):
    small = [CustomerFactory(external_id=f"s{i}") for i in range(5)]
    large = [CustomerFactory(external_id=f"l{i}") for i in range(40)]
    events_process_counted(pending_events(small + large, name="Joined"))

    statements_small = events_process_counted(pending_events(small, source="s"))
    statements_large = events_process_counted(pending_events(large, source="l"))

    assert statements_large - statements_small <= 6, (statements_small, statements_large)
    assert JourneyRun.objects.filter(workflow__name="rescue", status="waiting").count() == 45
    assert not JourneyRun.objects.filter(workflow__name__in=["onboard", "nurture"], status__in=["active", "waiting"]).exists()
    assert Customer.objects.filter(traits__rescued=True).count() == 45


@pytest.mark.django_db
def test_a_second_delivery_of_the_same_event_moves_no_one_twice(journeys):
    ada = CustomerFactory(external_id="ada")
    [event] = pending_events([ada])
    events_process_counted([event])
    from journeys.choices import EventStatus
    from journeys.models import Event

    Event.objects.filter(pk=event).update(status=EventStatus.PENDING)  # a retried task finds it pending again

    events_process_counted([event])

    assert len(_runs("onboard", ada)) == 1 and len(_runs("rescue", ada)) == 1


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_a_later_event_of_the_same_batch_sees_the_runs_a_move_ended_and_started(journeys, replayed):
    """One /v1/batch can carry a customer's events back to back: the move made for the first
    (nurture ended, rescue started and waiting for "Came Back") is what the second one meets,
    in the set-based pass and in the one-event-at-a-time replay a broken event sets off."""
    people = [CustomerFactory(external_id=f"b{i}") for i in range(3)]
    events_process_counted(pending_events(people, name="Joined", source="j"))  # each waits in nurture for "Came Back"
    both = pending_events(people, name="Signed Up", source="s") + pending_events(people, name="Came Back", source="c")
    if replayed:
        from journeys.models import Event

        both += _breaking_event()

    assert events_process(event_ids=both) == 6
    if replayed:
        assert Event.objects.get(name="Oops").status == "failed"

    for customer in people:
        [nurture], [rescue] = _runs("nurture", customer), _runs("rescue", customer)
        assert (nurture.status, nurture.error) == ("exited", "moved to rescue")  # not resumed after its exit
        assert rescue.status == "completed"  # "Came Back" resumed the run the move started
        assert rescue.executions.get(step_key="wait").outcome == "event"
        assert not nurture.executions.filter(outcome="event").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_a_run_that_wakes_after_a_move_ended_it_in_the_same_page_takes_no_step(journeys, replayed, warehouse):
    """Two runs of one customer wake in the same page (both delays end at the same minute); the
    first moves the customer to rescue and ends the second's workflow. The second run stays ended:
    it does not take its next step, in the set-based wake-up and in the run-by-run replay a broken
    run sets off (that run alone is marked failed)."""
    from datetime import timedelta

    from journeys.engine.wakeups import WAKE_LEASE, runs_wake

    pause = {"key": "pause", "kind": "delay", "config": {"duration": "1h"}}
    nudge = {"key": "nudge", "kind": "update_profile", "config": {"traits": {"nudged": True}}}
    _publish("deadline", [pause, _move("rescue", exit_workflows=("reminder",))])
    _publish("reminder", [pause, nudge])
    people = [CustomerFactory(external_id=f"w{i}") for i in range(3)]
    now = timezone.now()
    with transaction.atomic():
        for workflow in ("deadline", "reminder"):  # the deadline runs first in each customer's page order
            version = load_version(Workflow.objects.get(name=workflow).live_version_id)
            for customer in people:
                run_enroll(version=version, customer=customer, trigger_key=f"t:{next(_keys)}", now=now)
    due = now + timedelta(hours=1)
    lease = due + WAKE_LEASE
    runs = JourneyRun.objects.filter(workflow__name__in=["deadline", "reminder"])
    if replayed:  # a run whose visits cannot be read breaks the set-based pass: the page is replayed run by run
        oops = CustomerFactory(external_id="oops")
        with transaction.atomic():
            run_enroll(version=load_version(Workflow.objects.get(name="reminder").live_version_id), customer=oops,
                       trigger_key="t:oops", now=now)
        JourneyRun.objects.filter(customer=oops).update(visits=["not", "a", "map"])
    assert runs.filter(status="waiting").count() == 6 + replayed
    ids = list(runs.values_list("pk", flat=True))
    runs.update(next_wake_at=lease)

    assert runs_wake(run_ids=ids, lease=lease, now=due) == len(ids)

    for customer in people:
        [deadline], [reminder], [rescue] = _runs("deadline", customer), _runs("reminder", customer), _runs("rescue", customer)
        assert deadline.status == "exited" and rescue.status == "waiting"
        assert (reminder.status, reminder.error) == ("exited", "moved to rescue")  # not written over by its own step
        assert not reminder.executions.filter(step_key="nudge").exists()
        assert reminder.executions.get(step_key="pause").outcome == "exited"  # its delay ended with it, not "next"
        customer.refresh_from_db()
        assert "nudged" not in customer.traits and customer.traits["rescued"] is True
        assert warehouse(customer)[reminder.workflow_id]["error"] == "moved to rescue"  # the stream heard of it
    if replayed:
        broken = JourneyRun.objects.get(customer__external_id="oops")
        assert broken.status == "failed" and broken.error.startswith("wake failed")
        assert broken.executions.get().outcome == "failed"
        assert warehouse(broken.customer)[broken.workflow_id]["status"] == "failed"


@pytest.fixture
def warehouse(db):
    """A stream destination that wants journey.exited (its outbox rows are what it will be sent)."""
    from journeys.models import StreamDestination
    from journeys.services.stream_destinations import destination_save

    destination_save(destination=StreamDestination(name="warehouse", url="http://127.0.0.1:9/hook",
                                                   event_types=["journey.exited"]), reason="test")

    def exits(customer: Customer) -> dict[str, dict]:
        from journeys.models import StreamEvent

        return {e.data["workflow_id"]: e.data for e in StreamEvent.objects.filter(type="journey.exited", customer_id=customer.pk)}

    return exits


def test_the_stream_hears_of_the_runs_a_move_ended(journeys, enter, warehouse):
    """A run another run's move ends did not end by its own steps: the outbound stream still gets
    its journey.exited, as for every run that ends (alone and inside an engine batch)."""
    people = [CustomerFactory(external_id=f"x{i}") for i in range(3)]
    events_process_counted(pending_events(people, name="Joined"))  # each waits in nurture

    enter("onboard", people)

    for customer in people:
        [onboard], [nurture] = _runs("onboard", customer), _runs("nurture", customer)
        exits = warehouse(customer)
        assert exits[nurture.workflow_id] == {
            "type": "journey.exited", "run_id": nurture.pk, "workflow_id": nurture.workflow_id,
            "version_id": nurture.version_id, "version": 1, "customer_id": customer.pk, "status": "exited",
            "step": "wait", "error": "moved to rescue", "converted": False}
        assert exits[onboard.workflow_id]["status"] == "exited"  # the moving run ends on its own, as before
        assert set(exits) == {onboard.workflow_id, nurture.workflow_id}  # rescue is still waiting


PING = {"key": "ping", "kind": "wait_for_event", "config": {"event": "Ping", "timeout": "7d"}}


@pytest.mark.django_db
@pytest.mark.parametrize("tail", [False, True], ids=["reminder_ends", "reminder_waits_again"])
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_one_event_resumes_two_runs_and_the_first_ones_move_ends_the_second(journeys, replayed, tail):
    """A "Ping" both runs of a customer wait for: the deadline run (older, so first) moves the
    customer to rescue and exits the reminder's workflow; the reminder stays ended and takes no
    step (before: resumed from its stale copy and written over the exit)."""
    nudge = {"key": "nudge", "kind": "update_profile", "config": {"traits": {"nudged": True}}}
    _publish("reminder", [PING, nudge, WAIT] if tail else [PING, nudge])
    _publish("deadline", [PING, _move("rescue", exit_workflows=("reminder",))])
    people = [CustomerFactory(external_id=f"p{i}") for i in range(2)]
    now = timezone.now()
    with transaction.atomic():
        for workflow in ("deadline", "reminder"):  # an event acts on a customer's runs in the order they began
            version = load_version(Workflow.objects.get(name=workflow).live_version_id)
            for customer in people:
                run_enroll(version=version, customer=customer, trigger_key=f"t:{next(_keys)}", now=now)
    ids = pending_events(people, name="Ping", source="p") + (_breaking_event() if replayed else [])

    events_process(event_ids=ids)

    for customer in people:
        [deadline], [reminder], [rescue] = _runs("deadline", customer), _runs("reminder", customer), _runs("rescue", customer)
        assert deadline.status == "exited" and rescue.status == "waiting"
        assert (reminder.status, reminder.error) == ("exited", "moved to rescue")
        customer.refresh_from_db()
        assert "nudged" not in customer.traits


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_an_event_that_ends_a_run_and_enters_its_workflow_again_starts_the_new_run(db, replayed):
    """One open run at a time, re-entry always: the "Go" that ends a customer's run (it waited for
    it) also starts the next one, for every customer of the batch (before, set-based, only for
    those whose ended run another resume had happened to write first)."""
    reset_caches()
    _publish("loop", [{"key": "go", "kind": "wait_for_event", "config": {"event": "Go", "timeout": "7d"}}],
             trigger="Go", reentry_policy="always")
    people = [CustomerFactory(external_id=f"g{i}") for i in range(3)]
    assert events_process(event_ids=pending_events(people, name="Go", source="a")) == 3

    events_process(event_ids=pending_events(people, name="Go", source="b") + (_breaking_event() if replayed else []))

    for customer in people:
        assert [r.status for r in _runs("loop", customer)] == ["completed", "waiting"]
    reset_caches()


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_a_move_an_event_sets_off_comes_before_the_entries_the_same_event_makes(db, replayed):
    """The "Ping" that moves a customer out of promo (exit_workflows) also enters promo: as one
    event at a time sees it, the move ends what was open, then the entry starts a promo run that
    stays, for every customer of the batch (before, set-based, the last one's was exited)."""
    reset_caches()
    _publish("rescue", [TAG, WAIT])
    _publish("promo", [WAIT], trigger="Ping")
    _publish("deadline", [PING, _move("rescue", exit_workflows=("promo",))])
    people = [CustomerFactory(external_id=f"q{i}") for i in range(3)]
    now = timezone.now()
    with transaction.atomic():
        version = load_version(Workflow.objects.get(name="deadline").live_version_id)
        for customer in people:
            run_enroll(version=version, customer=customer, trigger_key=f"t:{next(_keys)}", now=now)

    events_process(event_ids=pending_events(people, name="Ping", source="p") + (_breaking_event() if replayed else []))

    for customer in people:
        assert [(r.status, r.error) for r in _runs("promo", customer)] == [("waiting", "")]
        assert [r.status for r in _runs("rescue", customer)] == ["waiting"]
    reset_caches()


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_a_move_ends_a_run_that_started_another_workflow_in_the_same_flush(db, replayed):
    """"Signed Up" enters starter (it starts welcome and waits) and then onboard, whose move ends
    starter's runs: as one event at a time sees it, the starter run is ended. Set-based, both
    start_workflow visits are written by one flush; before, a run that had itself made a move in
    that flush was spared every other move's exits and stayed waiting."""
    reset_caches()
    _publish("welcome", [TAG])
    _publish("rescue", [TAG, WAIT])
    _publish("starter", [_move("welcome", exit_current=False), WAIT], trigger="Signed Up")
    _publish("onboard", [_move("rescue", exit_workflows=("starter",))], trigger="Signed Up")
    people = [CustomerFactory(external_id=f"x{i}") for i in range(3)]

    events_process(event_ids=pending_events(people, name="Signed Up", source="s")
                   + (_breaking_event() if replayed else []))

    for customer in people:
        [starter] = _runs("starter", customer)
        assert (starter.status, starter.error) == ("exited", "moved to rescue")
        assert list(starter.executions.order_by("id").values_list("step_key", "outcome")) == [
            ("move", "next"), ("wait", "exited")]  # its wait, written by the same flush, ends with it
        assert not starter.executions.filter(finished_at__isnull=True).exists()
        assert [r.status for r in _runs("welcome", customer)] == ["completed"]
        assert [r.status for r in _runs("rescue", customer)] == ["waiting"]
        assert [r.status for r in _runs("onboard", customer)] == ["exited"]
    reset_caches()


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_the_stage_rules_see_the_stage_a_moved_to_run_set(db, replayed):
    """"Signed Up" moves a pro customer into rescue, whose first step puts them in the step-managed
    stage "rescued". As one event at a time sees it, the stage rules run after that move (and leave
    a step-managed stage alone): one transition, to "rescued". Set-based, the rules ran before the
    moved-to run's steps, so the customer went through "active" first (two transitions)."""
    from journeys.models import LifecycleStage, StageTransition

    reset_caches()
    LifecycleStage.objects.create(key="active", name="Active", order=0, rule="profile.plan == 'pro'")
    LifecycleStage.objects.create(key="rescued", name="Rescued", order=1)
    _publish("rescue", [{"key": "stage", "kind": "set_stage", "config": {"stage": "rescued"}}, WAIT])
    _publish("onboard", [_move("rescue")], trigger="Signed Up")
    people = [CustomerFactory(external_id=f"r{i}", traits={"plan": "pro"}) for i in range(3)]

    events_process(event_ids=pending_events(people, name="Signed Up", source="s")
                   + (_breaking_event() if replayed else []))

    for customer in people:
        customer.refresh_from_db()
        assert customer.stage == "rescued"
        assert list(StageTransition.objects.filter(customer=customer).values_list("from_stage", "to_stage")) == [
            ("", "rescued")]
    reset_caches()


@pytest.mark.django_db
@pytest.mark.parametrize("starter_moves", [True, False], ids=["starter_moves", "starter_waits"])
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_an_earlier_workflows_move_does_not_end_a_run_the_event_enters_after_it(db, replayed, starter_moves):
    """The other order: onboard (published first) moves the customer before starter takes them,
    so, as one event at a time sees it, starter's run comes after the move and stays. Set-based,
    both entries were made before either ran, and the move ended the starter run."""
    reset_caches()
    _publish("welcome", [TAG])
    _publish("rescue", [TAG, WAIT])
    _publish("onboard", [_move("rescue", exit_workflows=("starter",))], trigger="Signed Up")
    _publish("starter", ([_move("welcome", exit_current=False)] if starter_moves else []) + [WAIT], trigger="Signed Up")
    people = [CustomerFactory(external_id=f"y{i}") for i in range(3)]

    events_process(event_ids=pending_events(people, name="Signed Up", source="s")
                   + (_breaking_event() if replayed else []))

    for customer in people:
        [starter] = _runs("starter", customer)
        assert (starter.status, starter.error) == ("waiting", "")
        assert [r.status for r in _runs("rescue", customer)] == ["waiting"]
    reset_caches()


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_an_entry_is_checked_after_the_move_an_earlier_entry_of_the_event_made(db, replayed):
    """One open run at a time in second: "Signed Up" enters onboard, whose move ends the open
    second run, and then second, which takes the customer again (set-based, the entry was checked
    against the run before the move ended it and refused)."""
    reset_caches()
    _publish("rescue", [TAG, WAIT])
    _publish("onboard", [_move("rescue", exit_workflows=("second",))], trigger="Signed Up")
    second = _publish("second", [WAIT], trigger="Signed Up", reentry_policy="always", allow_concurrent_runs=False)
    people = [CustomerFactory(external_id=f"z{i}") for i in range(3)]
    now = timezone.now()
    with transaction.atomic():
        for customer in people:
            run_enroll(version=load_version(second), customer=customer, trigger_key=f"old:{customer.pk}", now=now)

    events_process(event_ids=pending_events(people, name="Signed Up", source="s")
                   + (_breaking_event() if replayed else []))

    for customer in people:
        assert [(r.status, r.error) for r in _runs("second", customer)] == [("exited", "moved to rescue"), ("waiting", "")]
    reset_caches()


@pytest.mark.django_db
@pytest.mark.parametrize("replayed", [False, True], ids=["set_based", "replayed_one_by_one"])
def test_a_segment_entry_compares_with_the_profile_before_the_event_in_both_paths(replayed):
    """An identify that makes the customer pro enters tagger (it sets `rescued`) and the segment
    "pro or rescued": the customer was in neither before the event, so they enter it. One event
    at a time, "before" was read after tagger's step had run (rescued: already in), and the
    customer did not enter (found by a review)."""
    from journeys.models import Event

    reset_caches()
    _publish("tagger", [TAG], trigger="Identify")
    _publish("seg", [WAIT], trigger_kind="segment_entry",
             trigger_config={"rule": "profile.plan == 'pro' or profile.rescued == true"})
    people = [CustomerFactory(external_id=f"s{i}", traits={"plan": "pro"}) for i in range(2)]
    ids = pending_events(people, name="Identify", source="i")
    Event.objects.filter(pk__in=ids).update(changes={"plan": [None, "pro"]})

    events_process(event_ids=ids + (_breaking_event() if replayed else []))

    for customer in people:
        assert [r.status for r in _runs("seg", customer)] == ["waiting"]
        customer.refresh_from_db()
        assert customer.traits["rescued"] is True
    reset_caches()
