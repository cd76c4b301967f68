"""Reads for the agent console: every selector takes the user and returns only what they may see."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q, QuerySet
from django.template import TemplateSyntaxError
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from agents.choices import OPEN_CASE_STATUSES, AgentStatus, CaseStatus
from agents.models import Agent, Case, ReplyTemplate, Team
from agents.services.routing import agent_loads
from journeys.engine.runtime import profile_dict
from journeys.models import Event, StepExecution


def cases_for_user(*, user, perm: str = "agents.view_case") -> QuerySet[Case]:
    """Cases the user holds `perm` on: their own, their team's queue, or all for supervisors."""
    if not user.is_authenticated:
        return Case.objects.none()
    return get_objects_for_user(user, perm, klass=Case.objects.select_related("customer", "assigned_agent__user", "team"))


# Most urgent first, then the longest waiting (ids break ties, so pages of the queue never overlap).
QUEUE_ORDER = ("-priority", "created_at", "pk")


def my_cases(*, user) -> QuerySet[Case]:
    return cases_for_user(user=user).filter(assigned_agent__user=user, status__in=OPEN_CASE_STATUSES).order_by(*QUEUE_ORDER)


def team_queue(*, user) -> QuerySet[Case]:
    """Unassigned cases the user may take (their team's queue)."""
    return cases_for_user(user=user, perm="agents.take_case").filter(status=CaseStatus.NEW).order_by(*QUEUE_ORDER)


def agent_for(*, user) -> Agent | None:
    return Agent.objects.select_related("team").filter(user=user).first() if user.is_authenticated else None


@dataclass
class TransferTarget:
    value: str  # "team:<id>" or "agent:<id>", as the form posts it
    label: str
    target: Team | Agent


def transfer_targets(*, user, case: Case) -> dict[str, list[TransferTarget]]:
    """Where the user may transfer the case, as the console offers it: every team's queue, and the
    colleagues who may receive it (for supervisors, any agent who can sign in; for an agent, those
    online), with their status and load. The services check again. Three queries."""
    agents = Agent.objects.filter(user__is_active=True).exclude(pk=case.assigned_agent_id).select_related("user", "team")
    if not user.has_perm("agents.change_case"):
        agents = agents.filter(status=AgentStatus.ONLINE)
    agents = list(agents.order_by("team__name", "user__username"))
    loads = agent_loads([a.pk for a in agents])
    return {
        "Queues": [TransferTarget(f"team:{t.pk}", f"{t.name} queue", t) for t in Team.objects.order_by("name")],
        "Colleagues": [TransferTarget(f"agent:{a.pk}", f"{a} ({a.team}, {a.get_status_display().lower()}, "
                                      f"{loads.get(a.pk, 0)}/{a.capacity} cases)", a) for a in agents],
    }


# --- the prefilled case ----------------------------------------------------------------------------


@dataclass
class CaseSummary:
    """What an agent needs before answering: who this is, what happened, how they got here."""

    facts: dict
    events: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    previous_cases: list[dict] = field(default_factory=list)
    journey_path: list[dict] = field(default_factory=list)
    workflow: str = ""


def _opened_delivery_ids(customer_id: int, delivery_ids: list[int]) -> set[int]:
    """Deliveries with an `Email Opened` (or any `... Opened`) event; by convention its
    message id is `open:<delivery id>` or its properties name the delivery."""
    if not delivery_ids:
        return set()
    rows = Event.objects.filter(customer_id=customer_id, name__iendswith="opened").filter(
        Q(message_id__in=[f"open:{d}" for d in delivery_ids]) | Q(properties__delivery_id__in=delivery_ids)
        | Q(properties__delivery__in=delivery_ids)
    ).values_list("message_id", "properties")
    opened = set()
    for message_id, props in rows:
        for value in (message_id.removeprefix("open:"), (props or {}).get("delivery_id"), (props or {}).get("delivery")):
            try:
                opened.add(int(value))
            except (TypeError, ValueError):
                pass
    return opened


