"""SLA timers: a case waiting too long for a first response is re-routed, or its priority goes up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from agents import tasks
from agents.services.routing import cases_sla_check
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def team():
    return TeamFactory(categories=["billing"])


def test_the_sla_clock_is_a_q2_schedule():
    schedule = Schedule.objects.get(name="agents.sla_tick")
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == ("agents.tasks.sla_tick", "I", 1, -1)


def test_an_unanswered_case_moves_to_another_agent_after_its_sla(team, django_capture_on_commit_callbacks):
    slow = AgentFactory(team=team, skills={"billing": 5})
    backup = AgentFactory(team=team, skills={"billing": 2})
    case = open_case(priority=3, capture=django_capture_on_commit_callbacks)  # high: 1 hour
    assert case.assigned_agent == slow

    assert cases_sla_check(now=timezone.now() + timedelta(minutes=30)) == {"rerouted": 0, "raised": 0, "still_urgent": 0}
    stats = cases_sla_check(now=timezone.now() + timedelta(minutes=61))

    case.refresh_from_db()
    assert stats == {"rerouted": 1, "raised": 0, "still_urgent": 0}
    assert case.assigned_agent == backup and case.sla_breaches == 1
    assert case.sla_due_at > timezone.now() + timedelta(minutes=100)
    assert "re-routed from" in case.entries.get(kind="sla").body
    # The slow agent no longer sees the case; the backup does.
    assert not slow.user.has_perm("agents.view_case", case) and backup.user.has_perm("agents.change_case", case)


def test_when_nobody_else_can_take_it_the_priority_goes_up(team, django_capture_on_commit_callbacks):
    only = AgentFactory(team=team, skills={"billing": 5})
    case = open_case(priority=2, capture=django_capture_on_commit_callbacks)  # normal: 4 hours
    later = timezone.now() + timedelta(hours=5)

    assert cases_sla_check(now=later) == {"rerouted": 0, "raised": 1, "still_urgent": 0}
    case.refresh_from_db()
    assert (case.assigned_agent, case.get_priority_display()) == (only, "High")
    assert case.sla_due_at == later + timedelta(hours=1)
    # Not answered again within the new, shorter deadline: urgent.
    cases_sla_check(now=later + timedelta(hours=2))
    case.refresh_from_db()
    assert case.get_priority_display() == "Urgent" and case.sla_breaches == 2


def test_a_queued_case_widens_to_the_fallback_queue_and_goes_up(team, django_capture_on_commit_callbacks):
    fallback = TeamFactory(is_fallback=True)
    AgentFactory(team=team, status="offline", skills={"billing": 5})
    case = open_case(priority=2, capture=django_capture_on_commit_callbacks)
    assert (case.status, case.team) == ("new", team)

    cases_sla_check(now=timezone.now() + timedelta(hours=5))

    case.refresh_from_db()
    assert (case.status, case.team, case.get_priority_display()) == ("new", fallback, "High")
    # widened, not moved: the billing desk still sees the case and can take it, after the next breach too
    billing = AgentFactory(team=team, status="offline", skills={"billing": 5})
    assert billing.user.has_perm("agents.view_case", case)
    cases_sla_check(now=timezone.now() + timedelta(hours=7))
    case.refresh_from_db()
    assert case.sla_breaches == 2
    assert type(billing.user).objects.get(pk=billing.user.pk).has_perm("agents.view_case", case)


def test_a_breach_with_no_fallback_team_does_not_claim_it_widened(django_capture_on_commit_callbacks):
    from agents.models import Case

    case = open_case(priority=2, category="gardening", capture=django_capture_on_commit_callbacks)
    assert (case.status, case.team) == ("new", None)  # no team serves it, and there is no fallback

    cases_sla_check(now=timezone.now() + timedelta(hours=5))

    case.refresh_from_db()
    assert case.get_priority_display() == "High"
    reasons = [h.history_change_reason for h in Case.history.filter(id=case.pk)]
    assert "SLA breached: no fallback queue to widen to" in reasons
    assert not any("widened" in (r or "") for r in reasons)


def test_an_answered_case_is_left_alone(team, django_capture_on_commit_callbacks, email_channel):
    from agents.services.cases import case_reply_send

    agent = AgentFactory(team=team, skills={"billing": 5})
    AgentFactory(team=team, skills={"billing": 1})
    case = open_case(priority=3, capture=django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        case_reply_send(case=case, actor=agent.user, body="Looking into it", idempotency_key="k")

    assert cases_sla_check(now=timezone.now() + timedelta(days=1)) == {"rerouted": 0, "raised": 0, "still_urgent": 0}


def test_the_tick_task_checks_slas_and_routes_the_queue(team, django_capture_on_commit_callbacks):
    agent = AgentFactory(team=team, status="offline", skills={"billing": 5})
    case = open_case(capture=django_capture_on_commit_callbacks)
    agent.status = "online"
    agent.save()

    assert tasks.sla_tick() == {"rerouted": 0, "raised": 0, "still_urgent": 0, "routed": 1}
    case.refresh_from_db()
    assert case.assigned_agent == agent


def _waiting(team, n, *, category="billing", priority=3):
    """n cases queued in `team` that nobody has taken, written as rows (no routing on open)."""
    from agents.models import Case
    from tests.factories import CustomerFactory

    customer = CustomerFactory()
    return Case.objects.bulk_create(
        Case(customer=customer, category=category, priority=priority, status="new", team=team,
             sla_due_at=timezone.now() + timedelta(hours=1)) for _ in range(n))


def test_a_case_someone_can_take_is_not_stuck_behind_a_full_page_nobody_can(team, django_capture_on_commit_callbacks):
    """501 high-priority billing cases wait with nobody free for billing; a newer, lower one for
    the returns desk (whose agent just came online) is routed by the tick all the same."""
    _waiting(team, 501)
    returns = TeamFactory(slug="returns", categories=["returns"])
    agent = AgentFactory(team=returns, status="online")
    [case] = _waiting(None, 1, category="returns", priority=1)

    assert tasks.sla_tick()["routed"] == 1
    case.refresh_from_db()
    assert case.assigned_agent == agent
    assert not team.cases.exclude(status="new").exists()


def test_the_queue_sweep_with_nobody_free_reads_no_waiting_case(team, django_assert_max_num_queries):
    """The minute's sweep costs what can be done: with every agent offline or full, 600 waiting
    cases are not each locked and tried (the code before made ~6 queries per case, 500 a minute)."""
    from agents.services.routing import cases_route_waiting

    AgentFactory(team=team, status="offline")
    full = AgentFactory(team=team, capacity=1)
    _waiting(team, 600)
    from agents.models import Case

    Case.objects.filter(pk=Case.objects.order_by("pk").first().pk).update(status="assigned", assigned_agent=full)

    with django_assert_max_num_queries(4):
        assert cases_route_waiting() == 0


def test_the_sweep_stops_when_the_free_places_are_taken(team, django_assert_max_num_queries):
    from agents.models import Case
    from agents.services.routing import cases_route_waiting

    agent = AgentFactory(team=team, capacity=2)
    _waiting(team, 300)

    with django_assert_max_num_queries(60):
        assert cases_route_waiting() == 2
    assert list(Case.objects.filter(assigned_agent=agent).values_list("status", flat=True)) == ["assigned"] * 2


def test_a_free_desk_is_reached_even_when_another_team_frees_a_place_every_minute(team):
    """The review's starvation case: billing frees one place a minute and has 600 waiting; the
    returns desk's newer, lower case is routed in the same pass as billing's one."""
    from agents.models import Case
    from agents.services.routing import cases_route_waiting

    AgentFactory(team=team, capacity=1)
    _waiting(team, 600)
    returns = TeamFactory(slug="returns", categories=["returns"])
    agent = AgentFactory(team=returns, status="online")
    [case] = _waiting(returns, 1, category="returns", priority=1)

    assert cases_route_waiting() == 2
    case.refresh_from_db()
    assert case.assigned_agent == agent
    assert Case.objects.filter(team=team, status="assigned").count() == 1


def test_a_teamless_case_goes_to_a_free_catch_all_desk_not_into_its_categorys_busy_queue(team):
    """A case without a team whose category team is busy, while a catch-all desk has room: it is
    routed to the catch-all agent, not queued in billing (where only billing could take it)."""
    from agents.services.routing import cases_route_waiting

    AgentFactory(team=team, status="offline")
    anything = TeamFactory(slug="anything", categories=[])
    generalist = AgentFactory(team=anything, capacity=5)
    [other] = _waiting(None, 1, category="other", priority=3)
    [billing] = _waiting(None, 1, category="billing", priority=1)

    assert cases_route_waiting(limit=1) == 2
    for case in (other, billing):
        case.refresh_from_db()
        assert (case.status, case.assigned_agent) == ("assigned", generalist)


def test_a_teamless_case_nobody_can_ever_queue_is_left_alone_without_a_history_row_a_minute(team):
    from agents.models import Case
    from agents.services.routing import cases_route_waiting

    [case] = _waiting(None, 1, category="gardening")  # no team lists it; no fallback, no catch-all
    history = Case.history.count()

    cases_route_waiting()
    cases_route_waiting()

    assert Case.history.count() == history
    case.refresh_from_db()
    assert (case.status, case.team) == ("new", None)


def test_a_re_route_gives_the_previous_agent_a_place_for_the_next_breach(team, django_capture_on_commit_callbacks):
    """P holds c1 (full), Q is free; c1 breaches and goes to Q, so P can take c2 when it breaches in
    the same tick: both re-routed, no priority raised."""
    p = AgentFactory(team=team, capacity=1, skills={"billing": 5})
    c1 = open_case(priority=3, capture=django_capture_on_commit_callbacks)
    assert c1.assigned_agent == p
    q = AgentFactory(team=team, capacity=1, skills={"billing": 1})
    [c2] = _waiting(team, 1, priority=3)
    later = timezone.now() + timedelta(hours=2)

    assert cases_sla_check(now=later) == {"rerouted": 2, "raised": 0, "still_urgent": 0}
    c1.refresh_from_db()
    c2.refresh_from_db()
    assert (c1.assigned_agent, c2.assigned_agent) == (q, p)
    assert c2.get_priority_display() == "High"


def test_when_a_case_two_teams_serve_takes_a_teams_last_place_the_list_is_read_again(team):
    """The top case waits in the fallback queue and both billing and a catch-all desk serve it; it
    takes billing's only place. The 500 billing cases behind it are now nobody's to take, and the
    returns case after them is still routed in the same pass."""
    from agents.services.routing import cases_route_waiting

    triage = TeamFactory(slug="triage", is_fallback=True, categories=["none"])
    AgentFactory(team=team, capacity=1, skills={"billing": 5})
    AgentFactory(team=TeamFactory(slug="anything", categories=[]), capacity=3)
    [top] = _waiting(triage, 1, priority=4)
    _waiting(team, 500)
    returns = TeamFactory(slug="returns", categories=["returns"])
    clerk = AgentFactory(team=returns)
    [late] = _waiting(returns, 1, category="returns", priority=1)

    assert cases_route_waiting() == 2
    top.refresh_from_db()
    late.refresh_from_db()
    assert (top.status, late.assigned_agent) == ("assigned", clerk)


def test_teamless_cases_nobody_can_queue_do_not_hide_one_that_can_be(team):
    """500 teamless cases of a category no team lists (and no fallback queue) come first; the
    billing case behind them is still queued in billing's team, in the same pass."""
    from agents.services.routing import cases_route_waiting

    _waiting(None, 500, category="gardening", priority=4)
    [billing] = _waiting(None, 1, category="billing", priority=1)

    cases_route_waiting()

    billing.refresh_from_db()
    assert (billing.status, billing.team) == ("new", team)


