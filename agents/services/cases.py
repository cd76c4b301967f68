"""The life of a case: opened by an escalation, worked by an agent (notes, replies), resolved.

Each operation checks the actor's permission on the case itself, runs in one
transaction with its timeline entry, and leaves side effects (routing, sending,
the `Case Resolved` event) to the outbox or to `on_commit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from agents.choices import AgentStatus, CaseStatus, EntryKind, ErrorCode, ResolutionCode
from agents.errors import CaseError
from agents.models import Agent, Case, CaseEntry, Team
from agents.services import permissions
from agents.services.conversations import conversation_for_case
from agents.services.routing import agent_cases_requeue, enqueue_route, sla_due
from journeys.choices import StreamEventType
from journeys.engine.batch import rows_move
from journeys.engine.queue import task_send_on_commit
from journeys.engine.runtime import profile_dict
from journeys.models import Customer, JourneyRun, Workflow
from journeys.services.governance import history_stamp, require_reason
from journeys.services.identity import MergePairs, merge_hook

REPLY_TEMPLATE_NAME = "agent-reply"


# --- teams and agents ---------------------------------------------------------------------------


def _routing_change_check(*, obj, actor, reason: str) -> None:
    """Routing settings (teams, agents, skills, capacity) are ops configuration: the actor needs the
    model permission, and a person must say why (stored on the history row). actor=None is the system."""
    if actor is not None:
        opts = obj._meta
        action = "change" if obj.pk else "add"
        if not actor.has_perm(f"{opts.app_label}.{action}_{opts.model_name}"):
            raise PermissionDenied(f"{actor} may not {action} {opts.verbose_name_plural}")
    history_stamp(obj, actor=actor, reason=require_reason(actor, reason) or getattr(obj, "_change_reason", ""))


@transaction.atomic
def team_save(*, team: Team, actor=None, reason: str = "") -> Team:
    """Save a team, giving it the auth Group that carries its queue permissions."""
    _routing_change_check(obj=team, actor=actor, reason=reason)
    if team.group_id is None:
        team.group, _ = Group.objects.get_or_create(name=f"agents-team-{team.slug}")
    team.save()
    return team


@transaction.atomic
def agent_save(*, agent: Agent, actor=None, reason: str = "") -> Agent:
    """Save an agent (team, capacity, languages, hours) and keep their membership in exactly their
    team's group. A status changed here (the admin) has the console's effect, after commit."""
    _routing_change_check(obj=agent, actor=actor, reason=reason)
    before = Agent.objects.filter(pk=agent.pk).values_list("status", flat=True).first() if agent.pk else None
    agent.save()
    other_groups = Group.objects.filter(agent_team__isnull=False).exclude(pk=agent.team.group_id)
    agent.user.groups.remove(*other_groups)
    agent.user.groups.add(agent.team.group)
    if before is not None and before != agent.status:
        if agent.status == AgentStatus.ONLINE:
            _route_waiting_on_commit()
        else:
            transaction.on_commit(lambda: _cases_hand_back(agent))
    return agent


def _route_waiting_on_commit() -> None:
    task_send_on_commit("agents.tasks.cases_route_waiting", group="agents")


def agent_status_set(*, agent: Agent, status: str, actor) -> int:
    """Online/away/offline. Only online agents get cases from routing: coming online routes the
    waiting cases this agent may take; going away or offline hands the cases nobody has answered
    yet to a colleague, else back to the queue (routing.agent_cases_requeue). Returns how many
    cases were handed back."""
    if actor != agent.user and not actor.has_perm("agents.change_agent"):
        raise CaseError(ErrorCode.NOT_ALLOWED, "you may only change your own status")
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(status=status, updated_at=timezone.now())
        agent.status = status
        if status == AgentStatus.ONLINE:
            _route_waiting_on_commit()
    if status == AgentStatus.ONLINE:
        return 0
    return _cases_hand_back(agent)


def _cases_hand_back(agent: Agent) -> int:
    """After the status commits (routers read it under the agent's lock), one case at a time."""
    return agent_cases_requeue(agent=agent, reason=f"{agent} went {AgentStatus(agent.status).label.lower()}")


# --- opening a case -------------------------------------------------------------------------------


@dataclass
class CaseDraft:
    """What an escalation knows about the problem (built by the escalate_to_agent step)."""

    customer: Customer
    subject: str
    text: str
    category: str
    intent: str
    language: str
    priority: int
    sentiment: float | None
    complexity: float | None
    reasons: list[str]
    team: Team | None = None
    run: JourneyRun | None = None
    event_id: int | None = None
    workflow_id: int | None = None


@transaction.atomic
def case_open(*, draft: CaseDraft, idempotency_key: str, now: datetime | None = None) -> tuple[Case, bool]:
    """Open a case for an escalation (once per key) or add the message to the customer's open case
    in the same category. Returns (case, created). Routing happens after commit."""
    now = now or timezone.now()
    existing = Case.objects.filter(escalation_key=idempotency_key).first()
    if existing is None:
        existing = CaseEntry.objects.filter(idempotency_key=idempotency_key).select_related("case").first()
        existing = existing.case if existing else None
    if existing is not None:
        return existing, False
    open_case = (
        Case.objects.filter(customer=draft.customer, category=draft.category)
        .exclude(status__in=[CaseStatus.RESOLVED, CaseStatus.CLOSED]).order_by("-created_at").first()
    )
    if open_case is None:
        # The customer is back about a problem resolved only days ago: that case reopens
        # (it counts in the reopen rate) rather than a new one starting from nothing.
        window = timedelta(days=getattr(settings, "AGENTS_REOPEN_WINDOW_DAYS", 7))
        recent = (
            Case.objects.select_for_update(of=("self",))
            .filter(customer=draft.customer, category=draft.category, status=CaseStatus.RESOLVED,
                    resolved_at__gte=now - window)
            .order_by("-resolved_at").first()
        )
        if recent is not None:
            open_case = _reopen_locked(case=recent, actor=None, reason="the customer wrote again")
    if open_case is not None:
        open_case.priority = max(open_case.priority, draft.priority)
        _customer_wrote(open_case, text=draft.text, idempotency_key=idempotency_key, now=now,
                        data={"sentiment": draft.sentiment, "complexity": draft.complexity,
                              "run": draft.run.pk if draft.run else None})
        return open_case, False
    try:
        with transaction.atomic():
            case = Case.objects.create(
                customer=draft.customer, origin_run=draft.run, origin_event_id=draft.event_id,
                origin_workflow_id=draft.workflow_id, escalation_key=idempotency_key,
                subject=draft.subject[:255], text=draft.text, category=draft.category, intent=draft.intent,
                language=draft.language, priority=draft.priority, sentiment=draft.sentiment,
                complexity=draft.complexity, escalation_reasons=draft.reasons, team=draft.team,
                sla_due_at=sla_due(priority=draft.priority, start=now),
            )
    except IntegrityError:  # a concurrent retry of the same step opened it first
        return Case.objects.get(escalation_key=idempotency_key), False
    CaseEntry.objects.create(case=case, kind=EntryKind.INBOUND, body=draft.text,
                             data={"reasons": draft.reasons, "sentiment": draft.sentiment, "complexity": draft.complexity})
    case_stream(case=case, event_type=StreamEventType.CASE_OPENED, at=now)
    enqueue_route(case_id=case.pk)
    return case, True


def _customer_wrote(case: Case, *, text: str, idempotency_key: str | None, data: dict, now: datetime,
                    answer: bool = True) -> None:
    """The customer wrote on their open case: the message goes on its timeline and, if it is an
    `answer`, the ball is in the agent's court again (pending -> assigned), with a fresh SLA if none
    runs. A bare SMS keyword (STOP, HELP, ...) is no answer: status and deadline stay as they are."""
    CaseEntry.objects.create(case=case, kind=EntryKind.INBOUND, body=text, idempotency_key=idempotency_key, data=data)
    if not answer:
        return
    if case.status == CaseStatus.PENDING:
        case.status = CaseStatus.ASSIGNED
    if case.sla_due_at is None:
        case.sla_due_at = sla_due(priority=case.priority, start=now)
    case._change_reason = "customer wrote again"
    case.save()


def case_replied_on(*, customers: list[Customer], channel, since: datetime | None = None,
                    resolved_since: datetime | None = None) -> Case | None:
    """The case an agent last wrote to one of these customers about on this kind of channel (SMS,
    chat), with `since` only if that message is newer: the case the customer's next message on that
    channel answers. The newest such message decides, whatever its case's status: that case if it
    is open (or, with `resolved_since`, resolved since then), else None (an older open case is not
    given an answer meant for a newer, closed one). A reply that never left (suppressed) does not count."""
    replies = (CaseEntry.objects.filter(kind=EntryKind.MESSAGE, case__customer__in=customers,
                                        delivery__channel__kind=channel.kind)
               .exclude(delivery__status="suppressed"))
    if since is not None:
        replies = replies.filter(created_at__gt=since)
    last = replies.order_by("-created_at", "-id").select_related("case").first()
    if last is None:
        return None
    case = last.case
    if case.is_open:
        return case
    if (resolved_since is not None and case.status == CaseStatus.RESOLVED and case.resolved_at is not None
            and case.resolved_at >= resolved_since):
        return case
    return None


@transaction.atomic
def case_answer_receive(*, customers: list[Customer], channel, text: str, idempotency_key: str | None = None,
                        reopen: bool = True, now: datetime | None = None) -> Case | None:
    """A customer wrote on a channel that has no conversation of its own (an SMS; a chat without a
    bot) after an agent wrote to them there: the message goes on that case (`case_replied_on`),
    which is the agent's to answer again. With `reopen`, a case resolved within
    AGENTS_REOPEN_WINDOW_DAYS reopens (the answer would be lost otherwise), as when the customer
    writes again through a workflow. Without `reopen` (a bare SMS keyword: STOP, HELP, ...) the
    message only goes on an open case's timeline: its status and deadline stay as they are. None
    when there is no such case (the caller treats the message as before). Once per key. The whole
    text is kept (no length limit: a case entry's body is unbounded text)."""
    now = now or timezone.now()
    text = text.replace("\x00", "").strip()  # PostgreSQL stores no NUL in text
    if not text or not customers:
        return None
    window = timedelta(days=getattr(settings, "AGENTS_REOPEN_WINDOW_DAYS", 7))
    found = case_replied_on(customers=customers, channel=channel, resolved_since=now - window if reopen else None)
    if found is None:
        return None
    case = _locked(found)
    if idempotency_key and CaseEntry.objects.filter(idempotency_key=idempotency_key).exists():
        return case  # the provider retried its webhook
    if case.status == CaseStatus.CLOSED or case.customer.erased_at is not None or (not reopen and not case.is_open):
        return None  # resolved, closed (or erased) meanwhile
    if case.status == CaseStatus.RESOLVED:
        case = _reopen_locked(case=case, actor=None, reason=f"the customer answered by {channel.get_kind_display()}")
    _customer_wrote(case, text=text, idempotency_key=idempotency_key, now=now, answer=reopen,
                    data={"channel": channel.name, "channel_kind": channel.kind})
    return case


def cases_sms_answer(*, channel, customers: list[Customer], body: str, message_id: str = "",
                     reopen: bool = True) -> dict | None:
    """INBOUND_SMS_HOOKS entry: an SMS answers the case an agent last texted the sender about
    (Twilio's MessageSid makes a retried webhook count once)."""
    key = f"sms:{channel.pk}:{message_id}"[:200] if message_id else None
    case = case_answer_receive(customers=customers, channel=channel, text=body, idempotency_key=key, reopen=reopen)
    return {"action": "to_case", "case": case.pk} if case is not None else None


# --- working a case -------------------------------------------------------------------------------


def _locked(case: Case) -> Case:
    """The case, locked, then read with its customer and agent: locking the joined statement would
    return the case row as it is after a wait but its customer and agent as they were before it."""
    Case.objects.select_for_update().filter(pk=case.pk).values_list("pk", flat=True).get()
    return Case.objects.select_related("customer", "assigned_agent__user").get(pk=case.pk)


def _writable(case: Case) -> None:
    if case.customer.erased_at is not None:
        raise CaseError(ErrorCode.WRONG_STATUS, f"the customer of case #{case.pk} was erased: nothing more is "
                                                "written on it")


@transaction.atomic
def case_note_add(*, case: Case, actor, body: str) -> CaseEntry:
    """An internal note: the customer never sees it."""
    case = _locked(case)
    permissions.case_check(user=actor, case=case, perm="agents.change_case")
    _writable(case)
    if not body.strip():
        raise CaseError(ErrorCode.WRONG_STATUS, "a note needs some text")
    return CaseEntry.objects.create(case=case, kind=EntryKind.NOTE, author=actor, body=body.strip())


def reply_channel(*, customer: Customer):
    """The customer's preferred channel (trait `preferred_channel`: a channel name or kind),
    else settings.AGENTS_REPLY_CHANNEL (default "email"). Fallbacks and consent are channels' job."""
    from channels_app.models import Channel

    preferred = str((customer.traits or {}).get("preferred_channel") or "")
    default = getattr(settings, "AGENTS_REPLY_CHANNEL", "email")
    for lookup in ({"name": preferred}, {"kind": preferred}, {"name": default}, {"kind": default}):
        if next(iter(lookup.values())):
            channel = Channel.objects.filter(**lookup).order_by("-enabled", "pk").first()
            if channel is not None:
                return channel
    return None


def reply_template():
    """The channels template that carries an agent's free-text reply.

    Agents are staff writing plain text, so the body is not HTML-escaped (an
    apostrophe must reach an SMS as an apostrophe)."""
    from channels_app.models import MessageTemplate

    template, _ = MessageTemplate.objects.get_or_create(
        name=REPLY_TEMPLATE_NAME,
        defaults={
            "subject": "{% autoescape off %}{{ reply.subject }}{% endautoescape %}",
            "body": "{% autoescape off %}{{ reply.body }}{% endautoescape %}",
        },
    )
    return template


@transaction.atomic
def case_reply_send(*, case: Case, actor, body: str, idempotency_key: str) -> CaseEntry:
    """Send the agent's reply on the customer's preferred channel (or in the chat the case came
    from), once per form submission.

    A reply that leaves (not suppressed) stops the SLA clock and the case then waits on
    the customer (`pending`); the first one is the case's time to first response."""
    from channels_app.services import message_send

    case = _locked(case)
    permissions.case_check(user=actor, case=case, perm="agents.change_case")
    key = f"case:{case.pk}:reply:{idempotency_key}"[:200]
    done = CaseEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    _writable(case)
    if not case.is_open:
        raise CaseError(ErrorCode.WRONG_STATUS, f"case #{case.pk} is {case.status}; reopen it to reply")
    if not body.strip():
        raise CaseError(ErrorCode.WRONG_STATUS, "a reply needs some text")
    # A case handed off by the chat bot is answered in that chat; others on the preferred channel.
    conversation = conversation_for_case(case=case)
    channel = conversation.channel if conversation is not None else reply_channel(customer=case.customer)
    if channel is None:
        raise CaseError(ErrorCode.NO_CHANNEL, "no reply channel is configured")
    now = timezone.now()
    context = {
        "profile": profile_dict(case.customer, now),
        "reply": {"subject": f"Re: {case.subject}" if case.subject else "About your request", "body": body.strip()},
        "case": {"id": case.pk},
    }
    delivery = message_send(customer=case.customer, template=reply_template(), channel=channel, idempotency_key=key,
                            context=context, step_key=f"case-{case.pk}")
    entry = CaseEntry.objects.create(
        case=case, kind=EntryKind.MESSAGE, author=actor, body=body.strip(), delivery=delivery, idempotency_key=key,
        data={"channel": delivery.channel.name, "status": delivery.status, "error": delivery.error},
    )
    if conversation is not None:
        from agents.models import ConversationMessage

        ConversationMessage.objects.create(conversation=conversation, sender="agent", text=body.strip(),
                                           delivery=delivery, created_at=now, data={"case_entry": entry.pk})
    if delivery.status != "suppressed":
        if case.first_response_at is None:
            case.first_response_at = now
        case.sla_due_at = None
        if case.status == CaseStatus.ASSIGNED:
            case.status = CaseStatus.PENDING
        case._change_reason = "replied"
        case.save()
    return entry


@transaction.atomic
def case_resolve(*, case: Case, actor, code: str, note: str = "") -> Case:
    """Resolve with a resolution code and emit `Case Resolved` so workflows can follow up
    (e.g. a CSAT survey two days later). The event's message id is unique per resolution."""
    from journeys.services.internal_events import event_record_internal

    case = _locked(case)
    permissions.case_check(user=actor, case=case, perm="agents.change_case")
    if not case.is_open:
        raise CaseError(ErrorCode.WRONG_STATUS, f"case #{case.pk} is already {case.status}")
    if code not in ResolutionCode.values:
        raise CaseError(ErrorCode.WRONG_STATUS, f"unknown resolution code {code!r}")
    now = timezone.now()
    case.status = CaseStatus.RESOLVED
    case.resolution_code = code
    case.resolved_at = now
    case._change_reason = f"resolved: {code}"
    case.save()
    CaseEntry.objects.create(case=case, kind=EntryKind.STATUS, author=actor, body=note.strip() or f"resolved ({code})",
                             data={"status": CaseStatus.RESOLVED, "code": code})
    event_record_internal(
        customer=case.customer,
        name="Case Resolved",
        message_id=f"case-resolved:{case.pk}:{case.reopen_count}",
        at=now,
        properties={
            "case_id": case.pk, "category": case.category, "intent": case.intent,
            "resolution_code": code, "priority": case.get_priority_display().lower(),
            "agent": case.assigned_agent.user.get_username() if case.assigned_agent else None,
            "workflow_id": case.origin_workflow_id, "reopened": case.reopen_count,
            "resolution_seconds": int((now - case.created_at).total_seconds()),
        },
    )
    case_stream(case=case, event_type=StreamEventType.CASE_RESOLVED, at=now)
    _route_waiting_on_commit()  # the agent has room again: the queue need not wait for the next tick
    return case


@transaction.atomic
def case_reopen(*, case: Case, actor, reason: str = "") -> Case:
    """The problem came back: the case goes to its agent again if they can take it, else is re-routed."""
    case = _locked(case)
    permissions.case_check(user=actor, case=case, perm="agents.change_case")
    if case.is_open:
        raise CaseError(ErrorCode.WRONG_STATUS, f"case #{case.pk} is still open")
    return _reopen_locked(case=case, actor=actor, reason=reason)


def _reopen_locked(*, case: Case, actor, reason: str) -> Case:
    case.reopen_count += 1
    case.status = CaseStatus.NEW
    case.resolved_at = case.closed_at = None
    case.resolution_code = ""
    case.sla_due_at = sla_due(priority=case.priority, start=timezone.now())
    case._change_reason = "reopened"
    case.save()
    CaseEntry.objects.create(case=case, kind=EntryKind.STATUS, author=actor, body=reason or "reopened",
                             data={"status": CaseStatus.NEW})
    enqueue_route(case_id=case.pk)
    return case


@transaction.atomic
def case_close(*, case: Case, actor) -> Case:
    """Close a resolved case for good (no more replies)."""
    case = _locked(case)
    permissions.case_check(user=actor, case=case, perm="agents.change_case")
    if case.status != CaseStatus.RESOLVED:
        raise CaseError(ErrorCode.WRONG_STATUS, "only resolved cases can be closed")
    case.status, case.closed_at = CaseStatus.CLOSED, timezone.now()
    case._change_reason = "closed"
    case.save()
    CaseEntry.objects.create(case=case, kind=EntryKind.STATUS, author=actor, body="closed", data={"status": "closed"})
    return case


def followup_workflows():
    """Workflows an agent may enrol a customer in: the live ones."""
    return Workflow.objects.filter(live_version__isnull=False, status="active").order_by("name")


def case_followup_enroll(*, case: Case, actor, workflow: Workflow) -> JourneyRun | None:
    """Enrol the customer in a live workflow from the case page (once per case and workflow).

    Entry rules and re-entry policy still apply; None means the workflow refused them."""
    from journeys.engine.compiled import load_version
    from journeys.engine.runner import run_enroll

    with transaction.atomic():
        case = _locked(case)
        permissions.case_check(user=actor, case=case, perm="agents.change_case")
        workflow = followup_workflows().filter(pk=workflow.pk).first()
        if workflow is None:
            raise CaseError(ErrorCode.WRONG_STATUS, "that workflow is not live")
        now = timezone.now()
        run = run_enroll(version=load_version(workflow.live_version_id), customer=case.customer,
                         trigger_key=f"case:{case.pk}", now=now)
        body = (f"enrolled in {workflow.name}" if run else
                f"not enrolled in {workflow.name} (entry rule, re-entry policy or already enrolled)")
        CaseEntry.objects.create(case=case, kind=EntryKind.FOLLOW_UP, author=actor, body=body,
                                 data={"workflow": workflow.pk, "run": run.pk if run else None})
    return run


def case_stream(*, case: Case, event_type: str, at: datetime) -> None:
    """Tell the outbound event stream (journeys.services.stream) that a case opened or was resolved."""
    from journeys.services.stream import StreamItem, stream_active, stream_emit

    if not stream_active():
        return
    data = {"case_id": case.pk, "customer_id": case.customer_id, "category": case.category, "intent": case.intent,
            "priority": case.get_priority_display().lower(), "status": case.status,
            "resolution_code": case.resolution_code or None, "workflow_id": case.origin_workflow_id,
            "run_id": case.origin_run_id, "reopened": case.reopen_count}
    stream_emit(items=[StreamItem(event_type, f"{event_type}:{case.pk}:{case.reopen_count}", at, data,
                                  case.customer_id)])


@merge_hook
def cases_merge_customers(pairs: MergePairs) -> None:
    """MERGE_HOOKS entry: absorbed profiles' cases belong to the surviving customers (one UPDATE)."""
    rows_move(Case.objects.all(), pairs)



def cases_export(customer: Customer) -> tuple[str, list]:
    """EXPORTERS entry: the customer's support cases, what they wrote (subject, text) and every
    entry of each case (their messages, the replies, the agents' notes, transcripts): the same
    personal data `cases_erase_customer` clears. Two queries whatever the number of cases."""
    from django.db.models import Prefetch

    entries = CaseEntry.objects.order_by("created_at", "id")
    cases = (Case.objects.filter(customer=customer).select_related("team").order_by("created_at", "id")
             .prefetch_related(Prefetch("entries", queryset=entries)))
    return "support_cases", [
        {"id": c.pk, "subject": c.subject, "text": c.text, "status": c.status, "category": c.category,
         "intent": c.intent, "language": c.language, "priority": c.priority, "sentiment": c.sentiment,
         "escalation_reasons": c.escalation_reasons, "team": c.team.name if c.team_id else None,
         "opened": c.created_at, "resolved": c.resolved_at, "closed": c.closed_at,
         "resolution_code": c.resolution_code,
         "entries": [{"kind": e.kind, "body": e.body, "data": e.data, "delivery": e.delivery_id, "at": e.created_at}
                     for e in c.entries.all()]}
        for c in cases
    ]


ERASED_SUBJECT = "(erased)"


def cases_erase_customer(customer: Customer) -> dict:
    """ERASERS entry: the customer's cases stay for the support statistics (status, times, team,
    resolution), but what the customer wrote and what was written to them goes: the subject and
    text (also in the case's history), every entry's body and data (replies, notes, transcripts).
    Open cases are closed: nobody can answer the person any more."""
    cases = Case.objects.filter(customer=customer)
    ids = list(cases.values_list("pk", flat=True))
    if not ids:
        return {"cases_cleared": 0}
    cases.update(subject=ERASED_SUBJECT, text="", escalation_reasons=[])
    cases.exclude(status=CaseStatus.CLOSED).update(status=CaseStatus.CLOSED, closed_at=timezone.now(), sla_due_at=None)
    Case.history.filter(id__in=ids).update(subject=ERASED_SUBJECT, text="", escalation_reasons=[])
    CaseEntry.objects.filter(case_id__in=ids).update(body="", data={})
    return {"cases_cleared": len(ids)}


def runs_of_open_cases() -> Q:
    """RUN_HOLDS entry: a run a case not yet closed came from stays (the case shows its journey
    path and workflow), whatever its age (origin_run index)."""
    return Q(Exists(Case.objects.filter(origin_run_id=OuterRef("pk")).exclude(status=CaseStatus.CLOSED)))


def cases_prune(cutoff: datetime, deadline: float, batch: int) -> dict:
    """HISTORY_PRUNERS entry: closed cases closed before the cutoff go, `batch` at a time
    (case_closed_idx), each batch one transaction: with their entries, object permissions and
    history rows (which hold what the customer wrote). Their customers are looked at for the
    empty-profile check."""
    import time

    from django.db import connection

    from journeys.services.history_retention import profiles_check_later, relations_detach

    deleted = 0
    while time.monotonic() < deadline:
        rows = list(Case.objects.filter(status=CaseStatus.CLOSED, closed_at__lt=cutoff).order_by("closed_at")
                    .values_list("pk", "customer_id")[:batch])
        ids = [pk for pk, _ in rows]
        if ids:
            with transaction.atomic():
                relations_detach(Case, {"in": ids})  # entries, object permissions; conversations' link
                Case.history.filter(id__in=ids).delete()
                Case.objects.filter(pk__in=ids)._raw_delete(connection.alias)
                profiles_check_later(customer for _, customer in rows)
        deleted += len(ids)
        if len(ids) < batch:
            break
    return {"cases": deleted}
