"""Routing: which agent gets a case, the team queues, and the SLA timer.

Lock order is always: the case row first, then agent rows in primary-key order.
An assignment to an agent holds that agent's row FOR UPDATE while it counts the
agent's open cases, so two workers can never push an agent over capacity; the
case row lock plus a status re-check means a case is never assigned twice.
Sweepers pick cases with SKIP LOCKED so parallel ticks share the work.

A case is locked alone, never with rows joined to it (select_related): when the
lock had to wait, PostgreSQL re-reads the case row but keeps the joined rows of
the statement's older snapshot (a team that was NULL, or the team it just left).
Its team and agent are read after the lock, in statements of their own.

Only Online agents get cases pushed to them (routing, SLA re-routes). Away and Offline agents get
none, not even when nobody is Online: the case waits in the team's queue, which they still see and
may take from, and the SLA timer raises and widens it as for any queued case. An agent who goes
Away or Offline hands back the cases nobody has answered yet (`agent_cases_requeue`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.db.models.functions import Least
from django.utils import timezone
from django_q.tasks import async_task

from agents.choices import (
    OPEN_CASE_STATUSES,
    SLA_FIRST_RESPONSE,
    WAITING_CASE_STATUSES,
    AgentStatus,
    CaseStatus,
    EntryKind,
    ErrorCode,
    Priority,
)
from agents.errors import CaseError
from agents.models import Agent, AgentSkill, Case, CaseEntry, Team
from agents.services import permissions
from journeys.engine.batch import skip_locked
from journeys.engine.queue import task_send_on_commit

logger = logging.getLogger(__name__)



def sla_due(*, priority: int, start: datetime) -> datetime:
    return start + SLA_FIRST_RESPONSE[Priority(priority)]


def enqueue_route(*, case_id: int) -> None:
    """Route after commit (a short transaction of its own, not the engine's long one).

    With the ORM broker the task row is written inside the caller's transaction
    (an outbox); otherwise it is sent on commit. The SLA tick re-finds any case
    left in `new`, so a lost task only delays routing.
    """
    cluster = settings.Q_CLUSTER
    if "orm" in cluster and not cluster.get("sync"):
        async_task("agents.tasks.case_route", case_id, group="agents")
    else:
        task_send_on_commit("agents.tasks.case_route", case_id, group="agents")


@dataclass(frozen=True)
class Candidate:
    agent: Agent
    load: int
    level: int  # experience in the case's category, 0 = none

    @property
    def free(self) -> int:
        return self.agent.capacity - self.load

    def rank(self, case: Case) -> tuple:
        """Higher is better: the agent who had a reopened case, then category experience, language,
        free capacity, least loaded, longest idle (every candidate is online)."""
        agent = self.agent
        idle = -agent.last_assigned_at.timestamp() if agent.last_assigned_at else float("inf")
        return (
            1 if case.assigned_agent_id == agent.pk else 0,
            self.level,
            1 if case.language and case.language in (agent.languages or []) else 0,
            self.free,
            -(self.load / agent.capacity if agent.capacity else 1),
            idle,
            -agent.pk,
        )


def teams_for(*, case: Case, teams: list[Team] | None = None) -> list[Team]:
    """Teams that serve the case's category: the named team if set, else those listing it, else catch-all teams."""
    teams = list(Team.objects.all()) if teams is None else teams
    if case.team_id and not case.team.is_fallback:
        return [t for t in teams if t.pk == case.team_id]
    listing = [t for t in teams if case.category and case.category in (t.categories or [])]
    catch_all = [t for t in teams if not t.categories]
    return listing + catch_all


def agent_loads(agent_ids: list[int]) -> dict[int, int]:
    """Open cases per agent (what counts against their capacity); one query."""
    rows = (
        Case.objects.filter(assigned_agent_id__in=agent_ids, status__in=OPEN_CASE_STATUSES)
        .values("assigned_agent_id")
        .annotate(n=Count("id"))
    )
    return {r["assigned_agent_id"]: r["n"] for r in rows}


def routing_candidates(*, case: Case, now: datetime, exclude: tuple[int, ...] = (), lock: bool = False,
                       team: Team | None = None) -> list[Candidate]:
    """Online agents who may take the case now (of `team` only, if given), best first. With `lock`,
    their rows are held FOR UPDATE."""
    team_ids = [team.pk] if team is not None else [t.pk for t in teams_for(case=case)]
    agents = (
        Agent.objects.filter(team_id__in=team_ids, user__is_active=True, status=AgentStatus.ONLINE)
        .exclude(pk__in=exclude)
    )
    if lock:
        # One statement, rows locked in primary-key order, so two routers never deadlock;
        # status and capacity are read under the lock (an agent may have gone offline meanwhile).
        agents = agents.select_for_update(of=("self",)).order_by("pk")
    found = list(agents.select_related("user"))
    ids = [a.pk for a in found]
    levels = dict(AgentSkill.objects.filter(agent_id__in=ids, category=case.category).values_list("agent_id", "level"))
    loads = agent_loads(ids)
    candidates = [Candidate(agent=a, load=loads.get(a.pk, 0), level=levels.get(a.pk, 0)) for a in found]
    candidates = [c for c in candidates if c.free > 0 and c.agent.is_working(now)]
    return sorted(candidates, key=lambda c: c.rank(case), reverse=True)


def _entry(case: Case, kind: str, body: str, *, author=None, **data) -> CaseEntry:
    return CaseEntry.objects.create(case=case, kind=kind, body=body, author=author, data=data)


def _assign_locked(*, case: Case, agent: Agent, now: datetime, actor=None, reason: str) -> Case:
    """Assign a locked case to a locked agent; permissions follow the case. A case waiting on the
    customer (transferred) stays pending."""
    previous = case.assigned_agent
    case.assigned_agent = agent
    case.team_id = agent.team_id
    if case.status != CaseStatus.PENDING:
        case.status = CaseStatus.ASSIGNED
    case.assigned_at = now
    case._change_reason = reason
    case.save()
    Agent.objects.filter(pk=agent.pk).update(last_assigned_at=now)
    permissions.case_revoke_queues(case=case)
    permissions.case_revoke_all_agents(case=case, keep_user_id=agent.user_id)
    permissions.case_grant_agent(case=case, user=agent.user)
    _entry(case, EntryKind.ASSIGNMENT, f"assigned to {agent} ({reason})", author=actor,
           agent=agent.pk, previous=previous.pk if previous else None)
    return case


def _queue_locked(*, case: Case, team: Team | None, reason: str, actor=None) -> Case:
    """Put a locked case in a team's queue, unassigned (visible to and takeable by the team)."""
    changed = case.team_id != (team.pk if team else None) or case.assigned_agent_id is not None
    previous_agent = case.assigned_agent
    case.team = team
    case.assigned_agent = None
    case.status = CaseStatus.NEW
    case._change_reason = reason
    case.save()
    if previous_agent is not None:
        permissions.case_revoke_agent(case=case, user=previous_agent.user)
    permissions.case_revoke_queues(case=case)
    if team is not None:
        permissions.case_grant_queue(case=case, group=team.group)
    if changed:
        _entry(case, EntryKind.ASSIGNMENT, f"queued in {team or 'no team'} ({reason})", author=actor,
               team=team.pk if team else None)
    return case


def queue_team_for(*, case: Case, teams: list[Team] | None = None) -> Team | None:
    """Where a case waits when nobody can take it: the team serving its category, else the fallback queue."""
    if case.team_id and not case.team.is_fallback:
        return case.team
    teams = list(Team.objects.all()) if teams is None else teams
    serving = [t for t in teams_for(case=case, teams=teams) if case.category and case.category in (t.categories or [])]
    if serving:
        return serving[0]
    return next((t for t in teams if t.is_fallback), None)


def _route_locked(*, case: Case, now: datetime, exclude: tuple[int, ...] = (), reason: str = "routed",
                  team: Team | None = None) -> Agent | None:
    candidates = routing_candidates(case=case, now=now, exclude=exclude, lock=True, team=team)
    if candidates:
        _assign_locked(case=case, agent=candidates[0].agent, now=now, reason=reason)
        return candidates[0].agent
    return None


def case_route(*, case_id: int, now: datetime | None = None) -> Case:
    """Give a new case to the best agent who can take it now, or queue it.

    Idempotent: a case that is no longer `new` is left alone (the task may run twice).
    """
    now = now or timezone.now()
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        if case.status != CaseStatus.NEW:
            return case
        if _route_locked(case=case, now=now) is None:
            _queue_locked(case=case, team=queue_team_for(case=case), reason="no agent can take it now")
        return case


@dataclass
class FreePlaces:
    """Who can take a case now, per team: the free places of agents who are active, online,
    within their working hours and under capacity. A snapshot read without locks, three queries:
    it only decides which cases are worth a routing attempt (routing re-checks under the agent's
    lock), and is kept current as this pass assigns cases (`took`) and moves them away (`freed`)."""

    teams: list[Team]
    places: Counter  # team id -> free places
    own: Counter  # agent id -> their free places (an SLA re-route never goes back to the same agent)

    @classmethod
    def read(cls, now: datetime) -> FreePlaces:
        agents = list(Agent.objects.filter(user__is_active=True, status=AgentStatus.ONLINE)
                      .only("pk", "team_id", "capacity", "timezone", "working_hours"))
        loads = agent_loads([a.pk for a in agents])
        places, own = Counter(), Counter()
        for agent in agents:
            free = agent.capacity - loads.get(agent.pk, 0)
            if free > 0 and agent.is_working(now):
                places[agent.team_id] += free
                own[agent.pk] = free
        return cls(list(Team.objects.all()), places, own)

    def __bool__(self) -> bool:
        return any(n > 0 for n in self.places.values())

    def can_serve(self, case: Case, *, besides: int | None = None) -> bool:
        """Someone has a free place for the case (`besides`: someone other than that agent, whose
        own places do not count; their team is the case's while they hold it)."""
        return any(self.places[t.pk] - (self.own[besides] if besides and t.pk == case.team_id else 0) > 0
                   for t in teams_for(case=case, teams=self.teams))

    def took(self, agent: Agent) -> None:
        self.places[agent.team_id] -= 1
        self.own[agent.pk] -= 1

    def freed(self, agent: Agent, now: datetime) -> None:
        """A case moved away from this agent: a place, if they can take cases now."""
        if agent.status == AgentStatus.ONLINE and agent.user.is_active and agent.is_working(now):
            self.places[agent.team_id] += 1
            self.own[agent.pk] += 1

    def cases_q(self) -> Q:
        """The cases a team with free places serves (teams_for, as a filter)."""
        open_teams = [t for t in self.teams if self.places[t.pk] > 0]
        named = Q(team_id__in=[t.pk for t in open_teams if not t.is_fallback])
        unnamed = Q(team__isnull=True) | Q(team__is_fallback=True)
        if any(not t.categories for t in open_teams):
            return named | unnamed
        return named | unnamed & Q(category__in=sorted({c for t in open_teams for c in t.categories}))


def _route_waiting_case(case_id: int, *, now: datetime, free: FreePlaces, teamless: bool = False) -> Agent | None:
    """One queued case, in its own transaction: routed if someone free serves it (the agent is
    returned); a case without a team that nobody can take is queued in the team serving its
    category, else the fallback queue (left alone when there is neither)."""
    with transaction.atomic():
        case = Case.objects.select_for_update(**skip_locked()).filter(pk=case_id, status=CaseStatus.NEW).first()
        if case is None or (teamless and case.team_id is not None):
            return None  # taken meanwhile, queued, or another worker holds it
        if free.can_serve(case):
            agent = _route_locked(case=case, now=now, reason="routed from queue")
            if agent is not None:
                free.took(agent)
                return agent
        if case.team_id is None and (team := queue_team_for(case=case, teams=free.teams)) is not None:
            _queue_locked(case=case, team=team, reason="no agent can take it now")
        return None


def cases_route_waiting(*, now: datetime | None = None, limit: int = 500) -> int:
    """Try again to route queued cases, highest priority and oldest first (agents came online or
    freed up). Only the cases a team with a free place serves are read and tried, at most `limit`
    of them: the list is read again when a team's last place is taken, so a case some free agent
    serves is never stuck behind older ones nobody can take now. A case without a team is routed
    if it can be, else queued in one (a case nobody could ever queue is left alone)."""
    now = now or timezone.now()
    free = FreePlaces.read(now)
    routed, tried = 0, []
    while free and len(tried) < limit:
        waiting = list(Case.objects.filter(free.cases_q(), status=CaseStatus.NEW).exclude(pk__in=tried)
                       .select_related("team").only("pk", "team", "category")
                       .order_by("-priority", "created_at")[: limit - len(tried)])
        exhausted = False
        for seen in waiting:
            if not free.can_serve(seen):
                continue  # its teams' places were taken in this pass
            tried.append(seen.pk)
            agent = _route_waiting_case(seen.pk, now=now, free=free)
            if agent is not None:
                routed += 1
                if free.places[agent.team_id] == 0:
                    exhausted = True  # that team's last place: list again, for the teams still free
                    break
        if not exhausted:
            break  # every case listed was tried, or is served only by teams now full
    teamless = Case.objects.filter(team__isnull=True, status=CaseStatus.NEW).exclude(pk__in=tried)
    if not any(t.is_fallback for t in free.teams):  # only the cases some team would queue or take
        listed = sorted({c for t in free.teams for c in t.categories or []})
        teamless = teamless.filter(Q(category__in=listed) | free.cases_q())
    for case in teamless.only("pk", "team", "category").order_by("-priority", "created_at")[:limit]:
        if free.can_serve(case) or queue_team_for(case=case, teams=free.teams) is not None:
            routed += _route_waiting_case(case.pk, now=now, free=free, teamless=True) is not None
    return routed


def _taken_from_queue(case: Case, team: Team) -> bool:
    """Whether the case's current assignment took it out of `team`'s queue, where the team's agents
    saw it (and one of them may have pressed Take a moment too late)."""
    last = list(case.entries.filter(kind=EntryKind.ASSIGNMENT).order_by("-id").values_list("data", flat=True)[:2])
    return len(last) == 2 and "agent" in last[0] and "agent" not in last[1] and last[1].get("team") == team.pk


def case_take(*, case: Case, actor) -> Case:
    """An agent takes a case from their team's queue (capacity still applies).

    The status is read before the permission: whoever took the case first revoked the queue's
    permission, so the agent who lost the race for a case their queue showed is told that a
    colleague has it (not who: they may no longer see the case) rather than refused; whoever may
    see the case is told who has it, or its status. Any other case is refused as one out of
    reach (CaseForbidden), without a word about it."""
    agent = Agent.objects.select_related("team").filter(user=actor).first()
    if agent is None:
        raise CaseError(ErrorCode.NOT_ALLOWED, "only agents can take cases")
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case.pk)
        if case.status != CaseStatus.NEW:
            if case.assigned_agent_id == agent.pk and case.is_open:
                raise CaseError(ErrorCode.ALREADY_YOURS, f"Case #{case.pk} is already yours.")
            if actor.has_perm("agents.view_case", case):
                holder = case.assigned_agent
                if holder is not None and case.is_open:
                    raise CaseError(ErrorCode.TAKEN, f"Case #{case.pk} was taken by {holder}.")
                raise CaseError(ErrorCode.WRONG_STATUS, f"Case #{case.pk} is already {case.get_status_display().lower()}.")
            if case.is_open and _taken_from_queue(case, agent.team):
                raise CaseError(ErrorCode.TAKEN, f"Case #{case.pk} was taken by a colleague first.")
        permissions.case_check(user=actor, case=case, perm="agents.take_case")
        if case.status != CaseStatus.NEW:
            raise CaseError(ErrorCode.WRONG_STATUS, f"case #{case.pk} is already {case.get_status_display().lower()}")
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if agent_loads([agent.pk]).get(agent.pk, 0) >= agent.capacity:
            raise CaseError(ErrorCode.NO_CAPACITY, f"you already hold {agent.capacity} open cases")
        return _assign_locked(case=case, agent=agent, now=timezone.now(), actor=actor, reason=f"taken by {agent}")


