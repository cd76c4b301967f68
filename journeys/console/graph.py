"""A version as a graph: read (steps, edges, counts per step, what validation says about each
step) and drawn as SVG on the server: the trigger's start node, a box per step (its kind's
colour, what it does, counts per step), a port per outcome, labelled arrows, and for the canvas
the validation report on each step. The same drawing is read-only (live and in-review versions,
side-by-side review) and the canvas's surface (journeys/static/console/canvas.js adds dragging,
connecting and the side panel on top of it, and swaps in a new drawing after each change).

Positions are the canvas's pixels (Step.x/y), drawn as saved (small numbers typed by hand on the
version page, all within 50 of each other, are read as grid cells); when steps have none (or
share one) they are laid out in layers from the entry step.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Q
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from journeys.choices import OPEN_RUN_STATUSES, RunStatus, TriggerKind, VersionState
from journeys.engine.registry import STEP_KINDS
from journeys.console.selectors import CountWindow, version_recent_runs
from journeys.models import JourneyRun, Step, StepExecution, WorkflowVersion
from journeys.selectors import EDIT, user_can

# --------------------------------------------------------------------------- reading a version as a graph


@dataclass
class GraphNode:
    key: str
    kind: str
    name: str
    index: int  # position in the version's step inline (admin anchor "steps-<index>")
    id: int = 0
    kind_label: str = ""
    summary: str = ""  # what the step does, in its kind's words
    outcomes: list[str] = field(default_factory=list)
    x: float = 0
    y: float = 0
    layer: int = 0
    entered: int = 0
    waiting: int = 0
    converted: int = 0
    errors: int = 0
    is_entry: bool = False


@dataclass
class GraphEdge:
    source: str
    target: str
    outcome: str
    id: int = 0


@dataclass
class VersionGraph:
    version: WorkflowVersion
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    layout: str  # "saved" (the steps' x/y) or "layered" (computed)
    runs: dict = field(default_factory=dict)
    window: CountWindow = field(default_factory=CountWindow)



    @property
    def node_map(self) -> dict[str, GraphNode]:
        return {n.key: n for n in self.nodes}


def version_canvas_editable(*, user: Any, version: WorkflowVersion) -> bool:
    """The canvas edits drafts only (in review, approved, live: read-only, make a new draft), and
    only for someone who may edit the workflow."""
    return version.state == VersionState.DRAFT and not version.is_frozen and user_can(user, EDIT, version.workflow)


def version_issues(*, version: WorkflowVersion) -> tuple[dict[str, list[dict]], list[dict]]:
    """The validation report (`version_validate`) sorted by the step each message is about: for
    the canvas, which draws each step's issues on it and lists them all beside the drawing."""
    from journeys.services.workflows import version_validate

    report = version_validate(version=version)
    keys = sorted(version.steps.values_list("key", flat=True), key=len, reverse=True)  # "a_1" before "a"
    by_step: dict[str, list[dict]] = defaultdict(list)
    items = []
    for level, texts in (("error", report.errors), ("warning", report.warnings)):
        for text in texts:
            key = next((k for k in keys if text.startswith((f"step {k}:", f"step {k} "))), None)
            item = {"level": level, "step": key, "message": text[len(f"step {key}"):].lstrip(": ") if key else text,
                    "text": text}
            items.append(item)
            if key:
                by_step[key].append(item)
    return dict(by_step), items


def _layered_layout(nodes: list[GraphNode], edges: list[GraphEdge], entry: str) -> None:
    """Layer = shortest distance from the entry step (breadth first, so loops do not push nodes
    down forever); steps the entry cannot reach start new layers below. Within a layer, nodes
    are ordered by the mean position of their parents to keep edges from crossing."""
    children: dict[str, list[str]] = defaultdict(list)
    parents: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        children[e.source].append(e.target)
        parents[e.target].append(e.source)
    by_key = {n.key: n for n in nodes}
    layer: dict[str, int] = {}
    roots = [entry] if entry in by_key else []
    roots += [n.key for n in nodes if not parents[n.key] and n.key not in roots]
    roots += [n.key for n in nodes if n.key not in roots]
    for root in roots:
        if root in layer:
            continue
        start = (max(layer.values()) + 1) if layer else 0
        queue = deque([(root, start)])
        layer[root] = start
        while queue:
            key, depth = queue.popleft()
            for child in children[key]:
                if child not in layer:
                    layer[child] = depth + 1
                    queue.append((child, depth + 1))
    rows: dict[int, list[GraphNode]] = defaultdict(list)
    for n in nodes:
        n.layer = layer[n.key]
        rows[n.layer].append(n)
    order: dict[str, float] = {}
    for depth in sorted(rows):
        row = rows[depth]
        def weight(n: GraphNode) -> float:
            placed = [order[p] for p in parents[n.key] if p in order]
            return sum(placed) / len(placed) if placed else n.index
        row.sort(key=weight)
        for i, n in enumerate(row):
            order[n.key] = i - (len(row) - 1) / 2
            n.x, n.y = order[n.key], depth