def test_a_breach_storm_costs_a_few_statements_a_batch_not_a_dozen_a_case(team, django_assert_max_num_queries):
    """The QA's morning with a full queue: 500 breached cases nobody else can take (the old sweep
    made ~17 queries per case, 40-70 s for 500). Queued ones are widened to the fallback queue
    (the billing desk keeps them), assigned ones raised, with history rows and timeline entries."""
    from agents.models import Case, CaseEntry
    from tests.factories import CustomerFactory

    fallback = TeamFactory(slug="triage", is_fallback=True)
    busy = AgentFactory(team=team, capacity=250, skills={"billing": 5})
    queued = _waiting(team, 250, priority=2)
    customer = CustomerFactory()
    Case.objects.bulk_create(Case(customer=customer, category="billing", priority=2, status="assigned", team=team,
                                  assigned_agent=busy, sla_due_at=timezone.now()) for _ in range(250))
    history, later = Case.history.count(), timezone.now() + timedelta(hours=5)

    with django_assert_max_num_queries(60):  # 3 batches; SQLite splits the bulk statements by its 999 variables
        stats = cases_sla_check(now=later)

    assert stats == {"rerouted": 0, "raised": 500, "still_urgent": 0}
    assert set(Case.objects.values_list("priority", "sla_breaches")) == {(3, 1)}
    assert Case.objects.filter(team=fallback, status="new").count() == 250
    assert Case.objects.filter(assigned_agent=busy, status="assigned").count() == 250
    assert Case.history.count() == history + 500
    assert CaseEntry.objects.filter(kind="sla", body__contains="priority Normal -> High").count() == 500
    assert CaseEntry.objects.filter(kind="assignment", body__contains="queued in").count() == 250
    billing = AgentFactory(team=team, status="offline")
    assert type(billing.user).objects.get(pk=billing.user.pk).has_perm("agents.view_case", queued[0])
    assert cases_sla_check(now=later) == {"rerouted": 0, "raised": 0, "still_urgent": 0}