def case_summary(*, case: Case, now: datetime | None = None, limit: int = 10) -> CaseSummary:
    """Recent events, messages sent (and whether opened), previous cases, the journey path, key facts.

    Callers pass a case obtained through `cases_for_user`, so the user may see it."""
    from channels_app.models import Delivery

    now = now or timezone.now()
    customer = case.customer
    profile = profile_dict(customer, now)
    facts = {
        "name": customer.display_name,
        "email": customer.email,
        "plan": profile.get("plan") or "-",
        "lifetime_value": profile.get("ltv") or 0,
        "tenure_days": profile.get("tenure_days"),
        "language": case.language or customer.locale or "-",
        "timezone": customer.timezone,
        "preferred_channel": (customer.traits or {}).get("preferred_channel") or "-",
    }
    events = [
        {"name": e.name or e.type, "at": e.timestamp, "properties": e.properties}
        for e in Event.objects.filter(customer=customer).order_by("-timestamp", "-id")[:limit]
    ]
    deliveries = list(Delivery.objects.filter(customer=customer).select_related("channel").order_by("-created_at")[:limit])
    opened = _opened_delivery_ids(customer.pk, [d.pk for d in deliveries])
    messages = [
        {"subject": d.subject or d.body[:60], "channel": d.channel.kind, "status": d.status,
         "opened": d.pk in opened or bool(getattr(d, "opened_at", None)), "at": d.created_at}
        for d in deliveries
    ]
    previous = [
        {"id": c.pk, "subject": c.subject or c.category, "status": c.get_status_display(),
         "resolution": c.get_resolution_code_display(), "at": c.created_at}
        for c in Case.objects.filter(customer=customer).exclude(pk=case.pk).order_by("-created_at")[:5]
    ]
    path, workflow = [], ""
    if case.origin_run_id:
        run = case.origin_run
        workflow = run.workflow.name
        path = [
            {"step": e.step_key, "kind": e.step_kind, "outcome": e.outcome or "...", "at": e.started_at}
            for e in StepExecution.objects.filter(run_id=run.pk).order_by("started_at", "id")
        ]
    return CaseSummary(facts=facts, events=events, messages=messages, previous_cases=previous,
                       journey_path=path, workflow=workflow)


@dataclass(frozen=True)
class Suggestion:
    template_id: int
    name: str
    text: str
    why: str


def case_suggested_replies(*, case: Case, limit: int = 3, now: datetime | None = None) -> list[Suggestion]:
    """Reply templates matched to the case's category and intent (exact matches first), in the
    case's language when there is one, personalised with the customer's profile."""
    now = now or timezone.now()
    language = (case.language or "en")[:2]
    templates = ReplyTemplate.objects.filter(active=True).filter(
        Q(category="") | Q(category=case.category)).filter(Q(intent="") | Q(intent=case.intent))

    def score(t: ReplyTemplate) -> tuple:
        return (bool(t.category), bool(t.intent), t.language[:2] == language, -t.pk)

    ranked = sorted(templates, key=score, reverse=True)
    if any(t.language[:2] == language for t in ranked):
        ranked = [t for t in ranked if t.language[:2] == language]
    from channels_app.services.templates import TemplateRenderError, text_render

    # plain text (no autoescape) in the message templates' sandbox and within their cost bounds
    data = {"profile": profile_dict(case.customer, now), "case": {"id": case.pk, "subject": case.subject,
                                                                   "category": case.category}}
    out = []
    for t in ranked[:limit]:
        try:
            text = text_render(text=t.body, data=data).strip()
        except (TemplateSyntaxError, TemplateRenderError):
            continue
        why = ", ".join(w for w, on in (("category " + t.category, t.category), ("intent " + t.intent, t.intent)) if on)
        out.append(Suggestion(template_id=t.pk, name=t.name, text=text, why=why or "general"))
    return out


# --- metrics ----------------------------------------------------------------------------------------


def _seconds(values: list[float]) -> dict:
    return {"count": len(values), "mean_s": round(statistics.fmean(values)) if values else None,
            "median_s": round(statistics.median(values)) if values else None}


def case_metrics(*, user, since: datetime | None = None) -> dict:
    """Time to first response, resolution time, reopen rate (over the cases the user may see),
    and escalation rate per workflow (escalate_to_agent visits that escalated / all visits)."""
    cases = cases_for_user(user=user)
    if since:
        cases = cases.filter(created_at__gte=since)
    rows = list(cases.values("created_at", "first_response_at", "resolved_at", "reopen_count", "status"))
    first = [(r["first_response_at"] - r["created_at"]).total_seconds() for r in rows if r["first_response_at"]]
    resolved = [(r["resolved_at"] - r["created_at"]).total_seconds() for r in rows if r["resolved_at"]]
    ever_resolved = [r for r in rows if r["resolved_at"] or r["reopen_count"] or r["status"] == CaseStatus.CLOSED]
    reopened = [r for r in ever_resolved if r["reopen_count"]]
    escalations = []
    if user.has_perm("agents.view_case"):  # workflow-wide numbers are for supervisors
        visits = StepExecution.objects.filter(step_kind="escalate_to_agent", finished_at__isnull=False)
        if since:
            visits = visits.filter(started_at__gte=since)
        per: dict[str, list[int]] = {}
        for name, outcome in visits.values_list("run__workflow__name", "outcome"):
            total_escalated = per.setdefault(name, [0, 0])
            total_escalated[0] += 1
            total_escalated[1] += outcome == "escalated"
        escalations = [{"workflow": name, "visits": t, "escalated": e, "rate": round(e / t, 3)}
                       for name, (t, e) in sorted(per.items())]
    return {
        "cases": len(rows),
        "open": sum(1 for r in rows if r["status"] not in (CaseStatus.RESOLVED, CaseStatus.CLOSED)),
        "first_response": _seconds(first),
        "resolution": _seconds(resolved),
        "reopen_rate": round(len(reopened) / len(ever_resolved), 3) if ever_resolved else None,
        "escalation_by_workflow": escalations,
    }