def _kind_reading(step: Step) -> dict:
    """The step as its kind reads it: label, one-line summary, outcomes (a kind no longer
    registered, or a config it cannot read yet, reads as little as it can)."""
    kind = STEP_KINDS.get(step.kind)
    if kind is None:
        return {"kind_label": f"{step.kind} (unknown kind)", "summary": "", "outcomes": []}
    reading = {"kind_label": kind.label, "summary": "", "outcomes": []}
    config = step.config or {}
    try:
        reading["summary"] = kind.summary(config)
    except (ValidationError, LookupError, TypeError, ValueError, AttributeError):
        pass
    try:
        reading["outcomes"] = list(kind.outcomes(config))
    except (ValidationError, LookupError, TypeError, ValueError, AttributeError):
        pass
    return reading


# PostgreSQL: the window's runs (a range of run_version_created_idx), then each run's step
# executions by its index (LATERAL ... OFFSET 0 keeps the probe per run). Joined plainly, the
# planner hashed every step execution ever written once the window held a few thousand runs.
_STEP_COUNTS = f"""
SELECT se.step_key, COUNT(DISTINCT r.id), COUNT(DISTINCT r.id) FILTER (WHERE r.converted_at IS NOT NULL),
       COUNT(*) FILTER (WHERE se.error <> '' OR se.outcome = 'error')
FROM {JourneyRun._meta.db_table} r
CROSS JOIN LATERAL (SELECT step_key, error, outcome FROM {StepExecution._meta.db_table}
                    WHERE run_id = r.id OFFSET 0) se
WHERE r.version_id = %s AND r.created_at >= %s
GROUP BY se.step_key
"""