def test_an_urgent_case_nobody_else_can_take_is_not_raised_again(team, django_capture_on_commit_callbacks):
    only = AgentFactory(team=team, skills={"billing": 5})
    case = open_case(priority=4, capture=django_capture_on_commit_callbacks)  # urgent: 15 minutes
    later = timezone.now() + timedelta(minutes=20)

    assert cases_sla_check(now=later) == {"rerouted": 0, "raised": 0, "still_urgent": 1}

    case.refresh_from_db()
    assert (case.assigned_agent, case.get_priority_display(), case.sla_breaches) == (only, "Urgent", 1)
    assert case.sla_due_at == later + timedelta(minutes=15)  # looked at again in 15 minutes, not every minute
    assert not case.entries.filter(kind="sla").exists()  # no "priority Urgent -> Urgent"
    assert cases_sla_check(now=later + timedelta(minutes=5)) == {"rerouted": 0, "raised": 0, "still_urgent": 0}


def test_the_sla_tick_stops_claiming_when_its_time_budget_is_spent(team, settings):
    """The schedules cluster runs the engine, deliveries and stream ticks too: the SLA tick has a budget."""
    settings.AGENTS_SLA_TICK_BUDGET_S = 0
    [case] = _waiting(team, 1, priority=2)
    from agents.models import Case

    Case.objects.filter(pk=case.pk).update(sla_due_at=timezone.now() - timedelta(minutes=1))

    assert tasks.sla_tick() == {"rerouted": 0, "raised": 0, "still_urgent": 0, "routed": 0}
    case.refresh_from_db()
    assert (case.priority, case.sla_breaches) == (2, 0)  # still due: the next tick takes it

    settings.AGENTS_SLA_TICK_BUDGET_S = 20
    assert tasks.sla_tick()["raised"] == 1


