"""Workflow versions: the version page with its steps and edges, validation, dry run, propose,
and the review and publishing actions (approve, reject, publish, canary, new draft, export)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import ReasonForm, StalePageMixin
from journeys.admin.common import (
    HistoryReasonMixin,
    ReasonActionForm,
    RefusedActionMixin,
    ScopedAdminMixin,
    VisibleUnitFilter,
    error_text,
    version_editable,
)
from journeys.choices import TriggerKind, VersionState
from journeys.console.governance import version_tools
from journeys.engine.registry import STEP_KINDS
from journeys.errors import JourneyError, PermissionDenied
from journeys.models import (
    Edge,
    Step,
    WorkflowVersion,
)
from journeys.rules import RuleSyntaxError
from journeys.selectors import (
    EDIT,
    PROPOSE,
    PUBLISH,
    REVIEW,
    VIEW,
    user_can,
    user_has_any_scope,
    user_has_global,
    user_has_workflows,
    versions_for_user,
    workflows_for_user,
)
from journeys.services import governance as gov
from journeys.services.drafts import SETTINGS, version_settings_clean
from journeys.services.dry_run import TRIGGERS_EVENT_OPTIONAL, TRIGGERS_WITHOUT_EVENT, version_dry_run
from journeys.services.event_parsing import json_read_storable
from journeys.services.segments import trigger_audience
from journeys.services.testsend import step_test_send, version_message_steps
from journeys.services.workflows import (
    CHANGED_MEANWHILE,
    RETURNED_TO_REVIEW,
    TRIGGER_CONFIG_NOT_OBJECT,
    version_approve,
    version_canary_start,
    version_new_draft,
    version_note_changed,
    version_publish,
    version_reject,
    version_save,
    version_stage,
    version_submit,
    version_token,
    version_validate,
    workflow_export,
)

class VersionChildInline(admin.TabularInline):
    """Steps and edges may change exactly when their version may."""

    extra = 0

    def _editable(self, request, obj) -> bool:
        if obj is None:  # asked without a version (the inline's queryset): the user's general reach
            return user_has_workflows(request.user, EDIT)
        return version_editable(request.user, obj)

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
        self.editable = obj is not None and version_editable(request.user, obj)
        return super().get_formset(request, obj, **kwargs)

    @admin.display(description="kind")
    def kind_label(self, obj):
        kind = STEP_KINDS.get(obj.kind)
        return f"{kind.label} ({obj.kind})" if kind else f"{obj.kind} (unknown kind)"

    @admin.display(description="config")
    def config_summary(self, obj):
        from journeys.forms.steps import config_summary

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


class StepChoicesOnceFormSet(BaseInlineFormSet):
    """Every edge row offers the version's steps as its source and target: read once for the
    page, not twice per row (a select's choices are otherwise read again for each form)."""

    def _construct_form(self, i, **kwargs):
        return self._shared(super()._construct_form(i, **kwargs))

    @property
    def empty_form(self):
        return self._shared(super().empty_form)

    def _shared(self, form):
        if not hasattr(self, "_step_choices"):
            self._step_choices = {name: list(form.fields[name].choices) for name in ("source", "target")
                                  if name in form.fields}
        for name, choices in self._step_choices.items():
            form.fields[name].choices = choices
        return form


class EdgeInline(VersionChildInline):
    model = Edge
    formset = StepChoicesOnceFormSet
    fields = ("source", "outcome", "target")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("source", "target")  # each row is named by its steps

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        version_id = request.resolver_match.kwargs.get("object_id")
        if db_field.name in ("source", "target") and version_id:
            kwargs["queryset"] = Step.objects.filter(version_id=version_id)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class DryRunForm(forms.Form):
    customer = forms.CharField(help_text="user id or email")
    event = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), help_text='e.g. {"event": "Checkout Started", "properties": {"total": 80}}')
    later_events = forms.CharField(required=False, help_text="comma-separated events assumed to arrive while waiting")

    def __init__(self, *args, trigger_kind: str = TriggerKind.EVENT, **kwargs):
        super().__init__(*args, **kwargs)
        if trigger_kind in TRIGGERS_WITHOUT_EVENT:  # a broadcast's or a date's runs start with no event
            del self.fields["event"]
        elif trigger_kind in TRIGGERS_EVENT_OPTIONAL:
            self.fields["event"].required = False
            self.fields["event"].help_text = ("optional: the event that brought the customer into the segment; "
                                              "leave empty for the hourly refresh (no event)")


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