def _step_counts(*, version: WorkflowVersion, since: datetime) -> dict[str, dict]:
    """step key -> runs that reached it (entered), of them those that converted, visits with an
    error: over the version's runs started since `since`."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_STEP_COUNTS, [version.pk, since])
            return {key: {"entered": entered, "converted": converted, "errors": errors}
                    for key, entered, converted, errors in cursor.fetchall()}
    executions = StepExecution.objects.filter(run__version=version, run__created_at__gte=since)
    return {row["step_key"]: row for row in executions.values("step_key").annotate(
        entered=Count("run", distinct=True),
        converted=Count("run", distinct=True, filter=Q(run__converted_at__isnull=False)),
        errors=Count("id", filter=~Q(error="") | Q(outcome="error")),
    )}


def version_graph(*, version: WorkflowVersion, now: datetime | None = None) -> VersionGraph:
    """The version as nodes and labelled edges with per-step counts, laid out for drawing.

    Counts, over the version's recent runs (`version_recent_runs`: the page says which): entered =
    runs that reached the step; converted = runs through the step that reached the goal; errors =
    visits that failed or noted an error. Waiting = runs waiting at it now (all of them: the
    open-runs index holds only open runs).
    """
    steps = list(Step.objects.filter(version=version).order_by("y", "x", "id"))
    nodes = [GraphNode(key=s.key, kind=s.kind, name=s.name, index=i, x=s.x, y=s.y, is_entry=s.key == version.entry_step,
                       id=s.pk, **_kind_reading(s)) for i, s in enumerate(steps)]
    by_pk = {s.pk: s.key for s in steps}
    edges = [GraphEdge(source=by_pk[e.source_id], target=by_pk[e.target_id], outcome=e.outcome, id=e.pk)
             for e in version.edges.all().order_by("source__y", "source__x", "outcome")
             if e.source_id in by_pk and e.target_id in by_pk]
    positions = {(s.x, s.y) for s in steps}
    layout = "saved" if len(steps) > 1 and len(positions) == len(steps) else "layered"
    if layout == "layered":
        _layered_layout(nodes, edges, version.entry_step or (steps[0].key if steps else ""))
    window = version_recent_runs(version=version, now=now)
    recent = JourneyRun.objects.filter(version=version, created_at__gte=window.since)
    stats = _step_counts(version=version, since=window.since)
    open_runs = list(  # run_open_idx (the workflow leads it): every open run, however old
        JourneyRun.objects.filter(workflow_id=version.workflow_id, version=version, status__in=OPEN_RUN_STATUSES)
        .values_list("status", "current_step").annotate(n=Count("*")).order_by()
    )
    waiting = {step: n for status, step, n in open_runs if status == RunStatus.WAITING}
    for n in nodes:
        row = stats.get(n.key, {})
        n.entered, n.converted, n.errors = row.get("entered", 0), row.get("converted", 0), row.get("errors", 0)
        n.waiting = waiting.get(n.key, 0)
    runs = dict(recent.exclude(status__in=OPEN_RUN_STATUSES).values_list("status").annotate(n=Count("*"))
                .values_list("status", "n").order_by())
    for status in OPEN_RUN_STATUSES:
        runs[status] = sum(n for s, _, n in open_runs if s == status)
    runs["converted"] = recent.filter(converted_at__isnull=False).count()
    return VersionGraph(version=version, nodes=nodes, edges=edges, layout=layout, runs=runs, window=window)


# --------------------------------------------------------------------------- drawing

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 180, 84, 40, 70, 30
START_W, START_H = 240, 40
GRID_SPAN = 50  # saved positions all within this span are grid cells (typed by hand), not pixels


def _colour(kind: str) -> str:
    """The fill of a step's box: its kind's palette colour (white for a kind no longer registered)."""
    registered = STEP_KINDS.get(kind)
    return registered.palette.colour if registered else "#ffffff"


def trigger_summary(version) -> str:
    """The trigger in words, for the start node."""
    config, event = version.trigger_settings, version.trigger_event
    kind = version.trigger_kind
    if kind == TriggerKind.INACTIVITY:
        return f"{event or '?'} not followed by {config.get('followed_by') or '?'} within {config.get('within') or '?'}"
    if kind == TriggerKind.ATTRIBUTE_CHANGE:
        return f"profile.{config.get('attribute') or '?'} changes"
    if kind == TriggerKind.SEGMENT_ENTRY:
        return f"enters segment: {config.get('rule') or '?'}"
    if kind == TriggerKind.DATE_ATTRIBUTE:
        return f"on profile.{config.get('attribute') or '?'} at {config.get('at', '09:00')}"
    if kind == TriggerKind.SCHEDULE:
        return (f"cron {config.get('cron') or '?'} ({config.get('timezone') or 'UTC'})"
                + (f" over {config['segment']}" if config.get("segment") else ""))
    return f"{event or '?'} received" + (" (filtered)" if config.get("filter") else "")


def positions(graph: VersionGraph) -> dict[str, tuple[float, float]]:
    """Top-left corner of each step's box in drawing pixels (below the start node)."""
    top = PAD + START_H + GAP_Y
    if graph.layout == "saved":
        xs, ys = [n.x for n in graph.nodes], [n.y for n in graph.nodes]
        grid = max(max(xs) - min(xs), max(ys) - min(ys)) < GRID_SPAN
        sx, sy = (NODE_W + GAP_X, NODE_H + GAP_Y) if grid else (1, 1)
        return {n.key: (PAD + (n.x - min(xs)) * sx, top + (n.y - min(ys)) * sy) for n in graph.nodes}
    low = min((n.x for n in graph.nodes), default=0)
    return {n.key: (PAD + (n.x - low) * (NODE_W + GAP_X), top + n.y * (NODE_H + GAP_Y)) for n in graph.nodes}


def _ports(node: GraphNode, used: list[str]) -> list[str]:
    """The node's outcomes, then outcomes only an (invalid) edge still uses."""
    return [*node.outcomes, *(o for o in used if o not in node.outcomes)]


def port_point(x: float, y: float, i: int, n: int) -> tuple[float, float]:
    return x + NODE_W * (i + 1) / (n + 1), y + NODE_H


