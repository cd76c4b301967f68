"""Reads behind the governance pages of the admin: a change request's review, two versions
compared, a version's tools (propose, its change request) and the ops dashboard's switches.
Each takes the user and returns what that user may see and do; the admin renders it."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from journeys.choices import VersionState
from journeys.models import (
    AuditReport,
    ChangeRequest,
    ChangeRequestStatus,
    OperationsSwitch,
    Workflow,
    WorkflowVersion,
)
from journeys.selectors import (
    PROPOSE,
    PUBLISH,
    REVIEW,
    VIEW,
    change_requests_for_user,
    user_can,
    workflows_for_user,
)
from journeys.services import governance as gov
from journeys.services.workflows import change_request_base_moved


def change_request_review(*, change_request: ChangeRequest, user: Any) -> dict:
    """The review page: the diff against what is live (or was, for a published version), the
    fingerprint approval is bound to, the thread, and which decisions this user may take."""
    change_request.refresh_from_db()
    version, workflow = change_request.version, change_request.workflow
    version.refresh_from_db()
    workflow.refresh_from_db()
    live = workflow.live_version
    if version.state == VersionState.LIVE or live == version:
        base = change_request.base_version
    else:
        base = live
    fingerprint = gov.version_fingerprint(version=version)
    may_review, may_publish = user_can(user, REVIEW, workflow), user_can(user, PUBLISH, workflow)
    return {
        "cr": change_request, "version": version, "workflow": workflow,
        "diff": gov.version_diff(old=base, new=version), "fingerprint": fingerprint,
        "entries": change_request.entries.select_related("actor").order_by("at", "id"),
        "can_review": may_review and version.state == VersionState.IN_REVIEW,
        "can_reject": may_review and version.state in (VersionState.IN_REVIEW, VersionState.APPROVED)
        and not version.is_frozen,
        "can_publish": may_publish and version.state == VersionState.APPROVED,
        "can_canary": may_publish and version.state == VersionState.APPROVED and workflow.live_version_id is not None,
        "can_comment": user_can(user, PROPOSE, workflow) or may_review,
        "is_canary": workflow.canary_version_id == version.pk, "canary_percent": workflow.canary_percent,
        "stage": version.stage,
        # an open or approved request whose base is no longer live: say why approve/publish will be refused
        "base_moved": change_request_base_moved(change_request=change_request, workflow=workflow)
        if change_request.status in (ChangeRequestStatus.OPEN, ChangeRequestStatus.APPROVED) else "",
    }


def version_pair(*, workflow: Workflow, old_id: str = "", new_id: str = "") -> dict:
    """Two versions of a workflow to compare: those asked for, else the newest against the live
    one (or the one before it), with their diff."""
    versions = list(workflow.versions.order_by("-number"))
    by_id = {str(v.pk): v for v in versions}
    new = by_id.get(new_id) or (versions[0] if versions else None)
    default_old = workflow.live_version if workflow.live_version_id and new and workflow.live_version_id != new.pk else None
    if default_old is None and new is not None:
        default_old = next((v for v in versions if v.number < new.number), None)
    old = by_id.get(old_id) or default_old
    return {"versions": versions, "old": old, "new": new,
            "diff": gov.version_diff(old=old, new=new) if new is not None else None}


def version_tools(*, version_id: str, user: Any) -> dict:
    """What a version's page offers besides the form: proposing it, and its latest change request."""
    if not str(version_id).isdigit():  # the admin answers "does not exist" itself
        return {}
    version = WorkflowVersion.objects.filter(pk=version_id).select_related("workflow").first()
    if version is None:
        return {}
    latest = ChangeRequest.objects.filter(version=version).order_by("-created_at", "-id").first()
    return {
        "version": version,
        "can_propose": version.state == VersionState.DRAFT and user_can(user, PROPOSE, version.workflow),
        "change_request": latest if latest and user_can(user, VIEW, version.workflow) else None,
    }


def ops_switches(*, user: Any) -> dict:
    """The ops dashboard's state: safe mode and the active switches, paused workflows, canaries,
    reviews waiting, the latest audit report."""
    visible = workflows_for_user(user, VIEW)
    return {
        "safe_mode": gov.safe_mode_active(),
        "switches": OperationsSwitch.objects.filter(active=True),
        "paused": visible.filter(status="paused"),
        "canaries": visible.filter(canary_version__isnull=False).select_related("canary_version", "live_version"),
        "open_requests": change_requests_for_user(user).filter(status=ChangeRequestStatus.OPEN)
        .select_related("workflow", "version"),
        "report": AuditReport.objects.first(),
        "can_operate": user.is_superuser or user.has_perm("journeys.operate_workflow"),
        "now": timezone.now(),
    }
