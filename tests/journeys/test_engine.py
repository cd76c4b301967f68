"""The journey engine, driven through the event API, the scheduler and the services."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone as djtz

from journeys.engine.scheduler import (
    date_triggers_run,
    runs_wake_due,
    schedules_run,
    watches_fire_due,
)
from journeys.models import BusinessUnit, Customer, Event, JourneyRun, LifecycleStage, StepExecution
from journeys.services.workflows import (
    version_build,
    version_new_draft,
    version_publish,
    version_check_editable,
    workflow_create,
    workflow_export,
    workflow_import,
)
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def unit(db):
    return BusinessUnit.objects.create(name="Retention", slug="retention")


@pytest.fixture
def publish(unit):
    counter = {"n": 0}

    def make(definition: dict, name: str | None = None):
        counter["n"] += 1
        workflow = workflow_create(name=name or f"wf-{counter['n']}", business_unit=unit)
        version = version_build(workflow=workflow, definition=definition)
        return version_publish(version=version, reason="test")

    return make


def steps(*items):
    return [dict(zip(("key", "kind", "config"), item)) for item in items]


def edges(*items):
    return [dict(zip(("from", "outcome", "to"), item)) for item in items]


BIG_ORDER = {
    "trigger_event": "Order Completed",
    "trigger_config": {"filter": "event.properties.total >= 100"},
    "steps": steps(
        ("check", "condition", {"rule": "profile.plan == 'pro'"}),
        ("tag_vip", "update_profile", {"traits": {"segment": "vip"}, "variables": {"total": {"rule": "event.properties.total"}}}),
        ("tag_std", "update_profile", {"traits": {"segment": "standard"}}),
    ),
    "edges": edges(("check", "yes", "tag_vip"), ("check", "no", "tag_std")),
}


def test_event_trigger_runs_steps_and_records_each_execution(publish, send):
    publish(BIG_ORDER)
    send("identify", userId="u1", traits={"plan": "pro"})

    send(userId="u1", event="Order Completed", properties={"total": 150})

    run = JourneyRun.objects.get()
    assert run.status == "completed"
    assert run.variables == {"total": 150}
    assert list(run.executions.values_list("step_key", "outcome")) == [("check", "yes"), ("tag_vip", "next")]
    assert Customer.objects.get(external_id="u1").traits["segment"] == "vip"
    assert Event.objects.filter(status="processed").count() == Event.objects.count()


def test_trigger_filter_false_does_not_enter(publish, send):
    publish(BIG_ORDER)
    send(userId="u1", event="Order Completed", properties={"total": 50})
    assert JourneyRun.objects.count() == 0


def test_entry_rule_false_does_not_enter(publish, send):
    publish({**BIG_ORDER, "entry_rule": "profile.ltv >= 1000"})
    send(userId="u1", event="Order Completed", properties={"total": 500})
    assert JourneyRun.objects.count() == 0


WAIT = {
    "trigger_event": "Signed Up",
    "steps": steps(
        ("wait", "wait_for_event", {"event": "Activated", "timeout": "1d", "filter": "event.properties.ok == true"}),
        ("yay", "goal", {"name": "activated"}),
        ("nudge", "update_profile", {"traits": {"nudged": True}}),
    ),
    "edges": edges(("wait", "event", "yay"), ("wait", "timeout", "nudge")),
}


def test_wait_for_event_takes_the_event_branch_when_matching(publish, send):
    publish(WAIT)
    send(userId="u1", event="Signed Up")
    run = JourneyRun.objects.get()
    assert (run.status, run.wait_event) == ("waiting", "Activated")

    send(userId="u1", event="Activated", properties={"ok": False})
    assert JourneyRun.objects.get().status == "waiting"
    send(userId="u1", event="Activated", properties={"ok": True})

    run = JourneyRun.objects.get()
    assert run.status == "completed" and run.converted_at is not None
    assert list(run.executions.values_list("step_key", "outcome")) == [("wait", "event"), ("yay", "next")]


def test_wait_for_event_times_out(publish, send):
    publish(WAIT)
    send(userId="u1", event="Signed Up")

    assert runs_wake_due(now=djtz.now() + timedelta(hours=23)) == 0
    assert runs_wake_due(now=djtz.now() + timedelta(days=1, minutes=1)) == 1

    run = JourneyRun.objects.get()
    assert run.status == "completed"
    assert list(run.executions.values_list("step_key", "outcome")) == [("wait", "timeout"), ("nudge", "next")]
    assert Customer.objects.get(external_id="u1").traits["nudged"] is True


def test_a_run_begun_anonymously_goes_on_as_the_customer_who_signs_in(publish, send):
    """A cart run begun on a device waits for the purchase; the visitor signs in (their profile
    merges into the known one) and buys: the run hears it, and no reminder goes out after it."""
    publish(WAIT)
    send("identify", userId="m1")
    send(anonymousId="dev-1", event="Signed Up", context={"timezone": "Asia/Tokyo"})
    anonymous = Customer.objects.get(identities__value="dev-1")
    send("identify", anonymousId="dev-1", userId="m1")
    known = Customer.objects.get(external_id="m1")
    assert Customer.objects.get(pk=anonymous.pk).merged_into_id == known.pk
    assert known.timezone == "Asia/Tokyo"  # the device's zone, as an identify from it would set it

    run = JourneyRun.objects.get()
    assert (run.customer_id, run.status) == (known.pk, "waiting")
    send(userId="m1", event="Activated", properties={"ok": True})
    run.refresh_from_db()
    assert run.status == "completed" and run.converted_at is not None
    assert runs_wake_due(now=djtz.now() + timedelta(days=2)) == 0  # no timeout branch after the purchase


def test_when_both_profiles_are_on_the_journey_the_survivors_run_goes_on_alone(publish, send):
    publish(WAIT)
    send(userId="m1", event="Signed Up")
    send(anonymousId="dev-1", event="Signed Up")
    send("identify", anonymousId="dev-1", userId="m1")
    known = Customer.objects.get(external_id="m1")

    runs = {r.status: r for r in JourneyRun.objects.all()}
    assert set(runs) == {"waiting", "exited"}
    assert runs["waiting"].customer_id == known.pk and runs["waiting"].trigger_event.message_id
    assert "already on this journey" in runs["exited"].error
    assert JourneyRun.objects.filter(customer=known, status__in=("active", "waiting")).count() == 1
    assert runs_wake_due(now=djtz.now() + timedelta(days=2)) == 1  # one timeout, one nudge


def test_delay_until_local_time_uses_customer_timezone(publish, send):
    publish({
        "trigger_event": "Signed Up",
        "steps": steps(("morning", "delay", {"until_local_time": "09:00"}), ("done", "goal", {})),
        "edges": edges(("morning", "next", "done")),
    })
    send("identify", userId="u1", context={"timezone": "Asia/Tokyo"})
    send(userId="u1", event="Signed Up")

    run = JourneyRun.objects.get()
    local = run.next_wake_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert (local.hour, local.minute) == (9, 0)
    assert run.next_wake_at > djtz.now()


def test_delay_then_wake(publish, send):
    publish({
        "trigger_event": "Signed Up",
        "steps": steps(("pause", "delay", {"duration": "2h"}), ("done", "update_profile", {"traits": {"welcomed": True}})),
        "edges": edges(("pause", "next", "done")),
    })
    send(userId="u1", event="Signed Up")
    assert JourneyRun.objects.get().status == "waiting"

    runs_wake_due(now=djtz.now() + timedelta(hours=3))

    assert JourneyRun.objects.get().status == "completed"
    assert runs_wake_due(now=djtz.now() + timedelta(hours=4)) == 0  # nothing runs twice


def test_steps_after_a_delay_or_a_timeout_still_read_the_trigger_event(publish, send):
    """An order's total decides the branch an hour later: event.* is the trigger event after a
    delay and after a wait's timeout (it was empty: the condition silently took "no")."""
    publish({
        "trigger_event": "Order Placed",
        "steps": steps(("later", "delay", {"duration": "1h"}),
                       ("big", "condition", {"rule": "event.properties.total >= 100"}),
                       ("wait", "wait_for_event", {"event": "Reviewed", "timeout": "1d"}),
                       ("still", "condition", {"rule": "event.properties.total >= 100"}),
                       ("vip", "update_profile", {"traits": {"vip": True}}),
                       ("small", "update_profile", {"traits": {"vip": False}})),
        "edges": edges(("later", "next", "big"), ("big", "yes", "wait"), ("big", "no", "small"),
                       ("wait", "timeout", "still"), ("still", "yes", "vip"), ("still", "no", "small")),
    })
    send(userId="u1", event="Order Placed", properties={"total": 150.5})
    runs_wake_due(now=djtz.now() + timedelta(hours=2))
    runs_wake_due(now=djtz.now() + timedelta(days=2))

    run = JourneyRun.objects.get()
    assert [s for s, _ in run.executions.values_list("step_key", "outcome")] == ["later", "big", "wait", "still", "vip"]
    assert Customer.objects.get(external_id="u1").traits["vip"] is True


