"""Admin for workflows, versions, steps, runs and governance (thin: services do the work).

What a user sees and may change comes from `journeys.selectors` (roles and guardian object
permissions); every change goes through a service that checks the same rules again.
"""

from __future__ import annotations

import json
import os

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin_base import REASON_HELP, ReadOnlyAdmin, ReasonForm, RunScopeMixin
from journeys.admin_base import HistoryReasonMixin as SharedHistoryReasonMixin
from journeys.admin_base import ReasonActionForm as SharedReasonActionForm
from journeys.choices import RunStatus, VersionState
from journeys.engine.registry import STEP_KINDS
from journeys.engine.runner import RunFailed, run_retry
from journeys.errors import JourneyError, PermissionDenied
from journeys.models import (
    AuditEntry,
    AuditReport,
    BusinessUnit,
    ChangeRequest,
    ChangeRequestStatus,
    Edge,
    Job,
    JourneyRun,
    OperationsSwitch,
    Step,
    StepExecution,
    Workflow,
    WorkflowVersion,
)
from journeys.selectors import (
    EDIT,
    OPERATE,
    PROPOSE,
    PUBLISH,
    REVIEW,
    VIEW,
    audit_entries_for_user,
    business_units_for_user,
    change_requests_for_user,
    user_can,
    user_can_view_dashboard,
    user_has_any_scope,
    user_has_global,
    versions_for_user,
    workflows_for_user,
)
from journeys.services import governance as gov
from journeys.services.workflows import (
    change_request_comment,
    change_request_refresh,
    step_save,
    version_approve,
    version_canary_start,
    version_check_editable,
    version_new_draft,
    version_note_changed,
    version_publish,
    version_reject,
    version_submit,
    version_validate,
    workflow_canary_stop,
    workflow_create,
    workflow_export,
    workflow_import,
    workflow_rollback,
    workflow_save,
)


def _messages_from(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{k}: {m}" if k != "__all__" else m for k, msgs in exc.message_dict.items() for m in msgs]
    return exc.messages


def _error_text(exc: Exception) -> str:
    return "; ".join(_messages_from(exc)) if isinstance(exc, ValidationError) else str(exc)


def _object_or_404(queryset, pk):
    """The row with id `pk` (from a URL) or a 404 naming what was asked for: an id that is not a
    number is a page that does not exist, not a server error."""
    if not str(pk).isdigit():
        raise Http404(f"no {queryset.model._meta.verbose_name} with id {pk!r}")
    return get_object_or_404(queryset, pk=pk)


class ReasonActionForm(SharedReasonActionForm):
    # Text, not an IntegerField: a bad value would make Django drop the whole action ("No action
    # selected"); the canary action says what is wrong with it instead.
    percent = forms.CharField(required=False, label="Canary %",
                              widget=forms.NumberInput(attrs={"style": "width:4em", "min": 1, "max": 99}))


class HistoryReasonMixin(SharedHistoryReasonMixin):
    """The shared change-reason mixin (journeys.admin_base), without revert from the history page."""

    history_revert = False  # reverting through history would skip review: make a new draft instead


# --------------------------------------------------------------------------- business units


class EditorForm(forms.Form):
    username = forms.CharField(help_text="the user who edits (and proposes changes to) this unit's workflows")
    grant = forms.ChoiceField(choices=[("grant", "grant"), ("revoke", "revoke")])
    reason = forms.CharField(widget=forms.TextInput(attrs={"size": 60}))


@admin.register(BusinessUnit)
class BusinessUnitAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = ReasonForm
    list_display = ("name", "slug", "editors_link")
    prepopulated_fields = {"slug": ("name",)}

    @admin.display(description="editors")
    def editors_link(self, obj):
        return format_html('<a href="{}">editors</a>', reverse("admin:journeys_businessunit_editors", args=[obj.pk]))

    def save_model(self, request, obj, form, change):
        obj._change_reason = self._reason(request, form)
        super().save_model(request, obj, form, change)
        gov.audit_record(action="business_unit_saved", actor=request.user, reason=obj._change_reason,
                         data={"unit": obj.slug})

    def get_urls(self):
        return [
            path("<int:pk>/editors/", self.admin_site.admin_view(self.editors_view), name="journeys_businessunit_editors"),
        ] + super().get_urls()

    def editors_view(self, request, pk):
        """Who edits this unit's workflows (guardian object permission), granted and revoked with a reason."""
        from django.contrib.auth import get_user_model

        unit = get_object_or_404(BusinessUnit, pk=pk)
        if not self.has_view_permission(request, unit):
            raise DjangoPermissionDenied
        form = EditorForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            user = get_user_model().objects.filter(username=data["username"]).first()
            if user is None:
                form.add_error("username", "no such user")
            else:
                service = gov.business_unit_grant_editor if data["grant"] == "grant" else gov.business_unit_revoke_editor
                try:
                    service(unit=unit, user=user, actor=request.user, reason=data["reason"])
                except (ValidationError, PermissionDenied) as exc:
                    form.add_error(None, _error_text(exc))
                else:
                    messages.success(request, f"{user}: {data['grant']}ed")
                    return HttpResponseRedirect(request.path)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "unit": unit, "form": form,
                   "editors": gov.business_unit_editors(unit=unit),
                   "can_grant": request.user.is_superuser or request.user.has_perm("auth.change_group"),
                   "title": f"Editors of {unit}"}
        return render(request, "admin/journeys/unit_editors.html", context)


# --------------------------------------------------------------------------- workflows