def _transfer_check(*, case: Case, actor) -> bool:
    """Who may transfer an open, locked case: a supervisor (model-wide change permission, returns
    True) or the agent working it (change permission on the case, returns False)."""
    if actor.has_perm("agents.change_case"):
        supervisor = True
    else:
        permissions.case_check(user=actor, case=case, perm="agents.change_case")
        supervisor = False
    if not case.is_open:
        raise CaseError(ErrorCode.WRONG_STATUS, f"Case #{case.pk} is {case.get_status_display().lower()}: "
                                                "reopen it to transfer it.")
    return supervisor


def case_assign(*, case: Case, agent: Agent, actor) -> Case:
    """Transfer an open case to a named agent. A supervisor (model-wide change permission) may give
    any open case to any agent; the agent working a case may hand it to a colleague who is online.
    The receiver's capacity applies either way; a case waiting on the customer stays pending, and
    the first-response deadline runs on (the customer has been waiting all along)."""
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case.pk)
        supervisor = _transfer_check(case=case, actor=actor)
        agent = Agent.objects.select_for_update().get(pk=agent.pk)
        if case.assigned_agent_id == agent.pk:
            raise CaseError(ErrorCode.ALREADY_YOURS, f"Case #{case.pk} is already with {agent}.")
        if not agent.user.is_active:
            raise CaseError(ErrorCode.NOT_ALLOWED, f"{agent} can no longer sign in: pick someone else.")
        if not supervisor and agent.status != AgentStatus.ONLINE:
            raise CaseError(ErrorCode.NOT_ALLOWED, f"{agent} is {agent.get_status_display().lower()}: hand the case "
                                                   "to a colleague who is online, or to a queue.")
        if agent_loads([agent.pk]).get(agent.pk, 0) >= agent.capacity:
            raise CaseError(ErrorCode.NO_CAPACITY, f"{agent} already holds {agent.capacity} open cases")
        return _assign_locked(case=case, agent=agent, now=timezone.now(), actor=actor, reason=f"transferred by {actor}")


