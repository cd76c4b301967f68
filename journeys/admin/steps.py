"""The step editor: a kind picker, then the kind's own form (a form per kind)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse

from journeys.admin.base import REASON_HELP
from journeys.admin.common import (
    error_text,
    object_or_404,
    version_editable,
)
from journeys.choices import VersionState
from journeys.engine.registry import STEP_KINDS
from journeys.errors import PermissionDenied
from journeys.models import (
    Step,
    WorkflowVersion,
)
from journeys.selectors import (
    EDIT,
    VIEW,
    user_can,
    user_has_any_scope,
    user_has_workflows,
    versions_for_user,
)
from journeys.services.workflows import (
    RETURNED_TO_REVIEW,
    step_save,
    step_token,
)

STEP_PAGE_OUT_OF_DATE = "this page does not say which state of the step it shows: reload it, then save again"


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    """A step's own page: pick a kind, then fill in that kind's form (journeys.forms.steps; each kind owns its form).

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
        return user_has_workflows(request.user, EDIT)

    def has_change_permission(self, request, obj=None):
        return self.has_add_permission(request) if obj is None else version_editable(request.user, obj.version)

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
        step = object_or_404(Step.objects.select_related("version__workflow"), object_id)
        return self._step_page(request, step.version, step)

    @staticmethod
    def _locked_reason(user, version: WorkflowVersion) -> str:
        """Why this version's steps cannot change for this user, in words that say what to do."""
        if not user_can(user, EDIT, version.workflow):
            return f"You may look at {version.workflow} but not edit it."
        return (f"{version.workflow} v{version.number} cannot change here ({version.stage}); create a new draft from it "
                "(action “Create a new draft from this version”) to edit its steps.")

    def _step_page(self, request, version: WorkflowVersion, step: Step | None):
        from journeys.forms.steps import kind_palette, step_form_class

        if not user_can(request.user, VIEW, version.workflow):
            raise DjangoPermissionDenied
        editable = version_editable(request.user, version)
        kind = "" if "pick" in request.GET else request.GET.get("kind") or (step.kind if step else "")
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "version": version,
                   "step": step, "editable": editable, "kinds": kind_palette(), "kind": kind,
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
                messages.error(request, f"Step {step.key}: {error_text(exc)}")
                return HttpResponseRedirect(f"{request.path}?pick=1" if editable else context["version_url"])
            messages.error(request, error_text(exc))
            return HttpResponseRedirect(request.path if step is not None else f"{request.path}?version={version.pk}")
        posting = request.method == "POST" and "_preview" not in request.POST
        form = form_class(request.POST if request.method == "POST" else None, version=version, step=step)
        reason_form = StepReasonForm(request.POST if posting else None, step=step,
                                     shown=request.POST.get("loaded") if request.method == "POST" else None)
        preview = None
        if request.method == "POST" and "_preview" in request.POST and form.is_valid():
            from journeys.console.selectors import template_preview

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
                                  actor=request.user, reason=reason_form.cleaned_data["change_reason"],
                                  loaded=reason_form.cleaned_data["loaded"] if step is not None else None)
            except (ValidationError, PermissionDenied) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, f"Step {saved.key} ({saved.kind}) saved.")
                if form.version.state == VersionState.APPROVED and WorkflowVersion.objects.filter(
                        pk=form.version.pk, state=VersionState.IN_REVIEW).exists():
                    messages.warning(request, RETURNED_TO_REVIEW.format(number=form.version.number) + ".")
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
    # The step as the page showed it (`step_token`): a save over a step changed since is refused.
    loaded = forms.CharField(widget=forms.HiddenInput, required=False,
                             error_messages={"required": STEP_PAGE_OUT_OF_DATE})

    def __init__(self, *args, step: Step | None = None, shown: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if step is not None:  # a page of an existing step says which state of it it shows
            self.fields["loaded"].required = True
            self.fields["loaded"].initial = shown if shown is not None else step_token(step=step)