class VersionInline(admin.TabularInline):
    model = WorkflowVersion
    fk_name = "workflow"
    fields = ("number", "state", "trigger_kind", "trigger_event", "published_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return True


class WorkflowImportForm(forms.Form):
    file = forms.FileField(help_text="a JSON file exported from this console")
    name = forms.CharField(required=False, help_text="import under another workflow name (optional)")


class WorkflowForm(ReasonForm):
    class Meta:
        model = Workflow
        fields = ("name", "description", "business_unit")


class ScopedAdminMixin:
    """Model-level answers from the user's scope (guardian object permissions included)."""

    def has_module_permission(self, request):
        return user_has_any_scope(request.user)


@admin.register(Workflow)
class WorkflowAdmin(ScopedAdminMixin, HistoryReasonMixin, SimpleHistoryAdmin):
    form = WorkflowForm
    action_form = ReasonActionForm
    list_display = ("name", "business_unit", "status", "live_version_link", "canary", "updated_at")
    list_filter = ("status", "business_unit")
    search_fields = ("name", "description")
    readonly_fields = ("status", "live_version", "canary_version", "canary_percent", "created_by", "created_at",
                       "updated_at")
    inlines = [VersionInline]
    actions = ["rollback", "stop_canary", "pause", "resume"]

    @admin.display(description="live version")
    def live_version_link(self, obj):
        if not obj.live_version_id:
            return "-"
        url = reverse("admin:journeys_workflowversion_change", args=[obj.live_version_id])
        return format_html('<a href="{}">v{}</a>', url, obj.live_version.number)

    @admin.display(description="canary")
    def canary(self, obj):
        if not obj.canary_version_id:
            return "-"
        return f"v{obj.canary_version.number} at {obj.canary_percent}%"

    def get_queryset(self, request):
        return (workflows_for_user(request.user, VIEW) & super().get_queryset(request)).select_related(
            "business_unit", "live_version", "canary_version")

    def has_view_permission(self, request, obj=None):
        return user_can(request.user, VIEW, obj) if obj is not None else user_has_any_scope(request.user)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return workflows_for_user(request.user, EDIT).exists() or business_units_for_user(request.user).exists()
        return user_can(request.user, EDIT, obj)

    def has_add_permission(self, request):
        return business_units_for_user(request.user, EDIT).exists()

    def has_publish_permission(self, request, obj=None):
        return user_has_global(request.user, PUBLISH)

    def has_operate_permission(self, request, obj=None):
        return user_has_global(request.user, OPERATE) or user_has_global(request.user, PUBLISH)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "business_unit":
            kwargs["queryset"] = business_units_for_user(request.user, EDIT)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_urls(self):
        return [
            path("import/", self.admin_site.admin_view(self.import_view), name="journeys_workflow_import"),
            path("<int:pk>/diff/", self.admin_site.admin_view(self.diff_view), name="journeys_workflow_diff"),
        ] + super().get_urls()

    def import_view(self, request):
        if not self.has_add_permission(request):
            raise DjangoPermissionDenied
        form = WorkflowImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid() and (data := self._export_read(form)) is not None:
            try:
                version = workflow_import(data=data, actor=request.user, name=form.cleaned_data["name"] or None)
            except ValidationError as exc:
                for msg in _messages_from(exc):
                    form.add_error(None, msg)
            except PermissionDenied as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Imported as a draft: {version}")
                return HttpResponseRedirect(reverse("admin:journeys_workflowversion_change", args=[version.pk]))
        context = {**self.admin_site.each_context(request), "form": form, "title": "Import a workflow", "opts": self.model._meta}
        return render(request, "admin/journeys/import.html", context)

    @staticmethod
    def _export_read(form: WorkflowImportForm):
        """The uploaded export as JSON, or None with the file's error on the form."""
        upload = form.cleaned_data["file"]
        hint = "choose the file that \u201cExport as JSON\u201d downloaded"
        try:
            return json.loads(upload.read().decode("utf-8-sig"))
        except UnicodeDecodeError:
            form.add_error("file", f"{upload.name} is not a workflow export (not JSON text): {hint}")
        except ValueError as exc:
            form.add_error("file", f"{upload.name} is not valid JSON ({exc}): {hint}")
        return None

    def diff_view(self, request, pk):
        """Any two versions of a workflow, side by side: settings, steps, edges, rules, templates."""
        workflow = get_object_or_404(Workflow, pk=pk)
        if not user_can(request.user, VIEW, workflow):
            raise DjangoPermissionDenied
        versions = list(workflow.versions.order_by("-number"))
        by_id = {str(v.pk): v for v in versions}
        new = by_id.get(request.GET.get("b", "")) or (versions[0] if versions else None)
        default_old = workflow.live_version if workflow.live_version_id and new and workflow.live_version_id != new.pk else None
        if default_old is None and new is not None:
            default_old = next((v for v in versions if v.number < new.number), None)
        old = by_id.get(request.GET.get("a", "")) or default_old
        diff = gov.version_diff(old=old, new=new) if new is not None else None
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "workflow": workflow,
                   "versions": versions, "old": old, "new": new, "diff": diff,
                   "title": f"Compare versions of {workflow}"}
        return render(request, "admin/journeys/diff.html", context)

    def save_model(self, request, obj, form, change):
        reason = self._reason(request, form)
        if not change:
            saved = workflow_create(name=obj.name, business_unit=obj.business_unit, description=obj.description,
                                    actor=request.user, reason=reason)
            obj.pk = saved.pk
            obj.created_by = saved.created_by
            return
        obj._history_user = request.user
        workflow_save(workflow=obj, actor=request.user, reason=reason)

    def _each(self, request, queryset, func, done: str):
        reason = request.POST.get("reason", "")
        for workflow in queryset:
            try:
                func(workflow, reason)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{workflow}: {_error_text(exc)}", messages.ERROR)
            else:
                self.message_user(request, f"{workflow}: {done}")

    @admin.action(description="Roll back (previous version live again, or stop the canary)", permissions=["publish"])
    def rollback(self, request, queryset):
        self._each(request, queryset, lambda w, r: workflow_rollback(workflow=w, actor=request.user, reason=r),
                   "rolled back")

    @admin.action(description="Stop the canary", permissions=["publish"])
    def stop_canary(self, request, queryset):
        self._each(request, queryset, lambda w, r: workflow_canary_stop(workflow=w, actor=request.user, reason=r),
                   "canary stopped")

    @admin.action(description="Pause (no new entries; messages held)", permissions=["operate"])
    def pause(self, request, queryset):
        self._each(request, queryset,
                   lambda w, r: gov.workflow_pause_set(workflow=w, paused=True, actor=request.user, reason=r), "paused")

    @admin.action(description="Resume (held messages are released)", permissions=["operate"])
    def resume(self, request, queryset):
        self._each(request, queryset,
                   lambda w, r: gov.workflow_pause_set(workflow=w, paused=False, actor=request.user, reason=r),
                   "resumed")