def case_queue(*, case: Case, team: Team, actor) -> Case:
    """Transfer an open case to a team's queue (the agent's own, to hand it back, or another desk's):
    it goes to the best online agent of that team who can take it, never back to the one who had it,
    else waits in that queue. Same permissions as `case_assign`. A case already answered (no
    deadline running) needs an answer again: it gets a fresh SLA deadline from now, so the sweep
    sees it if nobody takes it."""
    now = timezone.now()
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case.pk)
        _transfer_check(case=case, actor=actor)
        previous = case.assigned_agent_id
        if case.sla_due_at is None:
            case.sla_due_at = sla_due(priority=case.priority, start=now)
        _queue_locked(case=case, team=team, reason=f"transferred by {actor}", actor=actor)
        _route_locked(case=case, now=now, exclude=(previous,) if previous else (), reason=f"transferred to {team}",
                      team=team)
        return case


def agent_cases_requeue(*, agent: Agent, reason: str, now: datetime | None = None) -> int:
    """The agent is no longer online: each case they hold that nobody has answered yet (assigned,
    no first response) goes to another online agent who can take it, else back to the queue (where
    the agent still sees it and may take it again). Cases already answered stay theirs: the
    customer is talking to them, and the SLA timer moves a case they leave unanswered too long.
    Each case in its own short transaction (case lock, then agent locks); stops if the agent came
    back online meanwhile. Returns how many cases moved."""
    now = now or timezone.now()
    ids = list(Case.objects.filter(assigned_agent=agent, status=CaseStatus.ASSIGNED, first_response_at__isnull=True)
               .order_by("-priority", "created_at", "pk").values_list("pk", flat=True))
    moved = 0
    for pk in ids:
        with transaction.atomic():
            case = (Case.objects.select_for_update()
                    .filter(pk=pk, assigned_agent=agent, status=CaseStatus.ASSIGNED, first_response_at__isnull=True)
                    .first())
            if case is None:
                continue  # answered, resolved or moved meanwhile
            if Agent.objects.filter(pk=agent.pk, status=AgentStatus.ONLINE).exists():
                break  # back online: the rest stays theirs
            if _route_locked(case=case, now=now, exclude=(agent.pk,), reason=reason) is None:
                _queue_locked(case=case, team=queue_team_for(case=case), reason=reason)
            moved += 1
    return moved