def _edge_path(p0: tuple[float, float], target: tuple[float, float]) -> tuple[tuple[float, ...], tuple[float, float]]:
    """A curve from a port (bottom of its box) to the top of the target box, or, for a target
    that is not below, around the right-hand side into its right edge. Returns the curve's
    points and the middle (where the label goes)."""
    tx, ty = target
    if ty > p0[1] + 10:
        p3 = (tx + NODE_W / 2, ty)
        p1, p2 = (p0[0], p0[1] + GAP_Y / 1.5), (p3[0], p3[1] - GAP_Y / 1.5)
    else:
        p3 = (tx + NODE_W, ty + NODE_H / 2)
        bulge = max(p0[0], p3[0]) + 70
        p1, p2 = (bulge, p0[1] + GAP_Y / 2), (bulge, p3[1])
    mid = ((p0[0] + 3 * p1[0] + 3 * p2[0] + p3[0]) / 8, (p0[1] + 3 * p1[1] + 3 * p2[1] + p3[1]) / 8)
    return (*p0, *p1, *p2, *p3), mid


def _r(value: float) -> str:
    return f"{value:.0f}"


def svg_graph(graph: VersionGraph, *, step_url: str, runs_url: str, marks: dict[str, str] | None = None,
              issues: dict[str, list[dict]] | None = None) -> SafeString:
    """The version drawn as boxes and labelled arrows; each box links to the step in the admin.
    `issues` (the canvas) marks each step with what validation says about it."""
    pos = positions(graph)
    marks = marks or {}
    used: dict[str, list[str]] = {}
    for e in graph.edges:
        used.setdefault(e.source, []).append(e.outcome)
    ports = {n.key: _ports(n, used.get(n.key, [])) for n in graph.nodes}
    entry = graph.node_map.get(graph.version.entry_step)
    start_x = (pos[entry.key][0] + NODE_W / 2 - START_W / 2) if entry else PAD
    width = max([x for x, _ in pos.values()] + [start_x, PAD]) + NODE_W + PAD + 110
    height = max([y for _, y in pos.values()] + [PAD]) + NODE_H + PAD + 20
    if issues is not None:  # the canvas: room to drop new steps beside and below the drawing
        width, height = max(width, 900), max(height + NODE_H + GAP_Y, 480)
    parts = [format_html(
        '<g class="start" data-key="start" data-trigger="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="20"/>'
        '<text x="{}" y="{}" text-anchor="middle" class="start-title">Start · {}</text>'
        '<text x="{}" y="{}" text-anchor="middle" class="start-trigger">{}</text><title>{}</title></g>',
        graph.version.trigger_kind, _r(start_x), PAD, START_W, START_H, _r(start_x + START_W / 2), PAD + 16,
        graph.version.get_trigger_kind_display(), _r(start_x + START_W / 2), PAD + 31,
        _clip(trigger_summary(graph.version), 40), trigger_summary(graph.version))]
    if entry:
        points, _ = _edge_path((start_x + START_W / 2, PAD + START_H), pos[entry.key])
        parts.append(format_html('<g class="edge start-edge" data-edge="start"><path d="M{},{} C{},{} {},{} {},{}" '
                                 'marker-end="url(#arrow)"/></g>', *map(_r, points)))
    for e in graph.edges:
        sx, sy = pos[e.source]
        i = ports[e.source].index(e.outcome)
        points, (mx, my) = _edge_path(port_point(sx, sy, i, len(ports[e.source])), pos[e.target])
        parts.append(format_html(
            '<g class="edge" data-edge="{}" data-source="{}" data-target="{}" data-outcome="{}">'
            '<path d="M{},{} C{},{} {},{} {},{}" marker-end="url(#arrow)"/>'
            '<rect x="{}" y="{}" width="{}" height="16" rx="3" class="edge-label-bg"/>'
            '<text x="{}" y="{}" text-anchor="middle" class="edge-label">{}</text></g>',
            e.id, e.source, e.target, e.outcome, *map(_r, points), _r(mx - (len(e.outcome) * 3.5 + 6)),
            _r(my - 9), len(e.outcome) * 7 + 12, _r(mx), _r(my + 3), e.outcome))
    for n in graph.nodes:
        parts.append(_node(n, pos[n.key], ports[n.key], set(used.get(n.key, [])), marks.get(n.key, ""),
                           None if issues is None else issues.get(n.key, []), step_url, runs_url))
    return format_html(
        '<svg class="workflow-graph" role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}">'
        '<title>{t}</title><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>{p}</svg>',
        w=_r(width), h=_r(height), t=str(graph.version), p=mark_safe("".join(parts)))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _node(n: GraphNode, xy: tuple[float, float], ports: list[str], connected: set[str], mark: str,
          issues: list[dict] | None, step_url: str, runs_url: str) -> SafeString:
    x, y = xy
    errors = [i for i in issues or [] if i["level"] == "error"]
    checked = "" if issues is None else "invalid" if errors else "warned" if issues else ""
    classes = " ".join(c for c in ("node", "entry" if n.is_entry else "", "has-errors" if n.errors else "", mark,
                                   checked) if c)
    port_tags = format_html_join("", (
        '<g class="port{}" data-step="{}" data-outcome="{}"><title>{}</title>'
        '<rect x="{}" y="{}" width="{}" height="14" rx="7"/><text x="{}" y="{}" text-anchor="middle">{}</text></g>'),
        ((" free" if o not in connected else "", n.key, o,
          f"outcome {o}" + ("" if o in connected else ": leads nowhere yet (drag it onto a step, or drop a kind here)"),
          _r(px - len(o) * 3.3 - 6), _r(py - 7), _r(len(o) * 6.6 + 12), _r(px), _r(py + 4), o)
         for i, o in enumerate(ports) for px, py in [port_point(x, y, i, len(ports))]))
    badge = ""
    if issues:
        badge = format_html(
            '<g class="issue-badge {}"><circle cx="{}" cy="{}" r="9"/><text x="{}" y="{}" text-anchor="middle">{}</text>'
            '<title>{}</title></g>', "error" if errors else "warning", _r(x + NODE_W - 4), _r(y + 4),
            _r(x + NODE_W - 4), _r(y + 8), len(issues), "\n".join(i["message"] for i in issues))
    label = n.name or n.key
    return format_html(
        '<g class="{}" data-key="{}" data-entered="{}" data-waiting="{}" data-converted="{}" data-errors="{}">'
        '<a href="{}#steps-{}"><title>{} ({}): {}</title>'
        '<rect x="{}" y="{}" width="{}" height="{}" rx="8" fill="{}"/>'
        '<text x="{}" y="{}" class="node-title">{}</text>'
        '<text x="{}" y="{}" class="node-kind">{}{}</text>'
        '<text x="{}" y="{}" class="node-summary">{}</text></a>'
        '<a href="{}&amp;status__exact=waiting&amp;current_step={}"><title>runs waiting at {}</title>'
        '<text x="{}" y="{}" class="node-counts">in {} · wait {} · conv {} · err {}</text></a>{}{}</g>',
        classes, n.key, n.entered, n.waiting, n.converted, n.errors,
        step_url, n.index, n.key, n.kind, n.summary or "open the step",
        _r(x), _r(y), NODE_W, NODE_H, _colour(n.kind),
        _r(x + 10), _r(y + 19), _clip(label, 24),
        _r(x + 10), _r(y + 35), n.kind, " · entry" if n.is_entry else "",
        _r(x + 10), _r(y + 51), _clip(n.summary, 28),
        runs_url, n.key, n.key,
        _r(x + 10), _r(y + 67), n.entered, n.waiting, n.converted, n.errors, port_tags, badge)