def test_split_takes_first_matching_branch_else_default(publish, send):
    publish({
        "trigger_event": "Visit",
        "allow_concurrent_runs": True, "reentry_policy": "always",
        "steps": steps(
            ("route", "split", {"branches": [{"name": "big", "rule": "event.properties.n > 10"},
                                             {"name": "mid", "rule": "event.properties.n > 5"}]}),
            ("b", "goal", {"name": "big"}), ("m", "goal", {"name": "mid"}), ("d", "exit", {"reason": "small"}),
        ),
        "edges": edges(("route", "big", "b"), ("route", "mid", "m"), ("route", "default", "d")),
    })
    for n in (20, 7, 1):
        send(userId="u1", event="Visit", properties={"n": n})

    outcomes = [r.executions.first().outcome for r in JourneyRun.objects.order_by("id")]
    assert outcomes == ["big", "mid", "default"]
    assert JourneyRun.objects.order_by("id").last().status == "exited"


@pytest.mark.parametrize("policy, cooldown, expected", [("once", 0, 1), ("always", 0, 3), ("cooldown", 3600, 1), ("cooldown", 0, 3)])
def test_reentry_policies(publish, send, policy, cooldown, expected):
    publish({"trigger_event": "Ping", "reentry_policy": policy, "reentry_cooldown_s": cooldown,
             "steps": steps(("g", "goal", {}))})
    for _ in range(3):
        send(userId="u1", event="Ping")
    assert JourneyRun.objects.count() == expected


