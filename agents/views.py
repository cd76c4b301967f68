"""The agent console: thin views over selectors and services.

A case outside the user's reach is a 404 (its existence is not revealed); an
action the user may not take on a case they can see is a 403.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required as _login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from agents import forms, selectors
from agents.choices import ErrorCode
from agents.models import Case, Team
from agents.errors import CaseError, CaseForbidden
from agents.services import cases as case_services
from agents.services import routing


def login_required(view):
    return _login_required(view, login_url="agents:login")


def _case(request, pk: int):
    return get_object_or_404(selectors.cases_for_user(user=request.user), pk=pk)


def _act(request, case, action, ok):
    """Run a service for a case the user can see; errors become messages, forbidden becomes 403.
    `ok` is the success message, or a function of the service's result giving (level, message)."""
    try:
        result = action(case)
    except CaseForbidden as exc:
        raise PermissionDenied(exc.message) from None
    except CaseError as exc:
        messages.error(request, exc.message)
    else:
        level, text = ok(result) if callable(ok) else (messages.SUCCESS, ok)
        if text:
            messages.add_message(request, level, text)
    return redirect("agents:case", pk=case.pk)


def _reply_outcome(entry) -> tuple[int, str]:
    """What became of a reply so far: it may be kept on the case but not leave (no address, an
    opt-out). The send itself happens after the reply is stored (a worker takes it), so the
    delivery is read again and a reply still on its way is said to be queued, not sent."""
    delivery = entry.delivery
    if delivery is not None:
        delivery.refresh_from_db(fields=["status", "reason", "error"])
    if delivery is not None and delivery.status in ("suppressed", "failed", "bounced"):
        why = delivery.get_reason_display() if delivery.reason else (delivery.error or delivery.status)
        return messages.ERROR, f"The reply is on the case but was not sent: {why}."
    if delivery is not None and delivery.status == "deferred":
        return messages.WARNING, f"The reply will go out later: {delivery.get_reason_display() or 'deferred'}."
    if delivery is not None and delivery.status in ("queued", "sending"):
        return messages.SUCCESS, "Reply queued: it goes out in a moment (the timeline shows when it has)."
    return messages.SUCCESS, "Reply sent."


QUEUE_PAGE = 50  # cases per section of the queue page; the rest on the next pages


def _queue_page(request, cases, param: str):
    """One page of a section of the queue (`?<param>=<n>`): its cases and one COUNT of them all.
    A page number out of range or not a number shows the nearest page."""
    return Paginator(cases, QUEUE_PAGE).get_page(request.GET.get(param))


@login_required
def queue(request):
    agent = selectors.agent_for(user=request.user)
    return render(request, "agents/queue.html", {
        "agent": agent,
        "my_cases": _queue_page(request, selectors.my_cases(user=request.user), "mine"),
        "team_queue": _queue_page(request, selectors.team_queue(user=request.user), "queue"),
        "status_form": forms.StatusForm(initial={"status": agent.status}) if agent else None,
    })


@login_required
@require_POST
def status_set(request):
    agent = selectors.agent_for(user=request.user)
    if agent is None:
        raise PermissionDenied("only agents have a status")
    form = forms.StatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("agents:queue")
    moved = case_services.agent_status_set(agent=agent, status=form.cleaned_data["status"], actor=request.user)
    if moved:
        messages.info(request, f"{moved} case{'s' if moved != 1 else ''} you had not answered yet "
                               f"went to an online colleague or back to the queue.")
    return redirect("agents:queue")


TIMELINE_PAGE = 50  # timeline entries on the case page, newest; older ones on the next pages


@login_required
def case_detail(request, pk: int):
    case = _case(request, pk)
    can_change = request.user.has_perm("agents.change_case") or request.user.has_perm("agents.change_case", case)
    # `?timeline=2` and on: older entries. Each page reads as the timeline does, oldest first.
    timeline = Paginator(case.entries.select_related("author", "delivery").order_by("-created_at", "-id"),
                         TIMELINE_PAGE).get_page(request.GET.get("timeline"))
    return render(request, "agents/case_detail.html", {
        "case": case,
        "can_change": can_change,
        "can_take": request.user.has_perm("agents.take_case", case) and case.status == "new",
        "summary": selectors.case_summary(case=case),
        "suggestions": selectors.case_suggested_replies(case=case),
        "entries": list(reversed(timeline.object_list)),
        "timeline": timeline,
        "reply_form": forms.ReplyForm(),
        "note_form": forms.NoteForm(),
        "resolve_form": forms.ResolveForm(),
        "transfer_form": forms.TransferForm(targets=selectors.transfer_targets(user=request.user, case=case))
        if can_change and case.is_open else None,
        "followup_form": forms.FollowUpForm(workflows=case_services.followup_workflows()),
    })