# --------------------------------------------------------------------------- versions, steps, edges


def _version_editable(user, version: WorkflowVersion) -> bool:
    """Steps, edges and settings of a version may change: not frozen (never live), not a canary,
    not retired, and the user may edit the workflow."""
    return (not version.is_frozen and version.state in (VersionState.DRAFT, VersionState.IN_REVIEW,
                                                        VersionState.APPROVED)
            and not version.is_canary and user_can(user, EDIT, version.workflow))


class VersionChildInline(admin.TabularInline):
    """Steps and edges may change exactly when their version may."""

    extra = 0

    def _editable(self, request, obj) -> bool:
        if obj is None:  # asked without a version (the inline's queryset): the user's general reach
            return workflows_for_user(request.user, EDIT).exists()
        return _version_editable(request.user, obj)

    def has_view_permission(self, request, obj=None):
        return user_can(request.user, VIEW, obj.workflow) if obj is not None else user_has_any_scope(request.user)

    def has_add_permission(self, request, obj=None):
        return self._editable(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(request, obj)


class StepInline(VersionChildInline):
    """The version's steps at a glance. A step's kind and config change only in its kind's form
    (StepAdmin, validated field by field), so here they are a read-only summary with a link to
    that form; new steps start from "Add a step". Graph positions stay editable, and deleting a
    step here takes its edges with it."""

    model = Step
    fields = ("key", "kind_label", "name", "config_summary", "x", "y", "form_link")
    readonly_fields = ("key", "kind_label", "name", "config_summary", "form_link")

    def has_add_permission(self, request, obj=None):
        return False  # the version page's "Add a step" opens the kind picker

    def get_formset(self, request, obj=None, **kwargs):
        self.editable = obj is not None and _version_editable(request.user, obj)
        return super().get_formset(request, obj, **kwargs)

    @admin.display(description="kind")
    def kind_label(self, obj):
        kind = STEP_KINDS.get(obj.kind)
        return f"{kind.label} ({obj.kind})" if kind else f"{obj.kind} (unknown kind)"

    @admin.display(description="config")
    def config_summary(self, obj):
        from journeys.forms_steps import config_summary

        lines = config_summary(obj.kind, obj.config or {})
        if not lines:
            return "-"
        return format_html('<span class="step-config">{}</span>',
                           format_html_join(mark_safe("<br>"), "<b>{}</b>: {}", lines))

    @admin.display(description="form")
    def form_link(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        return format_html('<a class="step-form-link" href="{}">{}</a>',
                           reverse("admin:journeys_step_change", args=[obj.pk]),
                           "edit in its form" if getattr(self, "editable", False) else "view in its form")


class EdgeInline(VersionChildInline):
    model = Edge
    fields = ("source", "outcome", "target")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        version_id = request.resolver_match.kwargs.get("object_id")
        if db_field.name in ("source", "target") and version_id:
            kwargs["queryset"] = Step.objects.filter(version_id=version_id)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class DryRunForm(forms.Form):
    customer = forms.CharField(help_text="user id or email")
    event = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), help_text='e.g. {"event": "Checkout Started", "properties": {"total": 80}}')
    later_events = forms.CharField(required=False, help_text="comma-separated events assumed to arrive while waiting")


def _dry_run_event_problem(payload) -> str:
    """What is wrong with a dry run's event, said so that it can be fixed ("" when nothing is)."""
    example = '{"event": "Checkout Started", "properties": {"total": 80}}'
    if not isinstance(payload, dict):
        return f"must be a JSON object, e.g. {example}"
    name = payload.get("event", payload.get("name"))
    if not isinstance(name, str) or not name.strip():
        return f'give the event\'s name as text under "event", e.g. {example}'
    for key in ("properties", "context", "traits"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return f'"{key}" must be a JSON object, e.g. {{"total": 80}}'
    return ""


class ProposeForm(forms.Form):
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
                              help_text="What changes and why (the reviewer reads this first).")


class CatalogNameInput(forms.TextInput):
    """A text input that offers the event catalog's names (HTML datalist: no JS, no CDN)."""

    def render(self, name, value, attrs=None, renderer=None):
        from django.utils.html import format_html_join

        from journeys.services.catalog import catalog_names

        attrs = {**(attrs or {}), "list": f"catalog-{name}"}
        html = super().render(name, value, attrs, renderer)
        options = format_html_join("", '<option value="{}">', ((n,) for n in catalog_names()))
        return format_html('{}<datalist id="catalog-{}">{}</datalist>', html, name, options)