def test_one_open_run_per_customer_unless_allowed(publish, send):
    publish({"trigger_event": "Ping", "reentry_policy": "always", **{k: WAIT[k] for k in ("steps", "edges")}})
    send(userId="u1", event="Ping")
    send(userId="u1", event="Ping")
    assert JourneyRun.objects.count() == 1


def test_goal_event_ends_the_run_as_conversion(publish, send):
    publish({**WAIT, "goal_event": "Order Completed", "goal_filter": "event.properties.total > 0"})
    send(userId="u1", event="Signed Up")

    send(userId="u1", event="Order Completed", properties={"total": 10})

    run = JourneyRun.objects.get()
    assert run.status == "completed" and run.converted_at is not None
    wait = run.executions.get()  # the wait it was at ends with the conversion
    assert (wait.step_key, wait.outcome, wait.finished_at) == ("wait", "converted", run.finished_at)
    assert runs_wake_due(now=djtz.now() + timedelta(days=2)) == 0


CART = {
    "trigger_kind": "inactivity",
    "trigger_event": "Checkout Started",
    "trigger_config": {"followed_by": "Order Completed", "within": "1h"},
    "steps": steps(("remind", "update_profile", {"traits": {"reminded": True}})),
}


def test_inactivity_trigger_fires_when_b_does_not_follow(publish, send):
    publish(CART)
    send(userId="u1", event="Checkout Started")
    assert watches_fire_due(now=djtz.now() + timedelta(minutes=30)) == 0
    assert JourneyRun.objects.count() == 0

    watches_fire_due(now=djtz.now() + timedelta(hours=2))

    run = JourneyRun.objects.get()
    assert run.status == "completed"
    assert Customer.objects.get(external_id="u1").traits["reminded"] is True
    assert watches_fire_due(now=djtz.now() + timedelta(hours=3)) == 0