def graph_data(graph: VersionGraph, *, issues: dict[str, list[dict]] | None = None) -> dict[str, Any]:
    """What the canvas script needs beside the drawing: each step with its drawn position,
    outcomes and issues, each edge, and the start node."""
    pos = positions(graph)
    return {
        "version": graph.version.pk,
        "entry": graph.version.entry_step,
        "nodes": [{"key": n.key, "id": n.id, "kind": n.kind, "label": n.kind_label, "name": n.name,
                   "summary": n.summary, "outcomes": n.outcomes, "x": round(pos[n.key][0]), "y": round(pos[n.key][1]),
                   "w": NODE_W, "h": NODE_H, "issues": (issues or {}).get(n.key, [])} for n in graph.nodes],
        "edges": [{"id": e.id, "source": e.source, "target": e.target, "outcome": e.outcome} for e in graph.edges],
    }


def _step_fingerprints(version) -> dict[str, str]:
    return {s.key: hashlib.sha256(json.dumps([s.kind, s.name, s.config], sort_keys=True, default=str).encode()).hexdigest()
            for s in Step.objects.filter(version=version)}


def compare_marks(old, new) -> tuple[dict[str, str], dict[str, str]]:
    """CSS marks for side-by-side review: steps removed from / added to / changed in the newer version."""
    a, b = _step_fingerprints(old), _step_fingerprints(new)
    old_marks = {k: "removed" for k in a if k not in b} | {k: "changed" for k in a if k in b and a[k] != b[k]}
    new_marks = {k: "added" for k in b if k not in a} | {k: "changed" for k in b if k in a and a[k] != b[k]}
    return old_marks, new_marks

