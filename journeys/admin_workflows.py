"""Admin for workflows, versions, steps and runs (thin: services do the work)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from simple_history.admin import SimpleHistoryAdmin

from journeys.choices import RunStatus
from journeys.engine.registry import STEP_KINDS, get_kind
from journeys.engine.runner import RunFailed, run_retry
from journeys.models import BusinessUnit, Edge, JourneyRun, Step, StepExecution, Workflow, WorkflowVersion
from journeys.services.workflows import (
    version_check_editable,
    version_new_draft,
    version_publish,
    version_validate,
    workflow_export,
    workflow_import,
)


def _messages_from(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{k}: {m}" if k != "__all__" else m for k, msgs in exc.message_dict.items() for m in msgs]
    return exc.messages


@admin.register(BusinessUnit)
class BusinessUnitAdmin(SimpleHistoryAdmin):
    list_display = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


class VersionInline(admin.TabularInline):
    model = WorkflowVersion
    fields = ("number", "state", "trigger_kind", "trigger_event", "published_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class WorkflowImportForm(forms.Form):
    file = forms.FileField(help_text="a JSON file exported from this console")
    name = forms.CharField(required=False, help_text="import under another workflow name (optional)")


@admin.register(Workflow)
class WorkflowAdmin(SimpleHistoryAdmin):
    list_display = ("name", "business_unit", "status", "live_version_link", "updated_at")
    list_filter = ("status", "business_unit")
    search_fields = ("name", "description")
    readonly_fields = ("live_version", "created_by", "created_at", "updated_at")
    inlines = [VersionInline]

    @admin.display(description="live version")
    def live_version_link(self, obj):
        if not obj.live_version_id:
            return "-"
        url = reverse("admin:journeys_workflowversion_change", args=[obj.live_version_id])
        return format_html('<a href="{}">v{}</a>', url, obj.live_version.number)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("business_unit", "live_version")

    def get_urls(self):
        return [path("import/", self.admin_site.admin_view(self.import_view), name="journeys_workflow_import")] + super().get_urls()

    def import_view(self, request):
        form = WorkflowImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                data = json.loads(form.cleaned_data["file"].read().decode("utf-8"))
                version = workflow_import(data=data, actor=request.user, name=form.cleaned_data["name"] or None)
            except (ValueError, UnicodeDecodeError) as exc:
                form.add_error("file", f"not a valid JSON export: {exc}")
            except ValidationError as exc:
                for msg in _messages_from(exc):
                    form.add_error(None, msg)
            else:
                messages.success(request, f"Imported as a draft: {version}")
                return HttpResponseRedirect(reverse("admin:journeys_workflowversion_change", args=[version.pk]))
        context = {**self.admin_site.each_context(request), "form": form, "title": "Import a workflow", "opts": self.model._meta}
        return render(request, "admin/journeys/import.html", context)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        obj._change_reason = "edited in admin" if change else "created in admin"
        super().save_model(request, obj, form, change)


class StepForm(forms.ModelForm):
    class Meta:
        model = Step
        fields = ("key", "kind", "name", "config", "x", "y")
        widgets = {"kind": forms.Select(choices=[]), "config": forms.Textarea(attrs={"rows": 3, "cols": 60})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].widget.choices = [(k, f"{v.label} ({k})") for k, v in sorted(STEP_KINDS.items())]
        self.fields["config"].help_text = "; ".join(
            f"{k}: {', '.join(v.fields)}" for k, v in sorted(STEP_KINDS.items()) if v.fields
        )

    def clean(self):
        data = super().clean()
        kind_name = data.get("kind")
        if kind_name:
            try:
                data["config"] = get_kind(kind_name).clean(data.get("config") or {})
            except ValidationError as exc:
                raise ValidationError({"config": _messages_from(exc)}) from None
        return data


class StepInline(admin.TabularInline):
    model = Step
    form = StepForm
    extra = 0


class EdgeInline(admin.TabularInline):
    model = Edge
    fields = ("source", "outcome", "target")
    extra = 0

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        version_id = request.resolver_match.kwargs.get("object_id")
        if db_field.name in ("source", "target") and version_id:
            kwargs["queryset"] = Step.objects.filter(version_id=version_id)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class DryRunForm(forms.Form):
    customer = forms.CharField(help_text="user id or email")
    event = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), help_text='e.g. {"event": "Checkout Started", "properties": {"total": 80}}')
    later_events = forms.CharField(required=False, help_text="comma-separated events assumed to arrive while waiting")


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(SimpleHistoryAdmin):
    list_display = ("workflow", "number", "state", "trigger_kind", "trigger_event", "published_at")
    list_filter = ("state", "trigger_kind", "workflow__business_unit")
    search_fields = ("workflow__name", "trigger_event")
    readonly_fields = ("state", "frozen_at", "published_at", "created_by", "validation")
    inlines = [StepInline, EdgeInline]
    actions = ["publish", "new_draft", "export_json"]
    fieldsets = (
        (None, {"fields": ("workflow", "number", "state", "notes", "validation")}),
        ("Trigger", {"fields": ("trigger_kind", "trigger_event", "trigger_config")}),
        ("Entry and exit", {"fields": ("entry_step", "entry_rule", "reentry_policy", "reentry_cooldown_s",
                                       "allow_concurrent_runs", "goal_event", "goal_filter")}),
        ("Publishing", {"fields": ("frozen_at", "published_at", "created_by")}),
    )

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.is_frozen:
            return [f.name for f in self.model._meta.fields] + ["validation"]
        return self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj)

    def get_inlines(self, request, obj):
        return self.inlines

    def get_inline_instances(self, request, obj=None):
        instances = super().get_inline_instances(request, obj)
        if obj is not None and obj.is_frozen:
            for inline in instances:
                inline.has_add_permission = lambda *a, **k: False
                inline.has_change_permission = lambda *a, **k: False
                inline.has_delete_permission = lambda *a, **k: False
        return instances

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
            version_check_editable(version=WorkflowVersion.objects.get(pk=obj.pk))
        else:
            obj.created_by = request.user
        obj._change_reason = "edited in admin"
        super().save_model(request, obj, form, change)

    def get_urls(self):
        return [
            path("<int:pk>/dry-run/", self.admin_site.admin_view(self.dry_run_view), name="journeys_workflowversion_dry_run"),
        ] + super().get_urls()

    def dry_run_view(self, request, pk):
        from journeys.models import Identity
        from journeys.services.dry_run import version_dry_run

        version = WorkflowVersion.objects.get(pk=pk)
        form = DryRunForm(request.POST or None)
        report = None
        if request.method == "POST" and form.is_valid():
            value = form.cleaned_data["customer"].strip()
            identity = Identity.objects.filter(value__in=[value, value.lower()]).select_related("customer").first()
            try:
                payload = json.loads(form.cleaned_data["event"])
                if not isinstance(payload, dict):
                    raise ValueError("must be a JSON object")
            except ValueError as exc:
                form.add_error("event", f"not valid JSON: {exc}")
            else:
                if identity is None:
                    form.add_error("customer", f"no customer with id or email {value!r}")
                else:
                    later = [e.strip() for e in form.cleaned_data["later_events"].split(",") if e.strip()]
                    report = version_dry_run(version=version, customer=identity.customer, event=payload, later_events=later)
        context = {**self.admin_site.each_context(request), "form": form, "report": report, "version": version,
                   "title": f"Dry run of {version}", "opts": self.model._meta}
        return render(request, "admin/journeys/dry_run.html", context)

    @admin.action(description="Publish (make live)", permissions=["change"])
    def publish(self, request, queryset):
        for version in queryset:
            try:
                version_publish(version=version, actor=request.user, reason=f"published in admin by {request.user}")
            except ValidationError as exc:
                self.message_user(request, f"{version}: cannot publish: {'; '.join(_messages_from(exc))}", messages.ERROR)
            else:
                self.message_user(request, f"{version.workflow} v{version.number} is live")

    @admin.action(description="Create a new draft from this version", permissions=["add"])
    def new_draft(self, request, queryset):
        for version in queryset:
            draft = version_new_draft(version=version, actor=request.user)
            self.message_user(request, f"Created draft v{draft.number} of {draft.workflow}")

    @admin.action(description="Export as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        version = queryset.first()
        data = json.dumps(workflow_export(version=version), indent=2)
        response = HttpResponse(data, content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{version.workflow.name}-v{version.number}.json"'
        return response


class StepExecutionInline(admin.TabularInline):
    model = StepExecution
    fields = ("step_key", "step_kind", "visit", "outcome", "error", "started_at", "finished_at", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(JourneyRun)
class JourneyRunAdmin(admin.ModelAdmin):
    list_display = ("id", "workflow", "version", "customer", "status", "current_step", "next_wake_at", "converted_at", "created_at")
    list_filter = ("status", "workflow")
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