def test_inactivity_trigger_is_cancelled_by_the_follow_up(publish, send):
    publish(CART)
    send(userId="u1", event="Checkout Started")
    send(userId="u1", event="Order Completed")

    watches_fire_due(now=djtz.now() + timedelta(hours=2))

    assert JourneyRun.objects.count() == 0


def test_a_follow_up_processed_before_the_start_still_closes_the_window(publish, send):
    """Two requests out of order (two devices, a retried request): the order, stamped five
    minutes after the checkout, is processed first. No reminder to someone who ordered."""
    publish(CART)
    t0 = djtz.now() - timedelta(minutes=10)
    send(userId="u1", event="Order Completed", timestamp=(t0 + timedelta(minutes=5)).isoformat())
    send(userId="u1", event="Checkout Started", timestamp=t0.isoformat())
    send(userId="u2", event="Order Completed", timestamp=(t0 - timedelta(minutes=5)).isoformat())  # before it
    send(userId="u2", event="Checkout Started", timestamp=t0.isoformat())

    assert watches_fire_due(now=djtz.now() + timedelta(hours=2)) == 1  # u1's window opened closed
    assert list(JourneyRun.objects.values_list("customer__external_id", flat=True)) == ["u2"]


def test_an_event_not_followed_by_itself_is_not_its_own_follow_up(publish, send):
    publish({**CART, "trigger_config": {"followed_by": "Checkout Started", "within": "1h"}})
    send(userId="u1", event="Checkout Started")
    send(userId="u2", event="Checkout Started")
    send(userId="u2", event="Checkout Started")  # u2 came back within the hour: their first window closes

    assert watches_fire_due(now=djtz.now() + timedelta(hours=2)) >= 2
    assert sorted(JourneyRun.objects.values_list("customer__external_id", flat=True)) == ["u1", "u2"]


def test_a_window_opened_before_a_publish_fires_on_the_new_live_version(publish, send):
    v1 = publish(CART, name="cart")
    send(userId="u1", event="Checkout Started")
    v2 = version_publish(version=version_new_draft(version=v1), reason="copy edits")

    watches_fire_due(now=djtz.now() + timedelta(hours=2))

    run = JourneyRun.objects.get()
    assert run.version_id == v2.pk and run.trigger_key.startswith("inactivity:")
    assert Customer.objects.get(external_id="u1").traits["reminded"] is True


def test_a_window_is_not_moved_to_a_version_that_starts_on_another_event(publish, send):
    v1 = publish(CART, name="cart")
    send(userId="u1", event="Checkout Started")
    draft = version_new_draft(version=v1)
    draft.trigger_event = "Cart Viewed"
    draft.save()
    version_publish(version=draft, reason="another trigger")

    watches_fire_due(now=djtz.now() + timedelta(hours=2))
    assert JourneyRun.objects.count() == 0


def test_an_event_from_before_the_run_began_neither_ends_its_wait_nor_converts_it(publish, send):
    """A late offline queue delivers an Activated stamped a week ago: the run, begun now, waits on."""
    publish({**WAIT, "goal_event": "Bought"})
    send(userId="u1", event="Signed Up")
    week_ago = (djtz.now() - timedelta(days=7)).isoformat()
    send(userId="u1", event="Activated", properties={"ok": True}, timestamp=week_ago)
    send(userId="u1", event="Bought", timestamp=week_ago)
    run = JourneyRun.objects.get()
    assert (run.status, run.converted_at) == ("waiting", None)

    send(userId="u1", event="Activated", properties={"ok": True})
    run.refresh_from_db()
    assert run.status == "completed"


