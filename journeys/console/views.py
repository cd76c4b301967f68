"""Operations console pages: the ops home dashboard (with its JSON feed) and the workflow graph.

Views stay thin: `journeys.console.selectors` reads, these functions draw small SVG charts on
the server (no chart library, nothing fetched from the internet) and render templates.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import (
    Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse, StreamingHttpResponse,
)
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache

from journeys.choices import VersionState
from journeys.console.canvas import canvas_context
from journeys.console.graph import (
    VersionGraph,
    compare_marks,
    svg_graph,
    version_canvas_editable,
    version_graph,
)
from journeys.console.selectors import COUNT_WINDOW, dashboard_summary, version_for_user, workflow_messages_for
from journeys.selectors import EDIT, user_can, user_can_view_dashboard

DEFAULT_REFRESH_S = 15
BREAKER_COLOURS = {"closed": "#2e7d32", "half_open": "#ef6c00", "open": "#c62828"}
SERIES_COLOURS = {"sent": "#2e7d32", "suppressed": "#9e9e9e", "failed": "#c62828", "bounced": "#8e24aa",
                  "customer": "#417690",
                  "product": "#b0bec5"}
SLA_COLOURS = {"breached": "#c62828", "due_15m": "#ef6c00", "due_1h": "#f9a825", "on_track": "#2e7d32",
               "answered": "#78909c"}

# --------------------------------------------------------------------------- small SVG charts


def svg_stacked(rows: list[dict], keys: tuple[str, ...], *, title: str, width: int = 360, height: int = 90) -> SafeString:
    """Stacked bars (one per row, a segment per key) with a legend-free tooltip per segment."""
    totals = [sum(r[k] for k in keys) for r in rows]
    top = max(totals) if totals and max(totals) > 0 else 1
    step = (width - 30) / max(len(rows), 1)
    parts = []
    for i, row in enumerate(rows):
        base = height - 14
        for key in keys:
            h = row[key] / top * (height - 24)
            if h <= 0:
                continue
            base -= h
            parts.append(format_html('<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}: {}</title></rect>',
                                     f"{30 + i * step:.1f}", f"{base:.1f}", f"{max(step - 1, 1):.1f}", f"{h:.1f}",
                                     SERIES_COLOURS.get(key, "#417690"), row["label"], key, row[key]))
    ticks = format_html('<text x="0" y="12" class="axis">{}</text><text x="0" y="{}" class="axis">0</text>'
                        '<text x="30" y="{}" class="axis">{}</text><text x="{}" y="{}" class="axis" text-anchor="end">{}</text>',
                        top, height - 14, height - 2, rows[0]["label"] if rows else "", width, height - 2,
                        rows[-1]["label"] if rows else "")
    return format_html('<svg class="chart" role="img" viewBox="0 0 {} {}" width="{}" height="{}"><title>{}</title>{}{}</svg>',
                       width, height, width, height, title, mark_safe("".join(parts)), ticks)


def svg_hbars(items: list[dict], *, title: str, colours: dict[str, str], width: int = 360) -> SafeString:
    """Horizontal bars: one labelled row per item ({key, label, n})."""
    top = max([i["n"] for i in items] + [1])
    row_h = 18
    height = row_h * len(items) + 4
    rows = format_html_join(
        "", '<text x="0" y="{}" class="axis">{}</text><rect x="150" y="{}" width="{}" height="12" fill="{}">'
            '<title>{}: {}</title></rect><text x="{}" y="{}" class="axis">{}</text>',
        ((i * row_h + 13, it["label"], i * row_h + 3, f"{it['n'] / top * (width - 190):.1f}",
          colours.get(it["key"], "#417690"), it["label"], it["n"], f"{155 + it['n'] / top * (width - 190):.1f}",
          i * row_h + 13, it["n"]) for i, it in enumerate(items)),
    )
    return format_html('<svg class="chart" role="img" viewBox="0 0 {} {}" width="{}" height="{}"><title>{}</title>{}</svg>',
                       width, height, width, height, title, rows)


# --------------------------------------------------------------------------- dashboard


def _refresh_seconds(request: HttpRequest) -> int:
    try:
        return max(1, min(int(request.GET.get("refresh", DEFAULT_REFRESH_S)), 300))
    except ValueError:
        return DEFAULT_REFRESH_S


def _dashboard_context(request: HttpRequest) -> dict[str, Any]:
    if not user_can_view_dashboard(request.user):
        raise PermissionDenied
    data = dashboard_summary(user=request.user)
    per_minute = data["events"]["per_minute"]
    charts = {"events": svg_stacked([{"label": b["label"], "customer": b["n"], "product": b["product"]}
                                     for b in per_minute], ("customer", "product"),
                                    title="events received per minute, last 30 minutes: from customers' apps "
                                          "and pipelines, and recorded by the product itself")}
    if data["deliveries"] is not None:
        charts["deliveries"] = svg_stacked(data["deliveries"]["hourly"], ("sent", "suppressed", "failed", "bounced"),
                                           title="messages per hour, last 24 hours")
    if data["cases"] is not None:
        charts["cases"] = svg_hbars(data["cases"]["buckets"], title="open cases by SLA", colours=SLA_COLOURS)
    return {"d": data, "charts": charts, "breaker_colours": BREAKER_COLOURS}


def _metrics(data: dict) -> dict:
    """The dashboard's numbers as plain JSON (for the page's own checks and for scripts)."""
    queue = data["queue"]
    return {
        "live_workflows": data["live_workflows"],
        "paused_workflows": data["paused_workflows"],
        "workflows": {w["name"]: {"status": w["status"], "active": w["active"], "waiting": w["waiting"],
                                  "messages": _messages_json(w["messages"])} for w in data["workflows"]},
        "events_last_minute": data["events"]["last_minute"],
        "events_per_minute": [b["n"] for b in data["events"]["per_minute"]],
        "product_events_last_minute": data["events"]["product_last_minute"],
        "product_events_per_minute": [b["product"] for b in data["events"]["per_minute"]],
        "runs": data["runs"],
        "deliveries": data["deliveries"]["totals"] if data["deliveries"] else None,
        "circuits": {c["name"]: c["state"] for c in data["circuits"]} if data["circuits"] is not None else None,
        "queue": {**queue, "oldest_pending_at": queue["oldest_pending_at"].isoformat() if queue["oldest_pending_at"] else None},
        "quarantine": data["quarantine"],
        "cases": ({"total": data["cases"]["total"], **{b["key"]: b["n"] for b in data["cases"]["buckets"]}}
                  if data["cases"] else None),
    }


def _messages_json(messages: dict | None) -> dict | None:
    if messages is None:
        return None
    return {**messages, "held_by": [{**h, "until": h["until"].isoformat() if h["until"] else None}
                                    for h in messages["held_by"]]}


@never_cache
def dashboard(request: HttpRequest) -> HttpResponse:
    """The ops home: health of the whole system on one page, refreshed in place."""
    context = {**admin.site.each_context(request), **_dashboard_context(request), "title": "Operations dashboard",
               "refresh_s": _refresh_seconds(request)}
    return render(request, "console/dashboard.html", context)


@never_cache
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """The dashboard's panels (server-rendered HTML with the SVG charts) and its numbers, as JSON."""
    context = _dashboard_context(request)
    html = render_to_string("console/_dashboard.html", context, request=request)
    now = context["d"]["now"]
    return JsonResponse({"generated_at": now.isoformat(), "generated_label": f"{now:%H:%M:%S} UTC",
                         "html": html, "metrics": _metrics(context["d"])})


