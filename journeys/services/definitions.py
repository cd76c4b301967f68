"""A version's portable definition: its settings, steps and edges as plain data.

What export writes and `version_build` reads, what fingerprints, diffs and reviews compare.
On its own so that the lifecycle (`workflows`) and governance (diffs, fingerprints, warnings)
both read it and neither imports the other's module for it (workflows -> governance only).
"""

from __future__ import annotations

from journeys.models import WorkflowVersion

VERSION_FIELDS = (
    "trigger_kind", "trigger_event", "trigger_config", "entry_rule", "reentry_policy", "reentry_cooldown_s",
    "allow_concurrent_runs", "goal_event", "goal_filter", "entry_step", "notes",
)


def version_definition(*, version: WorkflowVersion) -> dict:
    """The portable form of a version (what export writes and version_build reads)."""
    return {
        **{f: getattr(version, f) for f in VERSION_FIELDS},
        # Only when set: versions without business hours keep their definition (and fingerprint).
        **({"business_hours": version.business_hours} if version.business_hours else {}),
        "steps": [
            {"key": s.key, "kind": s.kind, "name": s.name, "config": s.config, "x": s.x, "y": s.y}
            for s in version.steps.order_by("id")
        ],
        "edges": [
            {"from": e.source.key, "outcome": e.outcome, "to": e.target.key}
            for e in version.edges.select_related("source", "target").order_by("id")
        ],
    }