def test_attribute_change_trigger(publish, send):
    publish({"trigger_kind": "attribute_change", "trigger_config": {"attribute": "plan", "to": "pro"},
             "reentry_policy": "always", "steps": steps(("g", "goal", {}))})
    send("identify", userId="u1", traits={"plan": "free"})
    send("identify", userId="u1", traits={"plan": "pro"})
    send("identify", userId="u1", traits={"plan": "pro"})  # no change: no new run
    assert JourneyRun.objects.count() == 1


def test_attribute_change_trigger_from_a_value_fires_only_on_changes_from_it(publish, send):
    # given a trigger on tier changing from silver to gold
    publish({"trigger_kind": "attribute_change", "trigger_config": {"attribute": "tier", "from": "silver", "to": "gold"},
             "reentry_policy": "always", "steps": steps(("g", "goal", {}))})
    for user, tier in (("bronze", "bronze"), ("silver", "silver")):
        send("identify", userId=user, traits={"tier": tier})

    # when both reach gold
    for user in ("bronze", "silver"):
        send("identify", userId=user, traits={"tier": "gold"})

    # then only the one who was silver entered
    assert list(JourneyRun.objects.values_list("customer__external_id", flat=True)) == ["silver"]


@pytest.mark.parametrize(("config", "message"), [
    ({"attribute": "tier", "within": "1h"}, "within: is a setting of inactivity triggers; the attribute change "
                                            "trigger does not read it (it reads attribute, from, to): remove it"),
    ({"attribute": "tier", "form": "silver"}, "form: the attribute change trigger has no such setting; did you mean "
                                              "'from'?"),
], ids=["other-kind", "misspelled"])
def test_a_setting_of_another_trigger_kind_or_a_misspelled_one_is_refused_naming_it(unit, config, message):
    workflow = workflow_create(name="tiers", business_unit=unit)
    with pytest.raises(ValidationError) as refused:
        version_build(workflow=workflow, definition={"trigger_kind": "attribute_change", "trigger_config": config,
                                                     "steps": steps(("g", "goal", {}))})
    assert refused.value.message_dict["trigger_config"] == [message]
    # settings of no trigger (a note) are kept as they are
    version = version_build(workflow=workflow, definition={
        "trigger_kind": "attribute_change", "trigger_config": {"attribute": "tier", "note": "tiers v2"},
        "steps": steps(("g", "goal", {}))})
    assert version.trigger_config == {"attribute": "tier", "note": "tiers v2"}


def test_segment_entry_trigger_fires_when_rule_becomes_true(publish, send):
    publish({"trigger_kind": "segment_entry", "trigger_config": {"rule": "profile.ltv >= 500"},
             "reentry_policy": "always", "allow_concurrent_runs": True, "steps": steps(("g", "goal", {}))})
    send("identify", userId="u1", traits={"ltv": 100})
    send("identify", userId="u1", traits={"ltv": 600})
    send("identify", userId="u1", traits={"ltv": 700})  # already in the segment
    assert JourneyRun.objects.count() == 1


def test_date_trigger_anniversary_in_customer_timezone(publish, send):
    publish({"trigger_kind": "date_attribute", "trigger_config": {"attribute": "signup_date", "at": "09:00"},
             "reentry_policy": "always", "steps": steps(("g", "goal", {}))})
    send("identify", userId="tokyo", traits={"signup_date": "2023-06-15"}, context={"timezone": "Asia/Tokyo"})
    send("identify", userId="other", traits={"signup_date": "2023-01-02"})

    # 2025-06-15 01:00 UTC is 10:00 in Tokyo: the anniversary has begun there.
    assert date_triggers_run(now=datetime(2025, 6, 15, 1, 0, tzinfo=timezone.utc)) == 1
    assert date_triggers_run(now=datetime(2025, 6, 15, 2, 0, tzinfo=timezone.utc)) == 0  # once per day
    assert JourneyRun.objects.get().customer.external_id == "tokyo"