SLA_BATCH = 200  # breached cases read (and raised set-based) at a time
MAX_BREACHES = 32767  # sla_breaches is a small integer: an urgent case nobody takes breaches 96 times a day


def _sla_reroute(case_id: int, *, now: datetime, free: FreePlaces) -> bool | None:
    """One breached case some free agent serves, in its own transaction: given to another online
    agent (True), or not (False: nobody but its own agent could take it; it is raised with the
    rest). None when it is no longer due (answered, taken, or another worker holds it)."""
    with transaction.atomic():
        case = (Case.objects.select_for_update(**skip_locked())
                .filter(pk=case_id, status__in=WAITING_CASE_STATUSES, sla_due_at__lte=now).first())
        if case is None:
            return None
        previous = case.assigned_agent
        waited = f"no first response by {case.sla_due_at:%Y-%m-%d %H:%M} UTC"
        case.sla_breaches = min(case.sla_breaches + 1, MAX_BREACHES)
        case.sla_due_at = sla_due(priority=case.priority, start=now)
        agent = _route_locked(case=case, now=now, exclude=(previous.pk,) if previous else (),
                              reason=f"SLA re-route: {waited}")
        if agent is None:
            return False  # nothing was written
        free.took(agent)
        if previous is not None:
            free.freed(previous, now)
        _entry(case, EntryKind.SLA, f"SLA breached ({waited}): re-routed from {previous or 'the queue'} to {agent}")
        return True


