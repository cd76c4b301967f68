"""The canvas: a draft's graph built and changed by drawing it (journeys/static/console/canvas.js).

Small endpoints under /console/versions/<id>/, each parsing its input, calling a service of
`journeys.services.drafts` (the rules the forms follow: permissions, the version lock, history
with who and why, validation) and answering with the new drawing and validation report:

- POST canvas/            JSON {"op", "reason", ...}: add_step, place, connect, relabel,
                          disconnect, delete_step, undo
- GET/POST canvas/steps/<step id>/   the step's own form in the side panel
- GET/POST canvas/settings/          the trigger and entry settings (the start node)
- POST new-draft/                    a read-only version copied into a new draft

Bad input is a 400 {"ok": false, "field", "message"} naming what to fix; a version the user may
not see is a 404; a change the user may not make is a 403. Django's CSRF check applies to every
POST (the script sends the page's token). Each change is kept in the session so that "undo"
puts the draft back as it was, as long as nobody changed it since.

Nobody's change is overwritten unseen: the drawing carries a token of the draft it shows
("loaded", `drafts.draft_fingerprint`) and every command sends it back; a side-panel form
carries a token of the step (or the settings) it was opened with. When the draft, step or
settings changed since (another tab, another editor), the change is refused with a 409 and
nothing is written; a refused command's answer carries the drawing as it is now. A client that
sends no token changes the draft as it is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.cache import never_cache

from journeys.console.graph import (
    graph_data,
    svg_graph,
    version_canvas_editable,
    version_graph,
    version_issues,
)
from journeys.console.selectors import version_for_user
from journeys.engine.registry import STEP_KINDS
from journeys.errors import DraftChanged, JourneyError, PermissionDenied
from journeys.forms.steps import kind_palette, step_form_class
from journeys.forms.version import VersionSettingsForm
from journeys.models import Step, WorkflowVersion
from journeys.services import drafts
from journeys.services.event_parsing import json_read_storable
from journeys.services.workflows import version_new_draft

UNDO_KEY = "canvas_undo"
UNDO_DEPTH = 20  # changes kept per version
UNDO_VERSIONS = 5  # versions whose changes are kept in one session
UNDO_BYTES = 256 * 1024  # at most this much of one version's past in the session
MAX_TEXT = 200
MAX_REASON = 500  # as the admin's "Reason for this change"
MAX_POSITIONS = 2000  # steps placed in one change
TOKEN = re.compile(r"[0-9a-f]{64}")  # a fingerprint of what a drawing or a form was loaded from


def _version(request: HttpRequest, pk: int) -> WorkflowVersion:
    version = version_for_user(user=request.user, pk=pk)
    if version is None:
        raise Http404("no such version, or not yours to see")
    return version


def _fail(field: str, message: str, *, status: int = 400, **extra: Any) -> JsonResponse:
    return JsonResponse({"ok": False, "field": field, "message": message, **extra}, status=status)


def _refusal(exc: Exception, default_field: str) -> JsonResponse:
    """A service's refusal as an answer naming the field (403 for a permission)."""
    if isinstance(exc, PermissionDenied):
        return _fail(default_field, str(exc), status=403)
    if hasattr(exc, "error_dict"):
        field, texts = next(iter(exc.message_dict.items()))
        return _fail(default_field if field == "__all__" else field, " ".join(texts))
    return _fail(default_field, " ".join(exc.messages))