def test_date_trigger_waits_for_local_time(publish, send):
    publish({"trigger_kind": "date_attribute", "trigger_config": {"attribute": "birthday", "at": "09:00"},
             "steps": steps(("g", "goal", {}))})
    send("identify", userId="ny", traits={"birthday": "1990-03-10"}, context={"timezone": "America/New_York"})
    # 12:00 UTC is 07:00 in New York: too early.
    assert date_triggers_run(now=datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)) == 0
    assert date_triggers_run(now=datetime(2025, 3, 10, 15, 0, tzinfo=timezone.utc)) == 1


def test_cron_schedule_over_segment(publish, send):
    version = publish({"trigger_kind": "schedule", "trigger_config": {"cron": "0 9 * * *", "segment": "profile.plan == 'pro'"},
                       "reentry_policy": "always", "steps": steps(("g", "goal", {}))})
    send("identify", userId="p", traits={"plan": "pro"})
    send("identify", userId="f", traits={"plan": "free"})
    from journeys.models import TriggerState

    TriggerState.objects.create(version=version, last_tick_at=datetime(2025, 1, 1, 8, 50, tzinfo=timezone.utc))

    assert schedules_run(now=datetime(2025, 1, 1, 9, 5, tzinfo=timezone.utc)) == 1
    assert schedules_run(now=datetime(2025, 1, 1, 9, 10, tzinfo=timezone.utc)) == 0
    assert JourneyRun.objects.get().customer.external_id == "p"


def test_type_error_in_rule_is_false_and_recorded(publish, send):
    publish({"trigger_event": "Visit", "steps": steps(("c", "condition", {"rule": "event.properties.n > 5"}),
                                                     ("y", "goal", {}), ("n", "exit", {})),
             "edges": edges(("c", "yes", "y"), ("c", "no", "n"))})
    send(userId="u1", event="Visit", properties={"n": "many"})

    execution = StepExecution.objects.get(step_key="c")
    assert execution.outcome == "no"
    assert "TypeError" in execution.error


def test_failing_step_fails_only_that_run_and_can_be_retried(publish, send):
    # given a workflow that moves VIPs to a stage deleted after it was published
    stage = LifecycleStage.objects.create(key="vip", name="VIP", order=1)
    publish({"trigger_event": "Visit", "reentry_policy": "always", "allow_concurrent_runs": True,
             "steps": steps(("calc", "update_profile", {"variables": {"ratio": {"rule": "100 / event.properties.n"}}}),
                            ("is_vip", "condition", {"rule": "event.properties.vip == true"}),
                            ("tag", "set_stage", {"stage": "vip"})),
             "edges": edges(("calc", "next", "is_vip"), ("is_vip", "yes", "tag"))})
    stage.delete()

    send(userId="u1", event="Visit", properties={"n": 5, "vip": True})
    send(userId="u2", event="Visit", properties={"n": 4})

    bad, good = JourneyRun.objects.order_by("id")
    assert bad.status == "failed" and "tag" in bad.error
    assert good.status == "completed" and good.variables == {"ratio": 25.0}
    assert Event.objects.filter(status="processed").count() == 2

    from journeys.engine.runner import run_retry

    LifecycleStage.objects.create(key="vip", name="VIP", order=1)
    run_retry(run=bad, now=djtz.now())
    bad.refresh_from_db()
    assert bad.status == "completed" and bad.customer.stage == "vip"