def _sla_raise(case_ids: list[int], *, now: datetime, teams: list[Team], stats: dict) -> None:
    """Breached cases nobody else can take now, in one transaction of a few statements whatever
    their number: the priority goes up one level with a new, shorter deadline (an urgent case
    stays urgent: a new deadline, no timeline entry), and a queued case is widened to the
    fallback queue while the teams serving its category keep it. An UPDATE per new priority,
    history rows, queue permissions and timeline entries in bulk."""
    fallback = next((t for t in teams if t.is_fallback), None)
    by_id = {t.pk: t for t in teams}
    with transaction.atomic():
        cases = list(Case.objects.select_for_update(**skip_locked())
                     .filter(pk__in=case_ids, status__in=WAITING_CASE_STATUSES, sla_due_at__lte=now).order_by("pk"))
        entries, queued, grants = [], [], []
        groups: dict[tuple[int, bool], list[int]] = {}  # (new priority, widened) -> cases: one UPDATE each
        for case in cases:
            waited = f"no first response by {case.sla_due_at:%Y-%m-%d %H:%M} UTC"
            old = case.get_priority_display()
            raised = case.priority < Priority.URGENT
            if raised:
                case.priority += 1
            case.sla_breaches = min(case.sla_breaches + 1, MAX_BREACHES)
            case.sla_due_at = sla_due(priority=case.priority, start=now)
            case.updated_at = now
            case._change_reason = "SLA breached: priority raised" if raised else "SLA breached: still urgent"
            if case.assigned_agent_id is None:  # queued: widened, not moved (the serving teams keep it)
                serving = [t for t in teams if not t.is_fallback and (
                    t.pk == case.team_id or (case.category and case.category in (t.categories or [])))]
                team = fallback or by_id.get(case.team_id)
                if (team.pk if team else None) != case.team_id:
                    entries.append(CaseEntry(case=case, kind=EntryKind.ASSIGNMENT, data={"team": team.pk},
                                             body=f"queued in {team} (SLA breached: widened to the fallback queue)"))
                case.team_id = team.pk if team else None
                case._change_reason = ("SLA breached: widened to the fallback queue" if fallback
                                       else "SLA breached: no fallback queue to widen to")
                queued.append(case.pk)
                grants += [(case, t.group_id) for t in ([team] if team else []) + (serving if fallback else [])]
            if raised:
                stats["raised"] += 1
                entries.append(CaseEntry(case=case, kind=EntryKind.SLA, body=(
                    f"SLA breached ({waited}): nobody else can take it; priority {old} -> "
                    f"{case.get_priority_display()}, next deadline {case.sla_due_at:%Y-%m-%d %H:%M} UTC")))
            else:
                stats["still_urgent"] += 1
            groups.setdefault((case.priority, case.assigned_agent_id is None and fallback is not None), []).append(case.pk)
        for (priority, to_fallback), ids in groups.items():  # the deadline follows from the priority
            Case.objects.filter(pk__in=ids).update(
                priority=priority, sla_due_at=sla_due(priority=priority, start=now), updated_at=now,
                sla_breaches=Least(F("sla_breaches") + 1, MAX_BREACHES), **({"team": fallback} if to_fallback else {}))
        if cases:
            Case.history.bulk_history_create(cases, update=True)
        if queued:
            permissions.cases_queues_set(grants=grants, case_ids=queued)
        if entries:
            CaseEntry.objects.bulk_create(entries)