class WorkflowVersionForm(ReasonForm):
    class Meta:
        model = WorkflowVersion
        fields = "__all__"
        widgets = {"trigger_event": CatalogNameInput(), "goal_event": CatalogNameInput()}

    class Media:
        css = {"all": ("console/console.css",)}
        js = ("console/editor.js",)

    def __init__(self, *args, **kwargs):
        from journeys.forms_steps import RuleInput

        super().__init__(*args, **kwargs)
        version_id = self.instance.pk if self.instance else None
        for name, event in (("entry_rule", "trigger_event"), ("goal_filter", "goal_event")):
            if name in self.fields:  # checked as typed, like the rules of the step forms
                self.fields[name].widget = RuleInput(version_id=version_id,
                                                     event=getattr(self.instance, event, "") or "")


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(ScopedAdminMixin, HistoryReasonMixin, SimpleHistoryAdmin):
    form = WorkflowVersionForm
    action_form = ReasonActionForm
    list_display = ("workflow", "number", "stage", "trigger_kind", "trigger_event", "published_at")
    list_filter = ("state", "trigger_kind", "workflow__business_unit")
    search_fields = ("workflow__name", "trigger_event")
    readonly_fields = ("state", "stage", "frozen_at", "published_at", "approved_at", "approved_by", "created_by",
                       "validation")
    inlines = [StepInline, EdgeInline]
    actions = ["propose", "approve", "reject", "publish", "canary", "new_draft", "export_json"]
    fieldsets = (
        (None, {"fields": ("workflow", "number", "stage", "notes", "validation")}),
        ("Trigger", {"fields": ("trigger_kind", "trigger_event", "trigger_config")}),
        ("Entry and exit", {"fields": ("entry_step", "entry_rule", "reentry_policy", "reentry_cooldown_s",
                                       "allow_concurrent_runs", "business_hours", "goal_event", "goal_filter")}),
        ("Publishing", {"fields": ("state", "frozen_at", "published_at", "approved_at", "approved_by", "created_by")}),
        ("Why", {"fields": ("change_reason",)}),
    )

    @admin.display(description="stage")
    def stage(self, obj):
        if obj is None or obj.pk is None:
            return VersionState.DRAFT
        if obj.is_canary:
            return f"canary ({obj.workflow.canary_percent}% of new entries)"
        return obj.get_state_display()

    def get_queryset(self, request):
        return (versions_for_user(request.user, VIEW) & super().get_queryset(request)).select_related("workflow")

    def get_fieldsets(self, request, obj=None):
        if obj is not None and not self.has_change_permission(request, obj):
            return self.fieldsets[:-1]
        return self.fieldsets

    def _editable(self, request, obj) -> bool:
        return _version_editable(request.user, obj)

    def has_view_permission(self, request, obj=None):
        return user_can(request.user, VIEW, obj.workflow) if obj is not None else user_has_any_scope(request.user)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return workflows_for_user(request.user, EDIT).exists()
        return self._editable(request, obj)

    def has_add_permission(self, request):
        return workflows_for_user(request.user, EDIT).exists()

    def has_delete_permission(self, request, obj=None):
        if obj is None:
            return request.user.is_superuser
        return request.user.is_superuser and obj.state == VersionState.DRAFT and not obj.is_frozen

    def has_propose_permission(self, request, obj=None):
        return workflows_for_user(request.user, PROPOSE).exists()

    def has_review_permission(self, request, obj=None):
        return user_has_global(request.user, REVIEW)

    def has_publish_permission(self, request, obj=None):
        return user_has_global(request.user, PUBLISH)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "workflow":
            kwargs["queryset"] = workflows_for_user(request.user, EDIT)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_inline_instances(self, request, obj=None):
        return super().get_inline_instances(request, obj) if obj is not None else []

    @admin.display(description="validation")
    def validation(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        report = version_validate(version=obj)
        if report.ok and not report.warnings:
            return "OK"
        items = [("error", e) for e in report.errors] + [("warning", w) for w in report.warnings]
        return format_html("<ul>{}</ul>", format_html_join("", "<li><b>{}</b>: {}</li>", items))

    def save_model(self, request, obj, form, change):
        if change:
            version_check_editable(version=WorkflowVersion.objects.get(pk=obj.pk), actor=request.user)
        else:
            if not user_can(request.user, EDIT, obj.workflow):
                raise DjangoPermissionDenied
            obj.created_by = request.user
        obj._change_reason = self._reason(request, form)
        obj._history_user = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        try:
            version_note_changed(version=form.instance, actor=request.user, reason=self._reason(request, form))
        except PermissionDenied as exc:
            raise DjangoPermissionDenied(str(exc)) from None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), **self._tools(request, object_id)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _tools(self, request, object_id) -> dict:
        if not str(object_id).isdigit():  # the admin answers "does not exist" itself
            return {}
        version = WorkflowVersion.objects.filter(pk=object_id).select_related("workflow").first()
        if version is None:
            return {}
        request_open = ChangeRequest.objects.filter(version=version).order_by("-created_at", "-id").first()
        return {
            "version": version,
            "can_propose": version.state == VersionState.DRAFT and user_can(request.user, PROPOSE, version.workflow),
            "change_request": request_open if request_open and user_can(request.user, VIEW, version.workflow) else None,
        }

    def get_urls(self):
        return [
            path("<int:pk>/dry-run/", self.admin_site.admin_view(self.dry_run_view), name="journeys_workflowversion_dry_run"),
            path("<int:pk>/propose/", self.admin_site.admin_view(self.propose_view), name="journeys_workflowversion_propose"),
        ] + super().get_urls()

    def _version_for(self, request, pk, action=VIEW) -> WorkflowVersion:
        version = get_object_or_404(WorkflowVersion.objects.select_related("workflow"), pk=pk)
        if not user_can(request.user, action, version.workflow):
            raise DjangoPermissionDenied
        return version

    def propose_view(self, request, pk):
        """An editor proposes a draft: shows validation and the diff, then opens a change request."""
        version = self._version_for(request, pk, PROPOSE)
        form = ProposeForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                change_request = version_submit(version=version, actor=request.user, summary=form.cleaned_data["summary"])
            except (ValidationError, PermissionDenied) as exc:
                form.add_error(None, _error_text(exc))
            else:
                messages.success(request, f"Proposed for review: {change_request}")
                return HttpResponseRedirect(reverse("admin:journeys_changerequest_change", args=[change_request.pk]))
        report = version_validate(version=version)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "version": version,
                   "form": form, "report": report, "diff": gov.version_diff(old=version.workflow.live_version, new=version),
                   "title": f"Propose {version.workflow} v{version.number} for review"}
        return render(request, "admin/journeys/propose.html", context)

    def dry_run_view(self, request, pk):
        from journeys.models import Identity
        from journeys.services.dry_run import version_dry_run

        version = self._version_for(request, pk, VIEW)
        form = DryRunForm(request.POST or None)
        report = None
        if request.method == "POST" and form.is_valid():
            value = form.cleaned_data["customer"].strip()
            identity = Identity.objects.filter(value__in=[value, value.lower()]).select_related("customer").first()
            try:
                payload = json.loads(form.cleaned_data["event"])
            except ValueError as exc:
                form.add_error("event", f"not valid JSON: {exc}")
            else:
                if problem := _dry_run_event_problem(payload):
                    form.add_error("event", problem)
            if identity is None:
                form.add_error("customer", f"no customer with id or email {value!r}")
            if not form.errors:
                later = [e.strip() for e in form.cleaned_data["later_events"].split(",") if e.strip()]
                report = version_dry_run(version=version, customer=identity.customer, event=payload, later_events=later)
        context = {**self.admin_site.each_context(request), "form": form, "report": report, "version": version,
                   "title": f"Dry run of {version}", "opts": self.model._meta}
        return render(request, "admin/journeys/dry_run.html", context)

    def _each(self, request, queryset, func, done):
        reason = request.POST.get("reason", "")
        for version in queryset.select_related("workflow"):
            try:
                result = func(version, reason)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{version.workflow} v{version.number}: {_error_text(exc)}", messages.ERROR)
            else:
                self.message_user(request, f"{version.workflow} v{version.number}: {done(result) if callable(done) else done}")

    @admin.action(description="Propose for review (reason = summary)", permissions=["propose"])
    def propose(self, request, queryset):
        self._each(request, queryset, lambda v, r: version_submit(version=v, actor=request.user, summary=r),
                   "proposed for review")

    @admin.action(description="Approve (reason = comment)", permissions=["review"])
    def approve(self, request, queryset):
        self._each(request, queryset, lambda v, r: version_approve(version=v, actor=request.user, comment=r), "approved")

    @admin.action(description="Reject back to draft (reason = comment)", permissions=["review"])
    def reject(self, request, queryset):
        self._each(request, queryset, lambda v, r: version_reject(version=v, actor=request.user, comment=r), "rejected")

    @admin.action(description="Publish (make fully live)", permissions=["publish"])
    def publish(self, request, queryset):
        self._each(request, queryset, lambda v, r: version_publish(version=v, actor=request.user, reason=r), "is live")

    @admin.action(description="Stage as canary (share in Canary %%)", permissions=["publish"])
    def canary(self, request, queryset):
        text = (request.POST.get("percent") or "").strip()
        if not text.isdigit() or not 1 <= int(text) <= 99:
            self.message_user(request, f"Canary %: {text!r} is not a share of new entries; write a whole number "
                              "from 1 to 99 next to the action" if text else
                              "Canary %: say which share of new entries (1 to 99) the canary takes", messages.ERROR)
            return
        percent = int(text)
        self._each(request, queryset,
                   lambda v, r: version_canary_start(version=v, percent=percent, actor=request.user, reason=r),
                   f"canary at {percent}% of new entries")

    @admin.action(description="Create a new draft from this version", permissions=["change"])
    def new_draft(self, request, queryset):
        self._each(request, queryset, lambda v, r: version_new_draft(version=v, actor=request.user, reason=r),
                   lambda draft: f"created draft v{draft.number}")

    @admin.action(description="Export as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, f"Export one version at a time ({queryset.count()} selected).", messages.ERROR)
            return None
        version = queryset.first()
        data = json.dumps(workflow_export(version=version), indent=2)
        response = HttpResponse(data, content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{version.workflow.name}-v{version.number}.json"'
        return response


# --------------------------------------------------------------------------- change requests (review)


class DecisionForm(forms.Form):
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}))
    fingerprint = forms.CharField(required=False, widget=forms.HiddenInput)
    percent = forms.IntegerField(required=False, min_value=1, max_value=99)


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "workflow", "status", "proposed_by", "created_at", "decided_by", "decided_at")
    list_filter = ("status", "workflow__business_unit")
    list_select_related = ("workflow", "version", "proposed_by", "decided_by")

    def get_queryset(self, request):
        return change_requests_for_user(request.user) & super().get_queryset(request)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return user_has_any_scope(request.user)
        return change_requests_for_user(request.user).filter(pk=obj.pk).exists()

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The review page: summary, diff, validation, dry-run replay, the thread, and the decisions."""
        change_request = _object_or_404(
            ChangeRequest.objects.select_related("workflow", "version", "base_version", "proposed_by"), object_id)
        if not self.has_view_permission(request, change_request):
            raise DjangoPermissionDenied
        user, workflow, version = request.user, change_request.workflow, change_request.version
        form = DecisionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            comment = form.cleaned_data["comment"]
            decision = request.POST.get("decision", "")
            handlers = {
                "comment": lambda: change_request_comment(change_request=change_request, actor=user, comment=comment),
                "approve": lambda: version_approve(version=version, actor=user, comment=comment,
                                                   expected_fingerprint=form.cleaned_data["fingerprint"] or None),
                "reject": lambda: version_reject(version=version, actor=user, comment=comment),
                "publish": lambda: version_publish(version=version, actor=user, reason=comment),
                "canary": lambda: version_canary_start(version=version, percent=form.cleaned_data["percent"] or 0,
                                                       actor=user, reason=comment),
                "refresh": lambda: change_request_refresh(change_request=change_request, actor=user),
            }
            if decision not in handlers:
                messages.error(request, "unknown decision")
            else:
                try:
                    handlers[decision]()
                except (ValidationError, PermissionDenied) as exc:
                    messages.error(request, f"{decision}: {_error_text(exc)}")
                else:
                    messages.success(request, f"{decision}: done")
                    return HttpResponseRedirect(request.path)
        change_request.refresh_from_db()
        version.refresh_from_db()
        workflow.refresh_from_db()
        live = workflow.live_version
        base = change_request.base_version if version.state == VersionState.LIVE else (live if live != version else change_request.base_version)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Review: {workflow} v{version.number}",
            "cr": change_request,
            "version": version,
            "workflow": workflow,
            "diff": gov.version_diff(old=base, new=version),
            "fingerprint": gov.version_fingerprint(version=version),
            "entries": change_request.entries.select_related("actor").order_by("at", "id"),
            "form": DecisionForm(initial={"fingerprint": gov.version_fingerprint(version=version)}),
            "can_review": user_can(user, REVIEW, workflow) and version.state == VersionState.IN_REVIEW,
            "can_reject": user_can(user, REVIEW, workflow) and version.state in (VersionState.IN_REVIEW, VersionState.APPROVED) and not version.is_frozen,
            "can_publish": user_can(user, PUBLISH, workflow) and version.state == VersionState.APPROVED,
            "can_canary": user_can(user, PUBLISH, workflow) and version.state == VersionState.APPROVED and workflow.live_version_id is not None,
            "can_comment": user_can(user, PROPOSE, workflow) or user_can(user, REVIEW, workflow),
            "is_canary": workflow.canary_version_id == version.pk,
            "canary_percent": workflow.canary_percent,
            "stage": version.stage,
        }
        return render(request, "admin/journeys/change_request.html", context)


# --------------------------------------------------------------------------- audit log, switches, reports



@admin.register(AuditEntry)
class AuditEntryAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    list_display = ("at", "actor", "action", "workflow", "version", "change_request", "reason")
    list_filter = ("action", "workflow")
    search_fields = ("reason", "action", "workflow__name")
    list_select_related = ("actor", "workflow", "version", "change_request")

    def get_queryset(self, request):
        return audit_entries_for_user(request.user) & super().get_queryset(request)

    def has_view_permission(self, request, obj=None):
        return user_has_any_scope(request.user) if obj is None else audit_entries_for_user(request.user).filter(pk=obj.pk).exists()


@admin.register(OperationsSwitch)
class OperationsSwitchAdmin(SimpleHistoryAdmin, ReadOnlyAdmin):
    list_display = ("__str__", "scope", "key", "active", "reason", "changed_by", "changed_at")

    def revert_disabled(self, request, obj=None):
        return True


class AuditForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=365, error_messages={
        "invalid": "write a whole number of days, e.g. 14", "required": "say how many days back the audit looks"})


class SwitchForm(forms.Form):
    active = forms.ChoiceField(choices=[("on", "on"), ("off", "off")], label="Global safe mode")
    reason = forms.CharField(widget=forms.TextInput(attrs={"size": 60}))


@admin.register(AuditReport)
class AuditReportAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "days", "trigger")
    change_form_template = "admin/journeys/audit_report.html"

    def has_module_permission(self, request):
        return user_can_view_dashboard(request.user)

    def has_view_permission(self, request, obj=None):
        return user_can_view_dashboard(request.user)

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="journeys_ops_dashboard"),
        ] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        report = _object_or_404(AuditReport.objects.all(), object_id)
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "report": report})

    def dashboard_view(self, request):
        """Ops dashboard: switches, canaries, reviews waiting, and the latest audit."""
        if not user_can_view_dashboard(request.user):
            raise DjangoPermissionDenied
        can_operate = request.user.is_superuser or request.user.has_perm("journeys.operate_workflow")
        form = SwitchForm(request.POST or None) if request.POST.get("form") == "switch" else SwitchForm()
        if request.method == "POST":
            try:
                if request.POST.get("form") == "audit":
                    audit_form = AuditForm(request.POST)
                    if not audit_form.is_valid():
                        raise ValidationError(audit_form.errors.as_data())
                    gov.audit_run(days=audit_form.cleaned_data["days"], trigger="admin")
                    messages.success(request, "audit finished")
                elif form.is_valid():
                    data = form.cleaned_data
                    gov.safe_mode_set(active=data["active"] == "on", actor=request.user, reason=data["reason"])
                    messages.success(request, f"safe mode {data['active']}")
                    return HttpResponseRedirect(request.path)
            except (ValidationError, PermissionDenied) as exc:
                messages.error(request, _error_text(exc))
            else:
                if request.POST.get("form") == "audit":
                    return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Ops dashboard",
            "safe_mode": gov.safe_mode_active(),
            "switches": OperationsSwitch.objects.filter(active=True),
            "paused": workflows_for_user(request.user, VIEW).filter(status="paused"),
            "canaries": workflows_for_user(request.user, VIEW).filter(canary_version__isnull=False)
            .select_related("canary_version", "live_version"),
            "open_requests": change_requests_for_user(request.user).filter(status=ChangeRequestStatus.OPEN)
            .select_related("workflow", "version"),
            "report": AuditReport.objects.first(),
            "form": form,
            "can_operate": can_operate,
            "now": timezone.now(),
        }
        return render(request, "admin/journeys/dashboard.html", context)


# --------------------------------------------------------------------------- runs


class StepExecutionInline(admin.TabularInline):
    model = StepExecution
    fields = ("step_key", "step_kind", "visit", "outcome", "error", "started_at", "finished_at", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return True


@admin.register(JourneyRun)
class JourneyRunAdmin(RunScopeMixin, admin.ModelAdmin):
    list_display = ("id", "workflow", "version", "customer", "status", "current_step", "next_wake_at", "converted_at", "created_at")
    # Only the workflows of runs the viewer may see (an editor never learns other units' workflow names).
    list_filter = ("status", ("workflow", admin.RelatedOnlyFieldListFilter))
    search_fields = ("customer__external_id", "customer__email", "trigger_key")
    list_select_related = ("workflow", "version", "customer")
    inlines = [StepExecutionInline]
    actions = ["retry_failed"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Retry the selected failed runs", permissions=["change"])
    def retry_failed(self, request, queryset):
        for run in queryset.filter(status=RunStatus.FAILED):
            try:
                run_retry(run=run, now=timezone.now())
            except RunFailed as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(request, f"run {run.pk} retried: now {run.status}")



# --------------------------------------------------------------------------- the step editor (a form per kind)


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    """A step's own page: pick a kind, then fill in that kind's form (journeys.forms_steps).

    Reached from a version's page ("Add a step", "edit" on each step row); saving goes through
    `step_save`, which re-checks that the version may change and who is changing it.
    """

    list_display = ("key", "kind", "name", "version")
    list_select_related = ("version__workflow",)
    search_fields = ("key", "name", "version__workflow__name")
    list_filter = ("kind",)

    def has_module_permission(self, request):
        return False  # steps are edited from their version

    def get_queryset(self, request):
        return super().get_queryset(request).filter(version__in=versions_for_user(request.user, VIEW))

    def has_view_permission(self, request, obj=None):
        return user_has_any_scope(request.user) if obj is None else user_can(request.user, VIEW, obj.version.workflow)

    def has_add_permission(self, request):
        return workflows_for_user(request.user, EDIT).exists()

    def has_change_permission(self, request, obj=None):
        return self.has_add_permission(request) if obj is None else _version_editable(request.user, obj.version)

    def has_delete_permission(self, request, obj=None):
        return False  # removed on the version's page, where edges go with it

    def add_view(self, request, form_url="", extra_context=None):
        version_id = request.GET.get("version", "")
        version = WorkflowVersion.objects.select_related("workflow").filter(pk=version_id).first() \
            if version_id.isdigit() else None
        if version is None:  # steps belong to a version: send people to the versions, saying why
            messages.warning(request, f"No workflow version with id {version_id!r}: open a draft version and use "
                             "“Add a step” there." if version_id else
                             "Steps belong to a workflow version: open a draft version and use “Add a step”.")
            return HttpResponseRedirect(reverse("admin:journeys_workflowversion_changelist"))
        return self._step_page(request, version, None)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        step = _object_or_404(Step.objects.select_related("version__workflow"), object_id)
        return self._step_page(request, step.version, step)

    @staticmethod
    def _locked_reason(user, version: WorkflowVersion) -> str:
        """Why this version's steps cannot change for this user, in words that say what to do."""
        if not user_can(user, EDIT, version.workflow):
            return f"You may look at {version.workflow} but not edit it."
        return (f"{version.workflow} v{version.number} cannot change here ({version.stage}); create a new draft from it "
                "(action “Create a new draft from this version”) to edit its steps.")

    def _step_page(self, request, version: WorkflowVersion, step: Step | None):
        from journeys.forms_steps import kind_choices, step_form_class

        if not user_can(request.user, VIEW, version.workflow):
            raise DjangoPermissionDenied
        editable = _version_editable(request.user, version)
        kind = "" if "pick" in request.GET else request.GET.get("kind") or (step.kind if step else "")
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "version": version,
                   "step": step, "editable": editable, "kinds": kind_choices(), "kind": kind,
                   "locked_reason": "" if editable else self._locked_reason(request.user, version),
                   "version_url": reverse("admin:journeys_workflowversion_change", args=[version.pk])}
        if not editable and request.method == "POST" and "_preview" not in request.POST:
            raise DjangoPermissionDenied
        if not editable and (step is None or kind != step.kind):  # nothing to add or re-kind: say why
            messages.error(request, context["locked_reason"])
            return HttpResponseRedirect(reverse("admin:journeys_step_change", args=[step.pk]) if step
                                        else context["version_url"])
        if not kind:
            context["kind"] = step.kind if step else ""  # the current kind is ticked
            context["title"] = (f"Step {step.key}: choose another kind" if step else
                                f"Add a step to {version.workflow} v{version.number}: choose its kind")
            return render(request, "admin/journeys/step/kind_picker.html", context)
        try:
            form_class = step_form_class(kind)
        except ValidationError as exc:
            if step is not None and kind == step.kind:  # a stored kind no longer registered: pick another
                messages.error(request, f"Step {step.key}: {_error_text(exc)}")
                return HttpResponseRedirect(f"{request.path}?pick=1" if editable else context["version_url"])
            messages.error(request, _error_text(exc))
            return HttpResponseRedirect(request.path if step is not None else f"{request.path}?version={version.pk}")
        posting = request.method == "POST" and "_preview" not in request.POST
        form = form_class(request.POST if request.method == "POST" else None, version=version, step=step)
        reason_form = StepReasonForm(request.POST if posting else None)
        preview = None
        if request.method == "POST" and "_preview" in request.POST and form.is_valid():
            from journeys.selectors_console import template_preview

            data = form.cleaned_data
            preview = template_preview(user=request.user, template=data.get("template", ""),
                                       locale=data.get("preview_locale", ""),
                                       customer_ref=data.get("preview_customer", ""),
                                       event_name=version.trigger_event)
        elif posting and form.is_valid() and reason_form.is_valid():
            try:
                data = form.cleaned_data
                saved = step_save(version=form.version, step=form.step, key=data["key"], kind=form.kind,
                                  name=data.get("name", ""), config=form.config, after=data.get("after", ""),
                                  actor=request.user, reason=reason_form.cleaned_data["change_reason"])
            except (ValidationError, PermissionDenied) as exc:
                form.add_error(None, _error_text(exc))
            else:
                messages.success(request, f"Step {saved.key} ({saved.kind}) saved.")
                if "_addanother" in request.POST:
                    return HttpResponseRedirect(f"{reverse('admin:journeys_step_add')}?version={version.pk}")
                if "_continue" in request.POST:
                    return HttpResponseRedirect(reverse("admin:journeys_step_change", args=[saved.pk]))
                return HttpResponseRedirect(context["version_url"])
        label = STEP_KINDS[kind].label
        context.update(form=form, reason_form=reason_form, preview=preview, kind_label=label,
                       kind_help=STEP_KINDS[kind].help, form_help=getattr(form, "help", ""),
                       title=f"{'Edit step ' + step.key if step else 'Add a step'}: {label}",
                       media=self.media + form.media)
        return render(request, "admin/journeys/step/step_form.html", context)


