"""Reads behind the management API's workflow and job listings: the ids, names and states a
platform team needs to call the other endpoints (trigger a workflow, poll a job), without
opening the admin. Read-only; never a version's steps or rules."""

from __future__ import annotations

from django.db.models import BooleanField, ExpressionWrapper, F, Prefetch, Q, QuerySet

from journeys.choices import ApiScope, WorkflowStatus
from journeys.models import ApiToken, Job, JobKind, Workflow, WorkflowVersion

# Which scope lets a token see (and so list) the jobs of each kind: the scope that starts them.
JOB_SCOPES = {JobKind.TRIGGER: ApiScope.TRIGGER, JobKind.ERASE: ApiScope.CUSTOMERS_WRITE,
              JobKind.EXPORT: ApiScope.EXPORT}


def workflows_list(*, with_versions: bool = False) -> QuerySet[Workflow]:
    """Every workflow with its live version's number and trigger (one join, no per-row query);
    `with_versions` also loads its versions (number, state, published_at) for the detail view."""
    queryset = Workflow.objects.annotate(
        live_number=F("live_version__number"),
        trigger_kind=F("live_version__trigger_kind"),
        trigger_event=F("live_version__trigger_event"),
        paused=ExpressionWrapper(Q(status=WorkflowStatus.PAUSED), output_field=BooleanField()),
        canary_number=F("canary_version__number"),
    ).select_related("business_unit")
    if with_versions:
        queryset = queryset.prefetch_related(Prefetch(
            "versions", queryset=WorkflowVersion.objects.order_by("number")
            .only("id", "workflow_id", "number", "state", "trigger_kind", "published_at", "retired_at")))
    return queryset


def jobs_for_token(*, token: ApiToken) -> QuerySet[Job]:
    """The API jobs this token may read: those of the kinds its scopes start (any token's)."""
    kinds = [kind for kind, scope in JOB_SCOPES.items() if scope in (token.scopes or [])]
    return Job.objects.filter(api_token__isnull=False, kind__in=kinds)