def cases_sla_check(*, now: datetime | None = None, limit: int = 10_000, batch: int = SLA_BATCH,
                    deadline: float | None = None) -> dict:
    """Cases still waiting for a first response after their SLA: re-route, else raise priority.

    An assigned case goes to another online agent who can take it; a queued case is routed
    if anyone can take it now. When nobody can, the priority goes up one level (with a
    new, shorter deadline) and a queued case moves to the fallback queue.

    Cost follows what can be done: the breached cases are read `batch` at a time, oldest deadline
    first; only those a free agent serves (FreePlaces, read once) are tried one by one, and each
    success takes one of the free places; the rest of the batch is raised set-based (a few
    statements per batch, `_sla_raise`). The sweep stops claiming after `limit` cases or when
    `deadline` (time.monotonic(); default AGENTS_SLA_TICK_BUDGET_S from now) has passed: the
    schedules cluster runs the other minute ticks too. What is left is still due at the next tick.
    """
    now = now or timezone.now()
    if deadline is None:
        deadline = time.monotonic() + getattr(settings, "AGENTS_SLA_TICK_BUDGET_S", 20)
    stats = {"rerouted": 0, "raised": 0, "still_urgent": 0}
    free = FreePlaces.read(now)  # a case no free agent serves skips the routing attempt's queries
    after: tuple[datetime, int] | None = None  # where the last batch ended (a case another worker holds is passed)
    seen = 0
    while seen < limit and time.monotonic() < deadline:
        due = Case.objects.filter(status__in=WAITING_CASE_STATUSES, sla_due_at__lte=now)
        if after is not None:
            due = due.filter(Q(sla_due_at__gt=after[0]) | Q(sla_due_at=after[0], pk__gt=after[1]))
        page = list(due.select_related("team").only("pk", "sla_due_at", "team", "category", "assigned_agent_id")
                    .order_by("sla_due_at", "pk")[: min(batch, limit - seen)])
        if not page:
            break
        seen += len(page)
        after = (page[-1].sla_due_at, page[-1].pk)
        rest = []
        for case in page:
            if time.monotonic() >= deadline:
                break  # out of time: the rest of the page is still due at the next tick (not raised untried)
            if free.can_serve(case, besides=case.assigned_agent_id):
                rerouted = _sla_reroute(case.pk, now=now, free=free)
                if rerouted is None:
                    continue
                if rerouted:
                    stats["rerouted"] += 1
                    continue
            rest.append(case.pk)
        _sla_raise(rest, now=now, teams=free.teams, stats=stats)
    return stats
