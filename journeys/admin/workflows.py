"""Workflows: create, import, compare versions, roll back, stop a canary, pause and resume."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import NewestRowsInline, ReasonForm, StalePageMixin, form_rename_check
from journeys.admin.common import (
    HistoryReasonMixin,
    ReasonActionForm,
    ScopedAdminMixin,
    VisibleUnitFilter,
    error_messages,
    error_text,
)
from journeys.console.governance import version_pair
from journeys.errors import JourneyError, PermissionDenied
from journeys.models import (
    Workflow,
    WorkflowVersion,
)
from journeys.selectors import (
    EDIT,
    OPERATE,
    PUBLISH,
    VIEW,
    business_units_for_user,
    user_can,
    user_has_any_scope,
    user_has_global,
    user_has_units,
    user_has_workflows,
    workflows_for_user,
)
from journeys.services import governance as gov
from journeys.services.event_parsing import json_read_storable
from journeys.services.workflows import (
    releases_token,
    workflow_canary_stop,
    workflow_create,
    workflow_import,
    workflow_rollback,
    workflow_save,
    workflow_token,
)


RELEASES_SHOWN = "releases_{pk}"  # the hidden input of a list row: the live and canary versions it showed
RELEASES_NOT_SHOWN = "this page does not say which live version it showed: reload it, then try again"
VERSIONS_SHOWN = 20  # on a workflow's page; all of them on the versions list, filtered to the workflow


class VersionInline(NewestRowsInline, admin.TabularInline):
    """The newest VERSIONS_SHOWN versions only: a workflow changed daily for years has hundreds,
    and its page must not grow with them (the "versions" line links to all of them)."""

    model = WorkflowVersion
    fk_name = "workflow"
    shown = VERSIONS_SHOWN
    ordering = ("-number",)
    list_select_related = ("workflow",)  # each row is shown by its name
    verbose_name_plural = f"latest versions (at most {VERSIONS_SHOWN}, newest first)"
    fields = ("number", "state", "trigger_kind", "trigger_event", "published_at")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    can_delete = False

    def full_list_url(self, request, obj):
        return reverse("admin:journeys_workflowversion_changelist") + f"?workflow__id__exact={obj.pk}"

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

    def clean_name(self):
        return form_rename_check(self, what="workflow")  # workflow_save checks again under the row's lock


@admin.register(Workflow)
class WorkflowAdmin(ScopedAdminMixin, StalePageMixin, HistoryReasonMixin, SimpleHistoryAdmin):
    form = WorkflowForm
    action_form = ReasonActionForm
    list_display = ("name", "business_unit", "status", "live_version_link", "canary", "updated_at")
    list_filter = ("status", ("business_unit", VisibleUnitFilter))
    search_fields = ("name", "description")
    readonly_fields = ("status", "live_version", "canary_version", "canary_percent", "versions", "created_by",
                       "created_at", "updated_at")
    inlines = [VersionInline]
    actions = ["rollback", "stop_canary", "pause", "resume"]

    @admin.display(description="live version")
    def live_version_link(self, obj):
        # The releases this row shows, posted with an action: a rollback or canary stop acts on them or is refused.
        shown = format_html('<input type="hidden" name="{}" value="{}">', RELEASES_SHOWN.format(pk=obj.pk),
                            releases_token(workflow=obj))
        if not obj.live_version_id:
            return format_html("-{}", shown)
        url = reverse("admin:journeys_workflowversion_change", args=[obj.live_version_id])
        return format_html('<a href="{}">v{}</a>{}', url, obj.live_version.number, shown)

    @admin.display(description="versions")
    def versions(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        count = obj.versions.count()
        url = reverse("admin:journeys_workflowversion_changelist") + f"?workflow__id__exact={obj.pk}"
        shown = "listed below" if count <= VERSIONS_SHOWN else f"the latest {VERSIONS_SHOWN} are listed below"
        return format_html('{} ({}): <a href="{}">all versions of this workflow</a>', count, shown, url)

    def get_history_queryset(self, request, history_manager, pk_name, object_id):
        """The history rows name their live and canary versions, and a version is named by its workflow."""
        return super().get_history_queryset(request, history_manager, pk_name, object_id).select_related(
            "live_version__workflow", "canary_version__workflow")

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
            return user_has_workflows(request.user, EDIT) or user_has_units(request.user)
        return user_can(request.user, EDIT, obj)

    def has_add_permission(self, request):
        return user_has_units(request.user, EDIT)

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
                for msg in error_messages(exc):
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
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            form.add_error("file", f"{upload.name} is not a workflow export (not JSON text): {hint}")
            return None
        try:
            return json_read_storable(text, max_bytes=10 * 1024 * 1024)
        except JourneyError as exc:
            where = "" if exc.field in (None, "", "body") else f", at {exc.field},"
            form.add_error("file", f"{upload.name}{where} {exc.message}: {hint}")
        return None

    def diff_view(self, request, pk):
        """Any two versions of a workflow, side by side: settings, steps, edges, rules, templates."""
        workflow = get_object_or_404(Workflow, pk=pk)
        if not user_can(request.user, VIEW, workflow):
            raise DjangoPermissionDenied
        pair = version_pair(workflow=workflow, old_id=request.GET.get("a", ""), new_id=request.GET.get("b", ""))
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "workflow": workflow, **pair,
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
        # the form's fields only, under the row's lock, unless changed since the page was opened
        workflow_save(workflow=obj, actor=request.user, reason=reason, loaded=self.loaded(form))

    def page_token(self, obj) -> str:
        return workflow_token(workflow=obj)

    def _each(self, request, queryset, func, done: str):
        reason = request.POST.get("reason", "")
        for workflow in queryset:
            try:
                result = func(workflow, reason)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{workflow}: {error_text(exc)}", messages.ERROR)
            else:
                self.message_user(request, f"{workflow}: {done(result) if callable(done) else done}")

    @staticmethod
    def _shown(request, workflow) -> str:
        """The releases of `workflow` the page showed (`releases_token`), refused when it does not say."""
        loaded = request.POST.get(RELEASES_SHOWN.format(pk=workflow.pk))
        if loaded is None:
            raise ValidationError(RELEASES_NOT_SHOWN)
        return loaded

    @admin.action(description="Roll back (previous version live again, or stop the canary)", permissions=["publish"])
    def rollback(self, request, queryset):
        def rollback_one(workflow, reason):
            return workflow.live_version_id, workflow_rollback(workflow=workflow, actor=request.user, reason=reason,
                                                               loaded=self._shown(request, workflow))

        def said(result) -> str:
            live_before, live = result  # the same live version: the rollback stopped a canary
            if live is None or live.pk == live_before:
                return f"canary stopped; v{live.number} stays live" if live else "canary stopped"
            return f"rolled back: v{live.number} is live again"

        self._each(request, queryset, rollback_one, said)

    @admin.action(description="Stop the canary", permissions=["publish"])
    def stop_canary(self, request, queryset):
        self._each(request, queryset, lambda w, r: workflow_canary_stop(workflow=w, actor=request.user, reason=r,
                                                                        loaded=self._shown(request, w)),
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
