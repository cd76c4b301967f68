"""Report rows for CSV export, and the workflow versions an experiment ran on."""

from __future__ import annotations

from datetime import datetime

from experiments.models import Assignment, Experiment
from experiments.services.analysis import experiment_analyze, experiment_timeseries
from experiments.services.reports import experiment_attribution, experiment_cohorts, version_funnel
from journeys.models import WorkflowVersion

SECTIONS = ("arms", "timeseries", "cohorts", "funnel", "attribution")


def experiment_versions(*, experiment: Experiment) -> list[WorkflowVersion]:
    """Versions whose runs were assigned in this experiment, else the attached workflow's published ones."""
    used = Assignment.objects.filter(experiment=experiment, version_id__isnull=False).values("version_id")
    versions = list(WorkflowVersion.objects.filter(pk__in=used).select_related("workflow")
                    .order_by("workflow__name", "number"))
    if not versions and experiment.workflow_id and not used.exists():
        versions = list(WorkflowVersion.objects.filter(workflow_id=experiment.workflow_id, published_at__isnull=False)
                        .select_related("workflow").order_by("workflow__name", "number"))
    return versions


def _f(v: float | None, digits: int = 6) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    """A p-value with 6 significant digits (1.08e-07, not 0.000000: a multiple-testing correction
    needs the order of the small ones)."""
    return "" if v is None else f"{v:.6g}"


def report_rows(
    *, experiment: Experiment, section: str, kind: str = "entry_week", trait: str = "", now: datetime | None = None
) -> list[list]:
    """Rows (header first) of one report section."""
    if section == "arms":
        a = experiment_analyze(experiment=experiment, now=now, secondary=False)  # no secondary columns here
        rows = [
            [
                "group",
                "control",
                "retired",
                "exposures",
                "conversions",
                "rate",
                "ci_low",
                "ci_high",
                "abs_lift",
                "abs_lift_low",
                "abs_lift_high",
                "rel_lift",
                "rel_lift_low",
                "rel_lift_high",
                "z",
                "p_value",
                "p_always_valid",
                "srm_p_value",
            ]
        ]
        for g in a.groups:
            d = g.diff or (None, None, None)
            r = g.rel or (None, None, None)
            rows.append(
                [
                    g.name,
                    g.is_control,
                    g.retired,
                    g.exposures,
                    g.conversions,
                    _f(g.rate),
                    _f(g.ci[0]),
                    _f(g.ci[1]),
                    *(_f(v) for v in d),
                    *(_f(v) for v in r),
                    _f(g.z),
                    _p(g.p_value),
                    _p(g.p_always_valid),
                    _p(a.srm.p_value if a.srm else None),
                ]
            )
        return rows
    if section == "timeseries":
        rows = [["group", "day", "exposures", "conversions", "rate", "ci_low", "ci_high"]]
        for group, points in experiment_timeseries(experiment=experiment, now=now).items():
            rows += [
                [group, p["day"].isoformat(), p["n"], p["x"], _f(p["rate"]), _f(p["low"]), _f(p["high"])]
                for p in points
            ]
        return rows
    if section == "cohorts":
        table = experiment_cohorts(experiment=experiment, kind=kind, trait=trait, now=now)
        rows = [["cohort_kind", "cohort", "group", "exposures", "conversions", "rate", "ci_low", "ci_high"]]
        for cohort in table.cohorts:
            for group in table.groups:
                c = table.cell(cohort, group)
                rows.append(
                    [
                        kind if not trait else f"trait:{trait}",
                        cohort,
                        group,
                        c.n,
                        c.x,
                        _f(c.rate),
                        _f(c.interval[0]),
                        _f(c.interval[1]),
                    ]
                )
        return rows
    if section == "funnel":
        rows = [["workflow", "version", "step", "kind", "reached", "dropped", "median_s_from_previous"]]
        for version in experiment_versions(experiment=experiment):
            f = version_funnel(version=version, experiment=experiment)
            rows.append([version.workflow.name, version.number, "(entered)", "", f.entered, "", ""])
            rows += [
                [
                    version.workflow.name,
                    version.number,
                    r.step,
                    r.kind,
                    r.reached,
                    r.dropped,
                    _f(r.median_from_previous_s, 1),
                ]
                for r in f.rows
            ]
            rows.append([version.workflow.name, version.number, "(runs that reached the version's goal)", "", f.converted, "", ""])
        return rows
    if section == "attribution":
        rows = [["group", "message", "channel", "conversions"]]
        rows += [
            [c.group, c.message, c.channel, c.conversions]
            for c in experiment_attribution(experiment=experiment, now=now)
        ]
        return rows
    raise ValueError(f"unknown section {section!r}; one of {', '.join(SECTIONS)}")