def _token(value: Any) -> str:
    """The "loaded" token a drawing or form sends back ("" when it sends none)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not TOKEN.fullmatch(value):
        raise ValidationError({"loaded": "loaded must be the token the page was loaded with (64 hex digits); "
                                         "reload the page"})
    return value


def _conflict(request: HttpRequest, version: WorkflowVersion, exc: DraftChanged, *,
              drawing: bool = True) -> JsonResponse:
    """A change made on a stale drawing or form: 409, nothing written; with the drawing as it is
    now (not for a form: the panel, and what was typed in it, stay as they are)."""
    state = {}
    if drawing:
        version.refresh_from_db()
        state = canvas_state(version=version, request=request)
    return _fail("loaded", " ".join(exc.messages), status=409, conflict=True, **state)


# --------------------------------------------------------------------------- the drawing


def canvas_state(*, version: WorkflowVersion, request: HttpRequest | None = None) -> dict:
    """The drawing (SVG), what the script needs to edit it, the validation report and the token
    of the draft drawn (taken first: a change saved meanwhile makes it older, never newer)."""
    loaded = drafts.draft_fingerprint(version=version)
    graph = version_graph(version=version)
    by_step, report = version_issues(version=version)
    step_url = reverse("admin:journeys_workflowversion_change", args=[version.pk])
    runs_url = reverse("admin:journeys_journeyrun_changelist") + f"?version__id__exact={version.pk}"
    return {"svg": str(svg_graph(graph, step_url=step_url, runs_url=runs_url, issues=by_step)),
            "graph": graph_data(graph, issues=by_step), "issues": report,
            "undo": len(_undo_stack(request, version)) if request is not None else 0, "loaded": loaded}


def canvas_context(request: HttpRequest, version: WorkflowVersion) -> dict:
    """The graph page's editor: palette, drawing, data for the script, the endpoints."""
    state = canvas_state(version=version, request=request)
    return {"palette": kind_palette(), "state": state, "svg": state["svg"],
            "script_data": {**state["graph"], "undo": state["undo"], "issues": state["issues"],
                            "loaded": state["loaded"],
                            "urls": {"command": reverse("console:canvas_command", args=[version.pk]),
                                     "step": reverse("console:canvas_step", args=[version.pk, 0]),
                                     "settings": reverse("console:canvas_settings", args=[version.pk])}},
            "propose_url": reverse("admin:journeys_workflowversion_propose", args=[version.pk])}


def _answer(request: HttpRequest, version: WorkflowVersion, message: str, **extra: Any) -> JsonResponse:
    version.refresh_from_db()
    return JsonResponse({"ok": True, "message": message, **canvas_state(version=version, request=request), **extra})


# --------------------------------------------------------------------------- undo, kept in the session


def _undo_stack(request: HttpRequest | None, version: WorkflowVersion) -> list:
    if request is None:
        return []
    return request.session.get(UNDO_KEY, {}).get(str(version.pk), [])


def _undo_push(request: HttpRequest, version: WorkflowVersion, edit: drafts.DraftEdit, what: str) -> None:
    """Remember the change (the last UNDO_DEPTH per version, within UNDO_BYTES, for the
    UNDO_VERSIONS versions edited last): the session stays small whatever the draft's size."""
    entry = {"before": edit.before, "after": edit.after, "what": what}
    entry["size"] = len(json.dumps(entry, default=str))
    stacks = dict(request.session.get(UNDO_KEY, {}))
    stack = [*stacks.pop(str(version.pk), []), entry][-UNDO_DEPTH:]
    while len(stack) > 1 and sum(e.get("size", 0) for e in stack) > UNDO_BYTES:
        stack.pop(0)
    stacks[str(version.pk)] = stack  # last: the most recently edited version
    request.session[UNDO_KEY] = dict(list(stacks.items())[-UNDO_VERSIONS:])


def _undo(request: HttpRequest, version: WorkflowVersion, reason: str, loaded: str) -> JsonResponse:
    stacks = dict(request.session.get(UNDO_KEY, {}))
    stack = list(stacks.get(str(version.pk), []))
    if not stack:
        return _fail("op", "nothing to undo: no change of yours on this draft is remembered")
    last = stack.pop()
    try:
        drafts.version_restore(version=version, snapshot=last["before"], expected=last["after"], actor=request.user,
                               reason=reason or f"undo: {last['what']}", loaded=loaded)
    except DraftChanged as exc:  # the drawing is stale: show the draft as it is, keep what can be undone
        return _conflict(request, version, exc)
    except (ValidationError, PermissionDenied) as exc:
        if isinstance(exc, ValidationError) and not hasattr(exc, "error_dict"):
            stack = []  # the draft moved on: older changes cannot be undone either
        stacks[str(version.pk)] = stack
        request.session[UNDO_KEY] = stacks
        return _refusal(exc, "undo")
    stacks[str(version.pk)] = stack
    request.session[UNDO_KEY] = stacks
    return _answer(request, version, f"Undone: {last['what']}")