class StepReasonForm(forms.Form):
    change_reason = forms.CharField(label="Reason for this change", max_length=500, help_text=REASON_HELP,
                                    widget=forms.TextInput(attrs={"size": 80}))


# --------------------------------------------------------------------------- background jobs


class JobStartForm(forms.Form):
    """What a job needs, by kind: a file and a source (imports), a version (replay), a customer (export)."""

    file = forms.FileField(required=False, help_text="CSV (UTF-8) with a header row, a JSON list of objects, or JSON lines",
                           error_messages={"empty": "the uploaded file is empty: choose a CSV or JSON file with rows"})
    source = forms.ModelChoiceField(queryset=None, required=False,
                                    help_text="the event source the imported rows are attributed to "
                                              "(its schema policy applies)")
    version = forms.ModelChoiceField(queryset=None, required=False, help_text="the version to replay")
    days = forms.IntegerField(required=False, min_value=1, max_value=60, initial=7,
                              help_text="replay the events of this many past days")
    customer = forms.CharField(required=False, help_text="the customer's user id or email")

    FIELDS = {"import_customers": ("file", "source"), "import_events": ("file", "source"),
              "replay": ("version", "days"), "export": ("customer",)}

    def __init__(self, *args, kind: str, user, **kwargs):
        from journeys.models import Source

        super().__init__(*args, **kwargs)
        self.kind = kind
        self.fields["source"].queryset = Source.objects.exclude(name="internal").order_by("name")
        editable = versions_for_user(user, REVIEW if user_has_global(user, REVIEW) else EDIT)
        self.fields["version"].queryset = editable.select_related("workflow").order_by("workflow__name", "-number")
        for name in list(self.fields):
            if name not in self.FIELDS[kind]:
                del self.fields[name]
            elif name != "days":
                self.fields[name].required = True

    def params(self) -> dict:
        data = self.cleaned_data
        if self.kind == "replay":
            return {"version_id": data["version"].pk, "days": data.get("days") or 7}
        if self.kind == "export":
            return {"customer_id": self.customer.pk}
        return {"source_id": data["source"].pk}

    def clean_customer(self):
        from journeys.selectors_console import customer_find

        value = self.cleaned_data["customer"].strip()
        self.customer = customer_find(value=value)
        if self.customer is None:
            raise ValidationError(f"no customer with id or email {value!r}")
        return value

    def clean_file(self):
        """Refuse, saying what to do, what the import cannot read: spreadsheets and other binary
        files, text that is not UTF-8, a CSV header without rows, JSON that does not parse."""
        upload = self.cleaned_data["file"]
        from journeys.services.jobs import MAX_INPUT_BYTES

        name = upload.name or "the file"
        if upload.size > MAX_INPUT_BYTES:  # before reading it into memory
            raise ValidationError(f"{name} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MB: split it into "
                                  "smaller files and import them one after the other")
        raw = upload.read()
        binary = next((what for magic, what in BINARY_FILES if raw.startswith(magic)), None)
        if binary:
            raise ValidationError(f"{name} is {binary}, not CSV or JSON text: export it as CSV (UTF-8) or JSON "
                                  "and upload that")
        extension = os.path.splitext(name)[1].lower()
        if extension and extension not in UPLOAD_EXTENSIONS:
            raise ValidationError(f"{name}: choose a .csv, .json or .jsonl file (not {extension})")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ValidationError(f"{name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): save it "
                                  "as UTF-8 (\u201cCSV UTF-8\u201d in Excel) and upload it again") from None
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ValidationError(self.fields["file"].error_messages["empty"])
        start = text.lstrip()[:1]
        if start in ("[", "{"):
            try:
                whole = json.loads(text)
            except ValueError as exc:
                if start == "[":
                    raise ValidationError(f"{name} is not valid JSON: {exc}") from None
            else:
                if isinstance(whole, dict) and len(lines) > 1:  # one pretty-printed object, not JSON lines
                    raise ValidationError(f"{name} holds a single JSON object over several lines: put the rows "
                                          "in a JSON list ([{...}, {...}]) or write one object per line")
        elif len(lines) == 1:
            raise ValidationError(f"{name} has a header row ({lines[0][:60]}) and no rows below it: the first "
                                  "line names the columns (e.g. user_id,email), each line after it is one row")
        self.text = text
        return upload