# --------------------------------------------------------------------------- workflow graph

def _panel(graph: VersionGraph, marks: dict[str, str] | None = None) -> dict:
    version = graph.version
    step_url = reverse("admin:journeys_workflowversion_change", args=[version.pk])
    runs_url = reverse("admin:journeys_journeyrun_changelist") + f"?version__id__exact={version.pk}"
    return {"graph": graph, "version": version, "svg": svg_graph(graph, step_url=step_url, runs_url=runs_url, marks=marks),
            "admin_url": step_url, "runs_url": runs_url}


@never_cache
def version_graph_view(request: HttpRequest, pk: int) -> HttpResponse:
    """A version as a graph with counts per step; `?compare=<version id>` puts another version beside it."""
    version = version_for_user(user=request.user, pk=pk)
    if version is None:
        raise Http404("no such version, or not yours to see")
    if bad := _bad_parameter(request.GET, ids=("compare",)):
        return HttpResponseBadRequest(bad[1], content_type="text/plain; charset=utf-8")
    other = None
    if request.GET.get("compare"):
        other = version_for_user(user=request.user, pk=int(request.GET["compare"]))
        if other is not None and other.workflow_id != version.workflow_id:
            other = None
    panels = []
    if other is None:
        panels.append(_panel(version_graph(version=version)))
    else:
        old, new = sorted((version, other), key=lambda v: v.number)
        old_marks, new_marks = compare_marks(old, new)
        panels = [_panel(version_graph(version=old), old_marks), _panel(version_graph(version=new), new_marks)]
    versions = list(version.workflow.versions.order_by("-number"))
    context = {**admin.site.each_context(request), "title": f"Graph of {version}", "version": version,
               "workflow": version.workflow, "panels": panels, "versions": versions, "other": other,
               "may_draft": version.state != VersionState.DRAFT and user_can(request.user, EDIT, version.workflow),
               "count_window_days": COUNT_WINDOW.days}
    if other is None and version_canvas_editable(user=request.user, version=version):
        context["canvas"] = canvas_context(request, version)
        context["is_nav_sidebar_enabled"] = False  # the drawing needs the width
    elif other is None:  # a version that ran: its messages, and its workflow's now
        context["sending"] = workflow_messages_for(version=version)
    return render(request, "console/graph.html", context)


# --------------------------------------------------------------------------- step editor helpers