def test_when_the_budget_runs_out_mid_page_the_rest_is_left_due_not_raised_untried(team, monkeypatch):
    """A free agent could take all three; the budget is spent after the first: the other two wait
    for the next tick as they are (no priority raised without a routing attempt)."""
    import types

    from agents.models import Case
    from agents.services import routing

    free = AgentFactory(team=team, capacity=5, skills={"billing": 5})
    cases = _waiting(team, 3, priority=2)
    Case.objects.update(sla_due_at=timezone.now() - timedelta(minutes=1))
    ticks = iter([0, 0])  # the page read and the first case are within budget, then time is up
    monkeypatch.setattr(routing, "time", types.SimpleNamespace(monotonic=lambda: next(ticks, 100)))

    assert cases_sla_check(deadline=50) == {"rerouted": 1, "raised": 0, "still_urgent": 0}
    rows = [(c.assigned_agent_id or 0, c.priority, c.sla_breaches) for c in Case.objects.order_by("pk")]
    assert rows == [(free.pk, 2, 1), (0, 2, 0), (0, 2, 0)] and len(cases) == 3


def test_breached_cases_are_read_a_batch_at_a_time(team, django_capture_on_commit_callbacks):
    from agents.models import Case

    _waiting(team, 7, priority=1)
    Case.objects.update(sla_due_at=timezone.now() - timedelta(minutes=1))

    assert cases_sla_check(batch=3, limit=5)["raised"] == 5
    assert cases_sla_check(batch=3)["raised"] == 2


def test_an_agent_with_room_who_leaves_cases_unanswered_costs_no_routing_attempt_per_case(
        team, django_assert_max_num_queries):
    """Their own free places do not count for a re-route (it never goes back to them): their 100
    breached cases are raised together, not each locked and tried."""
    from agents.models import Case
    from tests.factories import CustomerFactory

    slow = AgentFactory(team=team, capacity=200, skills={"billing": 5})
    customer = CustomerFactory()
    Case.objects.bulk_create(Case(customer=customer, category="billing", priority=2, status="assigned", team=team,
                                  assigned_agent=slow, sla_due_at=timezone.now()) for _ in range(100))

    with django_assert_max_num_queries(20):
        assert cases_sla_check(now=timezone.now() + timedelta(hours=5)) == {"rerouted": 0, "raised": 100,
                                                                            "still_urgent": 0}
    assert set(Case.objects.values_list("assigned_agent", "priority")) == {(slow.pk, 3)}
