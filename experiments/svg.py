"""Server-rendered SVG charts for the admin reports (no JavaScript, no CDN)."""

from __future__ import annotations

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
HOLDOUT_COLOUR = "#555555"


def colour(i: int, group: str) -> str:
    return HOLDOUT_COLOUR if group == "holdout" else PALETTE[i % len(PALETTE)]


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def conversion_chart(series: dict[str, list[dict]], *, width: int = 760, height: int = 300) -> SafeString:
    """Cumulative conversion rate per group and day with its Wilson interval as a shaded band."""
    if not series or not any(series.values()):
        return mark_safe('<p class="help">No exposures yet.</p>')
    left, right, top, bottom = 56, 150, 16, 36
    pw, ph = width - left - right, height - top - bottom
    days = next(iter(series.values()))
    n_days = len(days)
    # Scale to the rates, not to the very wide intervals of the first days (bands are clipped).
    top_rate = max((p["rate"] for pts in series.values() for p in pts if p["n"]), default=0.0)
    top_high = max((p["high"] for pts in series.values() for p in pts[len(pts) // 2 :] if p["n"]), default=0.0)
    ymax = min(1.0, max(0.01, top_rate * 1.5, top_high * 1.05))

    def x(i: int) -> float:
        return left + (pw * i / (n_days - 1) if n_days > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (1 - min(v, ymax) / ymax)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="exp-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="conversion over time per arm">'
    ]
    for k in range(5):
        v = ymax * k / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{_pct(v)}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">{escape(days[0]["day"])}</text>')
    parts.append(
        f'<text x="{left + pw}" y="{height - 8}" font-size="11" text-anchor="end">{escape(days[-1]["day"])}</text>'
    )
    for i, (group, points) in enumerate(series.items()):
        c = colour(i, group)
        live = [(j, p) for j, p in enumerate(points) if p["n"]]
        if not live:
            continue
        band = [f"{x(j):.1f},{y(p['high']):.1f}" for j, p in live] + [
            f"{x(j):.1f},{y(p['low']):.1f}" for j, p in reversed(live)
        ]
        parts.append(f'<polygon points="{" ".join(band)}" fill="{c}" fill-opacity="0.15" stroke="none"/>')
        line = " ".join(f"{x(j):.1f},{y(p['rate']):.1f}" for j, p in live)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="2"/>')
        for j, p in live:
            parts.append(
                f'<circle cx="{x(j):.1f}" cy="{y(p["rate"]):.1f}" r="2.5" fill="{c}"><title>{escape(group)} '
                f"{escape(p['day'])}: {_pct(p['rate'])} [{_pct(p['low'])}, {_pct(p['high'])}] "
                f"{p['x']}/{p['n']}</title></circle>"
            )
        last = live[-1][1]
        ly = top + 16 * i + 8
        parts.append(f'<rect x="{left + pw + 12}" y="{ly - 8}" width="10" height="10" fill="{c}"/>')
        parts.append(
            f'<text x="{left + pw + 26}" y="{ly + 1}" font-size="12">{escape(group)} {_pct(last["rate"])}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def funnel_chart(funnel, *, width: int = 760) -> SafeString:
    """One bar per step: share of entrants that reached it, drop-outs and median time from the previous step."""
    rows = funnel.rows
    if not funnel.entered:
        return mark_safe('<p class="help">No runs on this version yet.</p>')
    bar_h, gap, label_w = 22, 8, 220
    height = (bar_h + gap) * (len(rows) + 1) + 10
    pw = width - label_w - 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="exp-funnel" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="funnel">'
    ]
    entries = [("entered", "", funnel.entered, 0, None)] + [
        (r.step, r.kind, r.reached, r.dropped, r.median_from_previous_s) for r in rows
    ]
    for i, (name, kind, reached, dropped, median) in enumerate(entries):
        y0 = 5 + i * (bar_h + gap)
        w = pw * reached / funnel.entered
        label = f"{name} ({kind})" if kind else name
        parts.append(f'<text x="{label_w - 6}" y="{y0 + 15}" font-size="12" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y0}" width="{w:.1f}" height="{bar_h}" fill="#4a90d9"/>')
        text = f"{reached} ({_pct(reached / funnel.entered)})"
        if i:
            text += f" · dropped {dropped} · median {_duration(median)} from previous"
        parts.append(f'<text x="{label_w + 4}" y="{y0 + 15}" font-size="11" fill="#000">{escape(text)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def cohort_heatmap(table, *, cell_w: int = 120, cell_h: int = 26) -> SafeString:
    """Cohorts (rows) x arms (columns); darker = higher conversion, with rate and size in each cell."""
    if not table.cohorts:
        return mark_safe('<p class="help">No exposures yet.</p>')
    label_w, head_h = 150, 24
    width = label_w + cell_w * len(table.groups) + 10
    height = head_h + cell_h * len(table.cohorts) + 10
    rmax = max((c.rate for c in table.cells.values()), default=0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="exp-cohorts" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="cohort table">'
    ]
    for j, group in enumerate(table.groups):
        parts.append(
            f'<text x="{label_w + j * cell_w + cell_w / 2}" y="16" font-size="12" text-anchor="middle" '
            f'font-weight="bold">{escape(group)}</text>'
        )
    for i, cohort in enumerate(table.cohorts):
        y0 = head_h + i * cell_h
        parts.append(f'<text x="{label_w - 6}" y="{y0 + 17}" font-size="12" text-anchor="end">{escape(cohort)}</text>')
        for j, group in enumerate(table.groups):
            cell = table.cell(cohort, group)
            shade = 0.08 + 0.8 * (cell.rate / rmax) if cell.n else 0.0
            x0 = label_w + j * cell_w
            lo, hi = cell.interval
            parts.append(
                f'<rect x="{x0}" y="{y0}" width="{cell_w - 2}" height="{cell_h - 2}" fill="#2a7ab9" '
                f'fill-opacity="{shade:.2f}"><title>{escape(cohort)} / {escape(group)}: {cell.x}/{cell.n} '
                f"[{_pct(lo)}, {_pct(hi)}]</title></rect>"
            )
            text = f"{_pct(cell.rate)} (n={cell.n})" if cell.n else "-"
            parts.append(
                f'<text x="{x0 + cell_w / 2}" y="{y0 + 17}" font-size="11" text-anchor="middle" '
                f'fill="{"#fff" if shade > 0.55 else "#000"}">{escape(text)}</text>'
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))