UPLOAD_EXTENSIONS = (".csv", ".json", ".jsonl", ".ndjson", ".txt")
# What people upload by mistake, told apart by the first bytes of the file.
BINARY_FILES = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx or OpenDocument spreadsheet?)"),
    (b"\xd0\xcf\x11\xe0", "an old Office file (Excel .xls?)"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Long operations: start one (the add page), watch its progress and read its result (its page)."""

    list_display = ("id", "kind", "status", "progress", "created_by", "created_at", "finished_at")
    list_filter = ("kind", "status")
    list_select_related = ("created_by",)

    @admin.display(description="progress")
    def progress(self, obj):
        return f"{obj.percent}%"

    def get_queryset(self, request):
        from journeys.selectors_console import jobs_for_user

        return jobs_for_user(request.user) & super().get_queryset(request)

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and (
            self.has_add_permission(request) or jobs_for_user_exists(request.user))

    def has_view_permission(self, request, obj=None):
        from journeys.selectors_console import jobs_for_user

        if obj is None:
            return self.has_module_permission(request)
        return jobs_for_user(request.user).filter(pk=obj.pk).exists()

    def has_add_permission(self, request):
        return _may_start_data_jobs(request.user) or workflows_for_user(request.user, EDIT).exists() or \
            user_has_global(request.user, REVIEW)

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def add_view(self, request, form_url="", extra_context=None):
        from journeys.models import JobKind
        from journeys.services.jobs import CONSOLE_KINDS, job_start

        kinds = [(k, label) for k, label in JobKind.choices if k in CONSOLE_KINDS
                 and ((k == JobKind.REPLAY and self.has_add_permission(request)) or _may_start_data_jobs(request.user))]
        kind = request.GET.get("kind", "")
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "kinds": kinds, "kind": kind,
                   "title": "Start a background job"}
        if kind not in dict(kinds):
            if kind:
                messages.error(request, f"{kind!r} is not a job you can start here; choose one of the jobs below.")
            return render(request, "admin/journeys/job/start.html", context)
        form = JobStartForm(request.POST if request.method == "POST" else None, request.FILES or None, kind=kind, user=request.user,
                            initial={"version": request.GET.get("version"), "customer": request.GET.get("customer")})
        if request.method == "POST" and form.is_valid():
            try:
                job = job_start(kind=kind, actor=request.user, params=form.params(),
                                input_name=getattr(form.cleaned_data.get("file"), "name", "") or "",
                                input_text=getattr(form, "text", ""))
            except PermissionDenied as exc:
                form.add_error(None, str(exc))
            except JourneyError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                return HttpResponseRedirect(reverse("admin:journeys_job_change", args=[job.pk]))
        context.update(form=form, title=f"Start: {dict(kinds)[kind]}")
        return render(request, "admin/journeys/job/start.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        from journeys.services.jobs import jobs_purge_exports
        from journeys.views_console import job_status

        jobs_purge_exports()
        job = _object_or_404(self.get_queryset(request), object_id)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "job": job,
                   "status": job_status(job), "title": f"Job #{job.pk}: {job.get_kind_display()}"}
        return render(request, "admin/journeys/job/job.html", context)


def _may_start_data_jobs(user) -> bool:
    from journeys.services.jobs import DATA_JOB_PERM

    return bool(user.is_active and (user.is_superuser or user.has_perm(DATA_JOB_PERM)))


def jobs_for_user_exists(user) -> bool:
    from journeys.selectors_console import jobs_for_user

    return jobs_for_user(user).exists()