def test_update_profile_computes_rules_nested_in_a_value(publish, send):
    # given a step setting an address whose city, and a list's item, are rules; and a trait to null
    publish({"trigger_event": "Order Completed", "steps": steps(("keep", "update_profile", {"traits": {
        "address": {"city": {"rule": "event.properties.city"}, "country": "FR"},
        "cities": [{"rule": "upper(event.properties.city)"}], "tmp": None}}))})
    CustomerFactory(external_id="u1", traits={"tmp": "x"})

    # when the event arrives
    send(userId="u1", event="Order Completed", properties={"city": "Lyon"})

    # then the stored values are computed at every depth, and null sets the trait to null
    traits = Customer.objects.get(external_id="u1").traits
    assert traits["address"] == {"city": "Lyon", "country": "FR"} and traits["cities"] == ["LYON"]
    assert "tmp" in traits and traits["tmp"] is None


def test_a_nested_rule_that_does_not_parse_is_refused_naming_where_it_is(unit):
    workflow = workflow_create(name="bad", business_unit=unit)
    config = {"traits": {"address": {"city": {"rule": "event.properties."}}}}
    with pytest.raises(ValidationError, match="address.city: rule error"):
        version_build(workflow=workflow, definition={"trigger_event": "Visit",
                                                     "steps": steps(("keep", "update_profile", config))})


def test_a_rule_error_in_update_profile_leaves_that_value_and_the_run_goes_on(publish, send):
    # given a step that doubles a total, sets a flag, then a goal
    publish({"trigger_event": "Order Completed",
             "steps": steps(("calc", "update_profile", {"traits": {"double": {"rule": "event.properties.total * 2"},
                                                                   "seen": True}}),
                            ("done", "goal", {})),
             "edges": edges(("calc", "next", "done"))})
    CustomerFactory(external_id="u1", traits={"double": 1})

    # when the total arrives as text
    send(userId="u1", event="Order Completed", properties={"total": "150"})

    # then the other trait is set, the failing one kept, the error recorded on the step, the run completed
    assert Customer.objects.get(external_id="u1").traits == {"double": 1, "seen": True}
    calc = StepExecution.objects.get(step_key="calc")
    assert calc.outcome == "next" and "traits.double: event.properties.total * 2: TypeError" in calc.error
    assert calc.detail["skipped"] == {"traits.double": "TypeError: unsupported operand type(s) for *: 'text' and 'number'"}
    assert JourneyRun.objects.get().status == "completed"


def test_processing_an_event_twice_does_nothing_more(publish, send):
    from journeys.engine.processor import events_process

    publish(BIG_ORDER)
    event = send(userId="u1", event="Order Completed", properties={"total": 150})
    Event.objects.filter(pk=event.pk).update(status="pending")  # as if the task ran again

    events_process(event_ids=[event.pk])

    assert JourneyRun.objects.count() == 1
    assert StepExecution.objects.count() == 2


def test_sweeper_processes_events_whose_task_was_lost(publish, api):
    from journeys.engine.scheduler import engine_tick

    publish(BIG_ORDER)
    api.post("track", {"userId": "u1", "event": "Order Completed", "properties": {"total": 150}})  # on_commit never ran
    Event.objects.update(received_at=djtz.now() - timedelta(minutes=5))
    assert Event.objects.get(name="Order Completed").status == "pending"

    engine_tick()

    assert Event.objects.get(name="Order Completed").status == "processed"
    assert JourneyRun.objects.count() == 1