# --------------------------------------------------------------------------- commands


def _text(data: dict, name: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    value = data.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError({name: f"{name} must be text"})
    if "\x00" in value or len(value) > limit:
        raise ValidationError({name: f"{name} must be text of at most {limit} characters, without NUL"})
    if required and not value.strip():
        raise ValidationError({name: f"{name} is required"})
    return value.strip()


def _number(data: dict, name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError({name: f"{name} must be a number (canvas pixels)"})
    return value


def _id(data: dict, name: str) -> str:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or len(str(value)) > 18:
        raise ValidationError({name: f"{name} must be an id (digits 0-9)"})
    return str(value)


def _positions(data: dict, *, required: bool = False) -> dict | None:
    value = data.get("positions")
    if value is None and not required:
        return None
    if not isinstance(value, dict) or not value:
        raise ValidationError({"positions": "positions must be an object of step key -> [x, y]"})
    if len(value) > MAX_POSITIONS:
        raise ValidationError({"positions": f"at most {MAX_POSITIONS} steps can be placed at once"})
    return value


Change = Callable[[WorkflowVersion], Any]


def _add_step(data: dict, actor: Any, reason: str) -> tuple[Change, Callable[[Any], str]]:
    kind, x, y = _text(data, "kind"), _number(data, "x"), _number(data, "y")
    after, insert = _text(data, "after", required=False), data.get("insert") or ""
    if insert != drafts.START and insert:
        insert = _id(data, "insert")
    positions = _positions(data)
    return (lambda v: drafts.step_add(version=v, kind=kind, x=x, y=y, after=after, insert=insert,
                                      positions=positions, actor=actor, reason=reason),
            lambda step: f"added {step.key} ({step.kind})")


def _place(data: dict, actor: Any, reason: str):
    positions = _positions(data, required=True)
    return (lambda v: drafts.steps_place(version=v, positions=positions, actor=actor, reason=reason),
            lambda _: "moved " + ", ".join(sorted(positions))[:80])


def _connect(data: dict, actor: Any, reason: str):
    source, outcome, target = _text(data, "source"), _text(data, "outcome", required=False), _text(data, "target")
    return (lambda v: drafts.edge_connect(version=v, source=source, outcome=outcome, target=target, actor=actor,
                                          reason=reason),
            lambda _: f"connected {source} —{outcome or 'entry'}→ {target}")


def _relabel(data: dict, actor: Any, reason: str):
    edge, outcome = _id(data, "edge"), _text(data, "outcome")
    return (lambda v: drafts.edge_relabel(version=v, edge=edge, outcome=outcome, actor=actor, reason=reason),
            lambda found: f"{found.source.key} now leads to {found.target.key} when {outcome}")


def _disconnect(data: dict, actor: Any, reason: str):
    edge = _id(data, "edge")
    return (lambda v: drafts.edge_delete(version=v, edge=edge, actor=actor, reason=reason), lambda _: "edge deleted")


def _delete_step(data: dict, actor: Any, reason: str):
    step = _text(data, "step")
    return (lambda v: drafts.step_delete(version=v, step=step, actor=actor, reason=reason),
            lambda _: f"deleted {step} and its edges")


COMMANDS = {"add_step": _add_step, "place": _place, "connect": _connect, "relabel": _relabel,
            "disconnect": _disconnect, "delete_step": _delete_step}


@never_cache
def canvas_command(request: HttpRequest, pk: int) -> HttpResponse:
    """One change of a draft, as JSON; the answer is the new drawing (or what to fix)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    version = _version(request, pk)
    try:
        data = json_read_storable(request.body or b"{}")
    except JourneyError as exc:
        return _fail(exc.field or "body", f"{exc.message}; send JSON, e.g. {{\"op\": \"undo\", \"reason\": \"...\"}}")
    if not isinstance(data, dict):
        return _fail("body", "the request body must be a JSON object")
    try:
        op, reason = _text(data, "op"), _text(data, "reason", required=False, limit=MAX_REASON)
        loaded = _token(data.get("loaded"))
        if op == "undo":
            return _undo(request, version, reason, loaded)
        if op not in COMMANDS:
            return _fail("op", f"unknown op {op!r}; one of: undo, {', '.join(COMMANDS)}")
        change, describe = COMMANDS[op](data, request.user, reason)
        edit = drafts.draft_edit(version=version, actor=request.user, reason=reason, change=change, loaded=loaded)
    except DraftChanged as exc:
        return _conflict(request, version, exc)
    except (ValidationError, PermissionDenied) as exc:
        return _refusal(exc, "version")
    what = describe(edit.result)
    _undo_push(request, version, edit, what)
    return _answer(request, version, what[:1].upper() + what[1:], focus=getattr(edit.result, "key", ""))


# --------------------------------------------------------------------------- side panels (forms)


def _form_answer(request: HttpRequest, version: WorkflowVersion, form, template: str, context: dict,
                 save: Callable[[str, str], Any], what: str, loaded: Callable[[], str]) -> HttpResponse:
    """GET: the panel, with the token of what it shows (`loaded()`). POST: validate, save through
    the service (refused with a 409 when what the form was opened with changed since), answer
    with the new drawing (or a 400 naming the first field to fix, with the panel showing every
    error and still the token it was opened with)."""
    editable = version_canvas_editable(user=request.user, version=version)
    context = {**context, "form": form, "version": version, "editable": editable}
    if request.method == "GET":
        return render(request, template, {**context, "loaded": loaded()})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    if not editable:
        return _fail("version", f"v{version.number} is {version.stage.replace('_', ' ')}: read-only on the canvas", status=403)
    try:
        token = _token(request.POST.get("loaded"))
    except ValidationError as exc:
        return _refusal(exc, "loaded")
    context["loaded"] = token
    reason = (request.POST.get("change_reason") or "").strip()
    if not reason or "\x00" in reason or len(reason) > MAX_REASON:
        form.is_valid()  # show the form's own errors too
        return _fail("reason", "say why you are changing this draft (it is recorded in the history), in at most "
                     f"{MAX_REASON} characters", panel=render_to_string(template, context, request))
    if form.is_valid():
        try:
            edit = drafts.draft_edit(version=version, actor=request.user, reason=reason,
                                     change=lambda v: save(reason, token))
        except DraftChanged as exc:
            return _conflict(request, version, exc, drawing=False)
        except PermissionDenied as exc:
            return _fail("version", str(exc), status=403)
        except ValidationError as exc:
            for key, texts in (exc.message_dict if hasattr(exc, "error_dict") else {None: exc.messages}).items():
                field = form.field_for(key, texts[0]) if key and key != "__all__" else None
                for text in texts:
                    form.add_error(field, text if field or not key or key == "__all__" else f"{key}: {text}")
        else:
            _undo_push(request, version, edit, what)
            version.refresh_from_db()
            context["loaded"] = loaded()
            return _answer(request, version, f"Saved {what}", panel=render_to_string(template, context, request))
    field, texts = next(iter(form.errors.items()))
    return _fail("form" if field == "__all__" else field, str(texts[0]),
                 panel=render_to_string(template, context, request))


def _step_of(request: HttpRequest, version: WorkflowVersion, step_pk: int) -> Step | JsonResponse:
    step = Step.objects.filter(version=version, pk=step_pk).first()
    if step is None and request.method == "POST":  # deleted while its form was open: said in the status line
        return _fail("step", "this step is no longer in the draft (deleted in another tab or by another editor): "
                     "nothing was saved", status=404)
    if step is None:
        raise Http404("no such step in this version")
    return step


@never_cache
def canvas_step(request: HttpRequest, pk: int, step_pk: int) -> HttpResponse:
    """A step's own form in the side panel (the rule editor and template preview included),
    with its connections and delete button."""
    version = _version(request, pk)
    step = _step_of(request, version, step_pk)
    if isinstance(step, JsonResponse):
        return step
    kind = STEP_KINDS.get(step.kind)
    context = {"step": step, "kind_label": kind.label if kind else f"{step.kind} (unknown kind)", "others": list(version.steps.exclude(pk=step.pk).order_by("key").values_list("key", flat=True)),
               "connections": {e.outcome: e.target.key for e in step.out_edges.select_related("target")}}
    try:
        form_class = step_form_class(step.kind)
    except ValidationError as exc:  # a kind no longer registered: the step can still be deleted
        context["unknown_kind"] = " ".join(exc.messages)
        if request.method == "POST":
            return _fail("kind", context["unknown_kind"])
        return render(request, "console/_canvas_step.html", {
            **context, "version": version, "editable": version_canvas_editable(user=request.user, version=version)})
    form = form_class(request.POST if request.method == "POST" else None, version=version, step=step)
    form.fields.pop("after", None)  # connections are drawn (or chosen below the form)
    context["outcomes"] = _outcomes_of(step, context["connections"])

    def save(reason: str, loaded: str) -> Step:
        data = form.cleaned_data
        return drafts.step_form_save(version=version, step=step, key=data["key"], kind=step.kind,
                                     name=data.get("name", ""), config=form.config, actor=request.user, reason=reason,
                                     loaded=loaded)

    return _form_answer(request, version, form, "console/_canvas_step.html", context, save,
                        f"step {form.data.get('key') or step.key}", lambda: drafts.step_fingerprint(step=step))


def _outcomes_of(step: Step, connections: dict) -> list[dict]:
    kind = STEP_KINDS.get(step.kind)
    try:
        names = list(kind.outcomes(step.config or {})) if kind else []
    except (ValidationError, LookupError, TypeError, ValueError):
        names = []
    names += [o for o in connections if o not in names]
    return [{"name": o, "target": connections.get(o, "")} for o in names]


@never_cache
def canvas_settings(request: HttpRequest, pk: int) -> HttpResponse:
    """The trigger and entry settings in the side panel (the start node)."""
    version = _version(request, pk)
    form = VersionSettingsForm(request.POST if request.method == "POST" else None, version=version)

    def save(reason: str, loaded: str) -> WorkflowVersion:
        return drafts.version_settings_save(version=version, values=form.values(), actor=request.user, reason=reason,
                                            loaded=loaded)

    def loaded() -> str:
        return drafts.settings_fingerprint(version=WorkflowVersion.objects.get(pk=version.pk))

    return _form_answer(request, version, form, "console/_canvas_settings.html", {}, save, "the trigger settings",
                        loaded)


def version_draft_from(request: HttpRequest, pk: int) -> HttpResponse:
    """A read-only version's "new draft from this version": copy it, open the copy's canvas."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    version = _version(request, pk)
    reason = (request.POST.get("reason") or "").strip() or f"new draft from v{version.number} (canvas)"
    try:
        draft = version_new_draft(version=version, actor=request.user, reason=reason)
    except (ValidationError, PermissionDenied) as exc:
        messages.error(request, " ".join(getattr(exc, "messages", [str(exc)])))
        return HttpResponseRedirect(reverse("console:version_graph", args=[version.pk]))
    messages.success(request, f"Draft v{draft.number} created from v{version.number}: change it on the canvas.")
    return HttpResponseRedirect(reverse("console:version_graph", args=[draft.pk]))

