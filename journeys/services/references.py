"""Which workflow versions in use name a piece of shared configuration (a message template, a
channel: steps name them, they are not foreign keys), so that it is not deleted under them."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from journeys.choices import VersionState
from journeys.engine.registry import STEP_KINDS, StepKind, get_kind
from journeys.models import Step, Workflow, WorkflowVersion

# A version that runs (live, canary) or is on its way to (in review, approved).
IN_USE_STATES = (VersionState.LIVE, VersionState.IN_REVIEW, VersionState.APPROVED)


def versions_in_use() -> QuerySet[WorkflowVersion]:
    canaries = Workflow.objects.exclude(canary_version=None).values("canary_version_id")
    return WorkflowVersion.objects.filter(Q(state__in=IN_USE_STATES) | Q(pk__in=canaries))


def config_users(*, what: str, name: str) -> list[str]:
    """The versions in use with a step naming `name` as a `what` ("template", "channel"), in
    words: "Cart abandonment v9 (live): step sms"."""
    naming = [n for n, kind in STEP_KINDS.items() if type(kind).references is not StepKind.references]
    steps = (Step.objects.filter(version__in=versions_in_use(), kind__in=naming).select_related("version__workflow")
             .order_by("version__workflow__name", "version__number", "key"))
    users = []
    for step in steps:
        try:
            named = get_kind(step.kind).references(step.config if isinstance(step.config, dict) else {})
        except (ValidationError, KeyError, ValueError, TypeError):  # a config it cannot read names nothing
            continue
        if name in named.get(what, ()):
            version = step.version
            users.append(f"{version.workflow.name} v{version.number} ({version.stage.replace('_', ' ')}): "
                         f"step {step.key}")
    return users


def config_rename_check(*, what: str, old: str, new: str) -> None:
    """Refuse to rename a `what` ("template", "channel", "workflow") while versions in use name it:
    steps find them by name when they run, so after the rename those steps would fail."""
    if not old or old == new:
        return
    users = config_users(what=what, name=old)
    if users:
        raise ValidationError({"name": (
            f"versions in use name this {what} {old!r}: {'; '.join(users)}. Renamed, they would no longer find "
            f"it at that step. Publish versions of them that name another {what} first, or keep the name")})