@login_required
@require_POST
def case_take(request, pk: int):
    """Take a case from the queue. Losing the race for a case your queue showed (or pressing Take on
    a case already yours) is a message, on the case if you may still see it, else on the queue; a
    case outside your reach is a 404 like every other action on it, whatever the refusal."""
    case = get_object_or_404(Case.objects.only("pk"), pk=pk)
    try:
        routing.case_take(case=case, actor=request.user)
    except CaseForbidden as exc:
        if not selectors.cases_for_user(user=request.user).filter(pk=pk).exists():
            raise Http404 from None  # a case outside the user's reach is not revealed
        raise PermissionDenied(exc.message) from None
    except CaseError as exc:
        visible = selectors.cases_for_user(user=request.user).filter(pk=pk).exists()
        if not visible and exc.code != ErrorCode.TAKEN:  # the service says TAKEN to them only for a lost race
            raise Http404 from None
        level = messages.INFO if exc.code == ErrorCode.ALREADY_YOURS else messages.ERROR
        messages.add_message(request, level, exc.message)
        if not visible:
            return redirect("agents:queue")
    else:
        messages.success(request, "The case is yours.")
    return redirect("agents:case", pk=pk)


def _form_errors(form) -> str:
    """The form's own messages (empty, too long, out of date, not a choice), each once."""
    return " ".join(dict.fromkeys(m for errors in form.errors.values() for m in errors))


def _refused(request, form, pk: int):
    """Back to the case, saying what to fix."""
    messages.error(request, _form_errors(form))
    return redirect("agents:case", pk=pk)


@login_required
@require_POST
def case_reply(request, pk: int):
    case = _case(request, pk)
    form = forms.ReplyForm(request.POST)
    if not form.is_valid():
        return _refused(request, form, pk)
    data = form.cleaned_data
    return _act(request, case, lambda case: case_services.case_reply_send(
        case=case, actor=request.user, body=data["body"], idempotency_key=data["nonce"]), _reply_outcome)


@login_required
@require_POST
def case_note(request, pk: int):
    case = _case(request, pk)
    form = forms.NoteForm(request.POST)
    if not form.is_valid():
        return _refused(request, form, pk)
    return _act(request, case, lambda case: case_services.case_note_add(
        case=case, actor=request.user, body=form.cleaned_data["body"]), "Note added.")


@login_required
@require_POST
def case_resolve(request, pk: int):
    case = _case(request, pk)
    form = forms.ResolveForm(request.POST)
    if not form.is_valid():
        return _refused(request, form, pk)
    return _act(request, case, lambda case: case_services.case_resolve(
        case=case, actor=request.user, code=form.cleaned_data["code"], note=form.cleaned_data["note"]), "Case resolved.")


@login_required
@require_POST
def case_transfer(request, pk: int):
    """Hand the case to a colleague or a team's queue. Whoever no longer sees it afterwards (the
    agent who handed it on) lands on their queue."""
    case = _case(request, pk)
    form = forms.TransferForm(request.POST, targets=selectors.transfer_targets(user=request.user, case=case))
    if not form.is_valid():
        return _refused(request, form, pk)
    target = form.cleaned_data["to"]

    def transfer(case):
        if isinstance(target, Team):
            return routing.case_queue(case=case, team=target, actor=request.user)
        return routing.case_assign(case=case, agent=target, actor=request.user)

    def outcome(moved):
        where = f"is now with {moved.assigned_agent}" if moved.assigned_agent else f"waits in the {moved.team} queue"
        return messages.SUCCESS, f"Case #{moved.pk} transferred: it {where}."

    response = _act(request, case, transfer, outcome)
    if not selectors.cases_for_user(user=request.user).filter(pk=pk).exists():
        return redirect("agents:queue")
    return response


@login_required
@require_POST
def case_reopen(request, pk: int):
    return _act(request, _case(request, pk),
                lambda case: case_services.case_reopen(case=case, actor=request.user), "Case reopened.")


@login_required
@require_POST
def case_close(request, pk: int):
    return _act(request, _case(request, pk),
                lambda case: case_services.case_close(case=case, actor=request.user), "Case closed.")


@login_required
@require_POST
def case_followup(request, pk: int):
    case = _case(request, pk)
    form = forms.FollowUpForm(request.POST, workflows=case_services.followup_workflows())
    if not form.is_valid():
        return _refused(request, form, pk)

    def enroll(case):
        run = case_services.case_followup_enroll(case=case, actor=request.user, workflow=form.cleaned_data["workflow"])
        if run is None:
            messages.warning(request, "The workflow did not enrol the customer (entry rule or re-entry policy).")
        else:
            messages.success(request, f"Enrolled in {form.cleaned_data['workflow']}.")

    return _act(request, case, enroll, "")


@login_required
def metrics(request):
    return render(request, "agents/metrics.html", {"metrics": selectors.case_metrics(user=request.user)})