def test_cost_per_event_does_not_grow_with_unmatched_workflows(publish, send, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    publish(BIG_ORDER)
    send(userId="u1", event="Warmup")
    with CaptureQueriesContext(connection) as few:
        send(userId="u1", event="Order Completed", properties={"total": 150})
    for i in range(30):
        publish({"trigger_event": f"Other {i}", "steps": steps(("g", "goal", {}))})
    send(userId="u2", event="Warmup")
    with CaptureQueriesContext(connection) as many:
        send(userId="u2", event="Order Completed", properties={"total": 150})
    assert len(many) <= len(few) + 1


def test_live_version_is_frozen_and_edits_go_to_a_new_draft(publish):
    version = publish(BIG_ORDER)
    with pytest.raises(ValidationError):
        version_check_editable(version=version)

    draft = version_new_draft(version=version)

    assert draft.number == 2 and draft.state == "draft"
    assert workflow_export(version=draft)["version"] == {**workflow_export(version=version)["version"]}


def test_runs_in_flight_stay_on_their_version(publish, send):
    version = publish(WAIT)
    send(userId="u1", event="Signed Up")
    draft = version_new_draft(version=version)
    version_publish(version=draft, reason="v2")

    send(userId="u1", event="Activated", properties={"ok": True})

    run = JourneyRun.objects.get()
    assert run.version_id == version.pk and run.status == "completed"


def test_export_import_round_trips_exactly(publish):
    version = publish(WAIT)
    exported = workflow_export(version=version)

    imported = workflow_import(data=exported, name="Copy")

    again = workflow_export(version=imported)
    assert again["version"] == exported["version"]
    assert again["workflow"]["name"] == "Copy"


@pytest.mark.parametrize(
    "definition, field",
    [
        ({"trigger_event": "E", "steps": steps(("c", "condition", {"rule": "event.x >"}))}, "steps[0].config.rule"),
        ({"trigger_event": "E", "steps": steps(("c", "nope", {}))}, "steps[0].kind"),
        ({"trigger_event": "", "steps": steps(("g", "goal", {}))}, "trigger_event"),
        ({"trigger_event": "E", "steps": steps(("w", "wait_for_event", {"event": "X", "timeout": "soon"}))}, "steps[0].config.timeout"),
        # too long to represent (an imported workflow): a clear error, never a server error
        ({"trigger_event": "E", "steps": steps(("d", "delay", {"duration": "99999999999999999999d"}))}, "steps[0].config.duration"),
        ({"trigger_event": "E", "steps": steps(("d", "delay", {"duration": float("nan")}))}, "steps[0].config.duration"),
        ({"trigger_event": "E", "steps": steps(("g", "goal", {})), "edges": edges(("g", "next", "zz"))}, "edges[0].to"),
        ({"trigger_kind": "schedule", "trigger_config": {"cron": "61 * * * *"}, "steps": steps(("g", "goal", {}))}, "trigger_config"),
        ({"trigger_event": "E", "entry_rule": "os.system('x')", "steps": steps(("g", "goal", {}))}, "entry_rule"),
    ],
)
def test_bad_definitions_are_rejected_naming_the_field(unit, definition, field):
    workflow = workflow_create(name="bad", business_unit=unit)
    with pytest.raises(ValidationError) as exc:
        version_build(workflow=workflow, definition=definition)
    assert field in exc.value.message_dict
    assert workflow.versions.count() == 0


def test_publish_refuses_cycles_without_delay_and_unreachable_steps(unit):
    workflow = workflow_create(name="loop", business_unit=unit)
    version = version_build(workflow=workflow, definition={
        "trigger_event": "E",
        "steps": steps(("a", "condition", {"rule": "true"}), ("b", "goal", {}), ("orphan", "goal", {})),
        "edges": edges(("a", "yes", "b"), ("b", "next", "a")),
    })
    with pytest.raises(ValidationError) as exc:
        version_publish(version=version)
    text = " ".join(exc.value.messages)
    assert "cycle" in text and "orphan cannot be reached" in text


def test_dry_run_shows_path_without_side_effects(publish, send):
    from journeys.services.dry_run import version_dry_run

    version = publish(WAIT)
    send("identify", userId="u1", traits={"plan": "pro"})
    customer = Customer.objects.get(external_id="u1")

    timeout = version_dry_run(version=version, customer=customer, event={"event": "Signed Up"})
    activated = version_dry_run(version=version, customer=customer, event={"event": "Signed Up"}, later_events=["Activated"])

    assert [p["outcome"] for p in timeout.path] == ["timeout", "next"]
    assert timeout.actions == [{"step": "nudge", "kind": "update_profile", "traits": {"nudged": True}, "variables": {}}]
    assert activated.converted and [p["step"] for p in activated.path] == ["wait", "yay"]
    assert JourneyRun.objects.count() == 0
    assert "nudged" not in Customer.objects.get(pk=customer.pk).traits