def _bad_parameter(data, *, ids: tuple[str, ...] = (), texts: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The first parameter that cannot be used, with why: an id that is not plain digits 0-9
    (`str.isdigit` accepts '²', which `int` refuses) or text with a NUL character (PostgreSQL
    stores and compares none). None when every parameter is usable; an empty id is no id."""
    for name in ids:
        value = data.get(name, "")
        if value and not re.fullmatch(r"[0-9]+", value):
            return name, f"{name} must be an id (digits 0-9), not {value[:40]!r}"
    for name in texts:
        if "\x00" in data.get(name, ""):
            return name, f"{name} contains a NUL character (\\u0000)"
    return None


@never_cache
def rule_check(request: HttpRequest) -> JsonResponse:
    """Staff-only: check a rule with the real rule checks while it is typed (GET or POST `rule`,
    optional `version` and `event` for attribute warnings, `profile=1` for a rule read from the
    profile alone: a segment or a stage); 400 naming a parameter that cannot be used."""
    from journeys.console.selectors import rule_diagnose
    from journeys.selectors import VIEW, user_can

    data = request.POST if request.method == "POST" else request.GET
    if bad := _bad_parameter(data, ids=("version",), texts=("rule", "event")):
        return JsonResponse({"ok": False, "field": bad[0], "error": bad[1], "message": bad[1]}, status=400)
    version = None
    if data.get("version"):
        version = version_for_user(user=request.user, pk=int(data["version"]))
        if version is not None and not user_can(request.user, VIEW, version.workflow):
            version = None
    return JsonResponse(rule_diagnose(text=data.get("rule", ""), version=version, event=data.get("event", ""),
                                      profile_only=data.get("profile") == "1"))


@never_cache
def template_preview_view(request: HttpRequest) -> JsonResponse:
    """Staff-only: a send_message step's template rendered for a customer (or a sample); 403 for
    a customer the user may not view, 400 naming a parameter that cannot be used."""
    from journeys.console.selectors import template_preview

    data = request.POST if request.method == "POST" else request.GET
    if bad := _bad_parameter(data, texts=("template", "locale", "customer", "event")):
        return JsonResponse({"ok": False, "field": bad[0], "error": bad[1]}, status=400)
    result = template_preview(user=request.user, template=data.get("template", ""), locale=data.get("locale", ""),
                              customer_ref=data.get("customer", ""), event_name=data.get("event", ""))
    return JsonResponse(result, status=result.pop("status", 200 if result["ok"] else 400))


# --------------------------------------------------------------------------- background jobs


def _job(request: HttpRequest, pk: int):
    from journeys.console.selectors import jobs_for_user

    job = jobs_for_user(request.user).filter(pk=pk).first()
    if job is None:
        raise Http404("no such job")
    return job


JOB_PICKUP_WARNING_S = 30


def job_status(job) -> dict[str, Any]:
    """What the job page polls: status, progress and (once finished) where the result is."""
    from django.utils import timezone

    message = job.message
    if job.status == "queued" and (timezone.now() - job.created_at).total_seconds() > JOB_PICKUP_WARNING_S:
        message = "waiting for a worker: is the task cluster running (manage.py qcluster)?"
    return {"id": job.pk, "kind": job.kind, "status": job.status, "status_label": job.get_status_display(),
            "done": job.progress_done, "total": job.progress_total, "percent": job.percent,
            "message": message, "error": job.error, "finished": job.finished,
            "page": reverse("admin:journeys_job_change", args=[job.pk])}


@never_cache
def job_status_view(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(job_status(_job(request, pk)))


def job_download(request: HttpRequest, pk: int) -> HttpResponse:
    """The result as a file: the export, the replay report, or the import's rejected rows (CSV)."""
    from journeys.services.jobs import job_chunks, job_has_chunks, jobs_purge_exports
    from journeys.services.spreadsheets import spreadsheet_csv

    jobs_purge_exports()
    job = _job(request, pk)
    if job.status != "succeeded":
        raise Http404("the job has no result yet")
    if job.result.get("expired"):
        raise Http404("this export has expired (exports are kept for a day); start a new one")
    if job_has_chunks(job):  # streamed from its stored pieces: never the whole copy in memory
        response = StreamingHttpResponse(job_chunks(job), content_type="application/json")
        name = f"job-{job.pk}-{job.kind}.json"
    elif job.kind.startswith("import_"):  # errors quote the file's values: made safe for a spreadsheet
        columns = ["row", "field", "error"]
        rejected = [[row.get(c, "") for c in columns] for row in job.result.get("rejected_rows", [])]
        response = HttpResponse(spreadsheet_csv([columns, *rejected]), content_type="text/csv")
        name = f"job-{job.pk}-rejected.csv"
    else:
        body = job.result.get("export", job.result) if job.kind == "export" else job.result
        response = HttpResponse(json.dumps(body, indent=2, default=str), content_type="application/json")
        name = f"job-{job.pk}-{job.kind}.json"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