class TestSendForm(forms.Form):
    step = forms.ChoiceField(help_text="the message step whose message is sent")
    to = forms.CharField(max_length=320, label="Send to",
                         help_text="your email address or phone number (as the step's channel takes it)")
    locale = forms.CharField(max_length=35, required=False, label="As sent to locale",
                             help_text="the message customers with this locale get, e.g. fr, pt-BR, ar (their "
                                       "language variant); empty: the template itself")

    def __init__(self, *args, steps=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["step"].choices = [(s.key, f"{s.key} ({STEP_KINDS[s.kind].summary(s.config or {})})")
                                       for s in steps]


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
        from journeys.forms.fields import RuleInput

        super().__init__(*args, **kwargs)
        version_id = self.instance.pk if self.instance else None
        for name, event in (("entry_rule", "trigger_event"), ("goal_filter", "goal_event")):
            if name in self.fields:  # checked as typed, like the rules of the step forms
                self.fields[name].widget = RuleInput(version_id=version_id,
                                                     event=getattr(self.instance, event, "") or "")

    def clean(self):
        cleaned = super().clean()
        if self.instance.pk is not None:  # read-only on a version's page; a forged value is refused
            for name, stored in (("workflow", self.instance.workflow_id), ("number", self.instance.number)):
                posted = self.data.get(self.add_prefix(name))
                if posted not in (None, "", str(stored)):
                    self.add_error(None, f"{name}: a version stays in its workflow under its number (its review and "
                                         "approval were given there); create a new draft instead")
        # the settings checked as the canvas's Trigger & entry panel checks them (one place): before,
        # this page saved a bad cron, a missing entry step or a broken goal filter
        values = {name: cleaned[name] for name in SETTINGS if name in cleaned}
        try:
            merged = version_settings_clean(version=self.instance, values=values)
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                self.add_error(name if name in self.fields else None, messages)
        else:
            if "trigger_config" in cleaned:
                cleaned["trigger_config"] = merged["trigger_config"]
        return cleaned

    def clean_trigger_config(self):
        config = self.cleaned_data.get("trigger_config")
        if not isinstance(config, dict):  # a list, a number, a string or null: no trigger reads it
            raise ValidationError(TRIGGER_CONFIG_NOT_OBJECT)
        return config


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(RefusedActionMixin, ScopedAdminMixin, StalePageMixin, HistoryReasonMixin,
                           SimpleHistoryAdmin):
    form = WorkflowVersionForm
    action_form = ReasonActionForm
    action_refusals = {
        "review": "approving and rejecting are for reviewers (the Approvers and Ops admins roles), and nobody "
                  "approves a change they wrote",
        "publish": "publishing and canaries are for publishers (the Approvers and Ops admins roles)",
        "propose": "proposing is for the editors of the workflow's business unit",
    }
    list_display = ("workflow", "number", "stage", "trigger_kind", "trigger_event", "published_at")
    list_filter = ("state", "trigger_kind", ("workflow__business_unit", VisibleUnitFilter))
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

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        return readonly if obj is None else (*readonly, "workflow", "number")

    def get_fieldsets(self, request, obj=None):
        if obj is not None and not self.has_change_permission(request, obj):
            return self.fieldsets[:-1]
        return super().get_fieldsets(request, obj)

    def _editable(self, request, obj) -> bool:
        return version_editable(request.user, obj)

    def has_view_permission(self, request, obj=None):
        return user_can(request.user, VIEW, obj.workflow) if obj is not None else user_has_any_scope(request.user)

    def has_change_permission(self, request, obj=None):
        if obj is None:
            return user_has_workflows(request.user, EDIT)
        return self._editable(request, obj)

    def has_add_permission(self, request):
        return user_has_workflows(request.user, EDIT)

    def has_delete_permission(self, request, obj=None):
        if obj is None:
            return request.user.is_superuser
        return request.user.is_superuser and obj.state == VersionState.DRAFT and not obj.is_frozen

    def has_propose_permission(self, request, obj=None):
        return user_has_workflows(request.user, PROPOSE)

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

    def page_token(self, obj) -> str:
        return version_token(version=obj)

    def save_model(self, request, obj, form, change):
        if change:  # only the settings, onto the row read again under its lock (refused if changed meanwhile)
            try:
                version_save(version=obj, actor=request.user, reason=self._reason(request, form),
                             loaded=self.loaded(form))
            except PermissionDenied as exc:
                raise DjangoPermissionDenied(str(exc)) from None
            return
        if not user_can(request.user, EDIT, obj.workflow):
            raise DjangoPermissionDenied
        obj.created_by = request.user
        obj._change_reason = self._reason(request, form)
        obj._history_user = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        try:
            saved = version_note_changed(version=form.instance, actor=request.user, reason=self._reason(request, form))
        except PermissionDenied as exc:
            raise DjangoPermissionDenied(str(exc)) from None
        # The page's copy still says what it was when posted: the message names the state it is in now.
        request._returned_to_review = (form.instance.state, saved.state) == (VersionState.APPROVED,
                                                                             VersionState.IN_REVIEW)
        form.instance.state = saved.state

    def response_change(self, request, obj):
        if getattr(request, "_returned_to_review", False):
            self.message_user(request, RETURNED_TO_REVIEW.format(number=obj.number) + ".", messages.WARNING)
        return super().response_change(request, obj)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST" and (version := self.get_object(request, unquote(object_id))) is not None:
            if user_can(request.user, EDIT, version.workflow) and not version_editable(request.user, version):
                # published, staged or retired since the page was opened: say so rather than 403
                said = CHANGED_MEANWHILE.format(number=version.number, stage=version_stage(version))
                self.message_user(request, said, messages.ERROR)
                return HttpResponseRedirect(request.path)
        extra_context = {**(extra_context or {}), **version_tools(version_id=object_id, user=request.user)}
        version = extra_context.get("version")
        if version is not None:
            extra_context["can_test_send"] = (user_can(request.user, EDIT, version.workflow)
                                              and bool(version_message_steps(version=version)))
            if request.method == "GET":  # what the trigger reaches now, for whoever reviews or publishes it
                extra_context["audience"] = trigger_audience(version=version)
        return super().change_view(request, object_id, form_url, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:  # (saved by someone else since the page was opened: StalePageMixin shows the page again)
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:  # refused while saving (under the row's lock): all of it rolled back
            if request.method != "POST" or object_id is None:
                raise
            self.message_user(request, error_text(exc), messages.ERROR)
            return HttpResponseRedirect(request.path)

    def get_urls(self):
        return [
            path("<int:pk>/dry-run/", self.admin_site.admin_view(self.dry_run_view), name="journeys_workflowversion_dry_run"),
            path("<int:pk>/propose/", self.admin_site.admin_view(self.propose_view), name="journeys_workflowversion_propose"),
            path("<int:pk>/test-send/", self.admin_site.admin_view(self.test_send_view),
                 name="journeys_workflowversion_test_send"),
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
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, f"Proposed for review: {change_request}")
                return HttpResponseRedirect(reverse("admin:journeys_changerequest_change", args=[change_request.pk]))
        report = version_validate(version=version)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "version": version,
                   "form": form, "report": report, "diff": gov.version_diff(old=version.workflow.live_version, new=version),
                   "title": f"Propose {version.workflow} v{version.number} for review"}
        return render(request, "admin/journeys/propose.html", context)

    def test_send_view(self, request, pk):
        """Send one message step's message to an address the person types (those who may edit the
        workflow): rendered with sample data, straight through the step's channel."""
        version = self._version_for(request, pk, EDIT)
        steps = version_message_steps(version=version)
        form = TestSendForm(request.POST or None, steps=steps)
        if request.method == "POST" and form.is_valid():
            try:
                result = step_test_send(version=version, step_key=form.cleaned_data["step"],
                                        to=form.cleaned_data["to"], locale=form.cleaned_data["locale"],
                                        actor=request.user)
            except PermissionDenied as exc:  # (a JourneyError too: first)
                raise DjangoPermissionDenied(str(exc)) from None
            except JourneyError as exc:
                form.add_error(exc.field if exc.field in ("to", "locale") else None, exc.message)
            except ValidationError as exc:
                to_only = getattr(exc, "error_dict", {}).keys() == {"to"}
                form.add_error("to" if to_only else None, "; ".join(exc.message_dict["to"]) if to_only
                               else error_text(exc))
            else:
                where = f"{result['to']} through {result['channel']}"
                if result["sent"]:
                    missing = f"; no sample value for {', '.join(result['missing'])}" if result["missing"] else ""
                    variant = f" in the {result['locale']} variant" if result.get("locale") else ""
                    messages.success(request, f"Test sent to {where}{variant}: “{result['subject']}”{missing}.")
                else:
                    messages.error(request, f"The test to {where} was not sent: {result['error']}")
                return HttpResponseRedirect(request.path)
        context = {**self.admin_site.each_context(request), "form": form, "version": version, "steps": steps,
                   "title": f"Send a test of {version}", "opts": self.model._meta}
        return render(request, "admin/journeys/test_send.html", context)

    def dry_run_view(self, request, pk):
        from journeys.models import Identity

        version = self._version_for(request, pk, VIEW)
        form = DryRunForm(request.POST or None, trigger_kind=version.trigger_kind)
        report = None
        if request.method == "POST" and form.is_valid():
            value = form.cleaned_data["customer"].strip()
            identity = Identity.objects.filter(value__in=[value, value.lower()]).select_related("customer").first()
            payload = None
            if form.cleaned_data.get("event", "").strip():
                try:
                    payload = json_read_storable(form.cleaned_data["event"], field="event")
                except JourneyError as exc:
                    form.add_error("event", str(exc))
                else:
                    if problem := _dry_run_event_problem(payload):
                        form.add_error("event", problem)
            if identity is None:
                form.add_error("customer", f"no customer with id or email {value!r}")
            if not form.errors:
                later = [e.strip() for e in form.cleaned_data["later_events"].split(",") if e.strip()]
                try:
                    report = version_dry_run(version=version, customer=identity.customer, event=payload,
                                             later_events=later)
                except (RuleSyntaxError, TypeError):  # a rule that does not compile: validation names it
                    if not (problems := version_validate(version=version).errors):
                        raise
                    form.add_error(None, f"this version cannot run until it is fixed: {'; '.join(problems)}")
        context = {**self.admin_site.each_context(request), "form": form, "report": report, "version": version,
                   "title": f"Dry run of {version}", "opts": self.model._meta, "asks_event": "event" in form.fields}
        return render(request, "admin/journeys/dry_run.html", context)

    def _each(self, request, queryset, func, done):
        reason = request.POST.get("reason", "")
        for version in queryset.select_related("workflow"):
            try:
                result = func(version, reason)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{version.workflow} v{version.number}: {error_text(exc)}", messages.ERROR)
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
