"""Governance records: change requests, the audit log, outage switches and audit reports."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from simple_history.models import HistoricalRecords


class ChangeRequestStatus(models.TextChoices):
    OPEN = "open", "Open (in review)"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"
    PUBLISHED = "published", "Published"


class SwitchScope(models.TextChoices):
    GLOBAL = "global", "Global safe mode"


class ChangeRequest(models.Model):
    """An editor's proposal to put a draft version live, and the reviewer's decision.

    The validation report and the dry-run replay are stored as they were when the
    request was opened (and refreshed on demand), so the decision can be audited later.
    """

    workflow = models.ForeignKey("journeys.Workflow", on_delete=models.CASCADE, related_name="change_requests")
    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="change_requests")
    base_version = models.ForeignKey(
        "journeys.WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="the live version when the change was proposed (what the diff and dry run compare against)",
    )
    status = models.CharField(max_length=10, choices=ChangeRequestStatus.choices, default=ChangeRequestStatus.OPEN)
    summary = models.TextField(help_text="what changes and why")
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_comment = models.TextField(blank=True)
    fingerprint = models.CharField(max_length=64, blank=True, help_text="hash of the proposed definition")
    validation = models.JSONField(default=dict, blank=True)
    dry_run = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["version"], condition=models.Q(status="open"),
                                    name="one_open_change_request_per_version"),
        ]

    def __str__(self) -> str:
        return f"CR #{self.pk}: {self.workflow} v{self.version.number} ({self.status})"


class AuditEntry(models.Model):
    """Who did what to which workflow, when and why: every governance action writes one row."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    action = models.CharField(max_length=40, db_index=True)
    workflow = models.ForeignKey("journeys.Workflow", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="audit_entries")
    version = models.ForeignKey("journeys.WorkflowVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    change_request = models.ForeignKey(ChangeRequest, null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="entries")
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        who = self.actor or "system"
        return f"{self.at:%Y-%m-%d %H:%M} {who}: {self.action}"


class OperationsSwitch(models.Model):
    """Outage fallbacks owned by journeys: the global safe mode (hold every outgoing message).

    Workflow pauses are `Workflow.status = paused`; channel pauses are `Channel.paused` in the
    channels app. Held messages stay queued and are released in order when the switch goes off
    (see `journeys.services.governance.outbound_hold`).
    """

    scope = models.CharField(max_length=10, choices=SwitchScope.choices)
    key = models.CharField(max_length=100, blank=True, help_text="what the switch applies to (empty: everything)")
    active = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    changed_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="switch_scope_key_unique")]

    def __str__(self) -> str:
        return f"{self.get_scope_display()}{f' {self.key}' if self.key else ''}: {'ON' if self.active else 'off'}"


class AuditReport(models.Model):
    """The result of one scheduled (or manual) audit run, shown on the ops dashboard."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    days = models.PositiveIntegerField()
    trigger = models.CharField(max_length=20, default="schedule")
    findings = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("view_ops_dashboard", "Can view the ops dashboard and audit reports")]

    def __str__(self) -> str:
        return f"audit {self.created_at:%Y-%m-%d %H:%M} ({self.days}d)"


class RoleMember(User):
    """A person seen through the roles they hold (the role groups of `roles_setup`). Exists so
    that ops grant and revoke roles on their own admin page, through `user_roles_set`, and never
    need Django's own user and group pages (where a permission edit makes a superuser)."""

    class Meta:
        proxy = True
        verbose_name = "role member"
        verbose_name_plural = "roles"
        permissions = [("manage_roles", "Can grant and revoke roles (role groups, business-unit editors)")]
