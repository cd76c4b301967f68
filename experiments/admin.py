"""Admin for experiments: thin classes; the report page and its actions call the services."""

from __future__ import annotations


from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from simple_history.admin import SimpleHistoryAdmin

from experiments import svg
from experiments.choices import CohortKind, ExperimentStatus
from experiments.models import Arm, Assignment, Experiment, PropensityModel
from experiments.services import report_export
from experiments.services.analysis import experiment_analyze, experiment_auto_retire_check
from experiments.services.bandits import experiment_bandit_update
from experiments.services.experiments import (
    ADD,
    CHANGE,
    EXACTLY_ONE_CONTROL,
    MAX_ARM_WEIGHT,
    NO_ACTIVE_WEIGHT,
    ONE_CONTROL,
    OPERATE,
    VIEW,
    arm_name_problem,
    arm_retire,
    arm_weight_problem,
    experiment_authorize,
    experiment_conclude,
    experiment_set_weights,
    experiment_settings_problems,
    experiment_settings_save,
    experiment_start,
    experiment_stop,
    experiment_user_can,
    experiments_for_user,
)
from experiments.services.nba import nba_explain, nba_train
from experiments.services.reports import experiment_attribution, experiment_cohorts, version_funnel
from journeys.admin.base import (
    HistoryReasonMixin,
    LargeTableMixin,
    ReasonActionForm,
    action_reason,
    scoped_list_filter,
)
from journeys.models import Customer, Step
from journeys.services.spreadsheets import spreadsheet_csv


def _errors(exc: ValidationError | PermissionDenied) -> str:
    if isinstance(exc, PermissionDenied):
        return str(exc) or "you may not do that"
    if hasattr(exc, "message_dict"):
        return "; ".join(f"{k}: {m}" if k != "__all__" else m for k, ms in exc.message_dict.items() for m in ms)
    return "; ".join(exc.messages)


def _form_errors(form: forms.Form) -> str:
    """A form's errors in one line, each after the label of its field ("weight short: ...")."""
    return "; ".join(f"{form.fields[name].label or name}: {message}" if name in form.fields else message
                     for name, messages_ in form.errors.items() for message in messages_)


class ExperimentForm(forms.ModelForm):
    """The experiment's settings, checked by the rules its service enforces (at the field)."""

    class Meta:
        model = Experiment
        fields = "__all__"

    def clean(self):
        data = super().clean()
        for name, problem in experiment_settings_problems(data).items():
            if name in self.fields and name in data:
                self.add_error(name, problem)
        return data


class ArmForm(forms.ModelForm):
    class Meta:
        model = Arm
        fields = "__all__"

    def clean_name(self):
        name = self.cleaned_data.get("name")
        if name is not None and (problem := arm_name_problem(name)):
            raise ValidationError(problem)
        return name

    def clean_weight(self):
        weight = self.cleaned_data.get("weight")
        if weight is not None and (problem := arm_weight_problem(weight)):
            raise ValidationError(problem)
        return weight


class ArmAdminForm(ArmForm):
    """An arm on its own page, checked against its experiment's other arms."""

    def clean(self):
        data = super().clean()
        experiment = data.get("experiment") or (self.instance.experiment if self.instance.experiment_id else None)
        others = Arm.objects.filter(experiment=experiment).exclude(pk=self.instance.pk)
        control = others.filter(is_control=True).first()
        if data.get("is_control") and control is not None:
            self.add_error("is_control", f"{ONE_CONTROL}: {control.name} is the control of {experiment.key}")
        if experiment is not None and not data.get("is_control") and control is None:
            self.add_error("is_control", f"{EXACTLY_ONE_CONTROL}: {experiment.key} has no other")
        if (self.instance.retired_at is None and data.get("weight") == 0
                and not others.filter(retired_at__isnull=True, weight__gt=0).exists()):
            self.add_error("weight", f"{NO_ACTIVE_WEIGHT}: this is the only active arm that could have one")
        return data


class ArmFormSet(BaseInlineFormSet):
    """The arms of one experiment, checked together: one control, and a weight to assign by."""

    def clean(self):
        super().clean()
        kept = [f for f in self.forms if getattr(f, "cleaned_data", None) and not self._should_delete_form(f)]
        controls = [f for f in kept if f.cleaned_data.get("is_control", f.instance.is_control)]
        for form in controls[1:]:
            form.add_error("is_control", f"{ONE_CONTROL}: untick it on all but one arm")
        if not controls:
            raise ValidationError(f"{EXACTLY_ONE_CONTROL}: tick “is control” on one arm")
        active = [f for f in kept if f.instance.retired_at is None]
        if active and not any(f.errors for f in active) and not any(f.cleaned_data.get("weight") for f in active):
            raise ValidationError(f"{NO_ACTIVE_WEIGHT}: give one a weight such as 1")


class ArmInline(admin.TabularInline):
    """Arms change exactly when their experiment's settings may."""

    model = Arm
    form = ArmForm
    formset = ArmFormSet
    fields = ("name", "is_control", "weight", "description", "retired_at", "retired_reason")
    readonly_fields = ("retired_at", "retired_reason")
    extra = 0

    def has_view_permission(self, request, obj=None):
        return experiment_user_can(request.user, VIEW, obj)

    def has_add_permission(self, request, obj=None):
        return experiment_user_can(request.user, CHANGE, obj) if obj is not None else \
            experiment_user_can(request.user, ADD)

    def has_change_permission(self, request, obj=None):
        return experiment_user_can(request.user, CHANGE, obj)

    def has_delete_permission(self, request, obj=None):
        return experiment_user_can(request.user, CHANGE, obj)


class ConcludeForm(forms.Form):
    winner = forms.ModelChoiceField(queryset=Arm.objects.none())
    reason = forms.CharField(max_length=200, help_text="why this arm won; kept in the history")


class RetireForm(forms.Form):
    arm = forms.ModelChoiceField(queryset=Arm.objects.none())
    reason = forms.CharField(max_length=200)


class TrainForm(forms.Form):
    features = forms.CharField(help_text="profile traits, comma separated, e.g. ltv, tenure_days, orders")


class CohortForm(forms.Form):
    kind = forms.ChoiceField(choices=CohortKind.choices, initial=CohortKind.ENTRY_WEEK)
    trait = forms.CharField(required=False, help_text="for a trait cohort")


class WeightsForm(forms.Form):
    reason = forms.CharField(max_length=200)

    def __init__(self, *args, arms=(), **kwargs):
        super().__init__(*args, **kwargs)
        for arm in arms:
            self.fields[f"w_{arm.name}"] = forms.FloatField(min_value=0, max_value=MAX_ARM_WEIGHT, initial=arm.weight,
                                                            label=f"weight {arm.name}")



@admin.register(Experiment)
class ExperimentAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = ExperimentForm
    list_display = ("key", "name", "status", "mode", "holdout_share", "goal_event", "started_at", "report_link")
    list_filter = ("status", "mode")
    search_fields = ("key", "name", "hypothesis")
    # created_by is who added it (set by experiment_settings_save), not a setting anyone picks.
    readonly_fields = ("status", "winner", "started_at", "stopped_at", "concluded_at", "weights_updated_at", "used_by",
                       "created_by")
    inlines = [ArmInline]
    action_form = ReasonActionForm
    actions = ["start_selected", "stop_selected", "bandit_update_selected"]

    def get_readonly_fields(self, request, obj=None):
        # Steps name the key; the salt places every customer: neither may change once created.
        return (*self.readonly_fields, "key", "salt") if obj is not None else self.readonly_fields

    # Who sees and changes what: experiments.services.experiments.experiment_user_can (editors: their
    # units' experiments, settings only while a draft); the services check the same rules again.
    def get_queryset(self, request):
        return experiments_for_user(request.user) & super().get_queryset(request)

    def has_module_permission(self, request):
        return experiment_user_can(request.user, VIEW)

    def has_view_permission(self, request, obj=None):
        return experiment_user_can(request.user, VIEW, obj)

    def has_add_permission(self, request):
        return experiment_user_can(request.user, ADD)

    def has_change_permission(self, request, obj=None):
        return experiment_user_can(request.user, CHANGE, obj)

    def has_operate_permission(self, request, obj=None):
        return experiment_user_can(request.user, OPERATE, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "workflow" and not request.user.has_perm("experiments.add_experiment"):
            from journeys.selectors import EDIT, workflows_for_user

            kwargs["queryset"] = workflows_for_user(request.user, EDIT)
            kwargs["required"] = True  # an editor's experiment belongs to one of their unit's workflows
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="report")
    def report_link(self, obj):
        return format_html('<a href="{}">report</a>', reverse("admin:experiments_experiment_report", args=[obj.pk]))

    @admin.display(description="used by split steps")
    def used_by(self, obj):
        steps = Step.objects.filter(kind="experiment_split", config__experiment=obj.key).select_related(
            "version__workflow"
        )
        return (
            format_html_join(
                ", ",
                '<a href="{}">{} v{} / {}</a>',
                (
                    (
                        reverse("admin:journeys_workflowversion_change", args=[s.version_id]),
                        s.version.workflow.name,
                        s.version.number,
                        s.key,
                    )
                    for s in steps
                ),
            )
            or "-"
        )

    def save_model(self, request, obj, form, change):
        experiment_settings_save(experiment=obj, actor=request.user, reason=self._reason(request, form))

    def _bulk(self, request, queryset, service, label):
        if not (reason := action_reason(self, request)):
            return
        for experiment in queryset:
            try:
                service(experiment=experiment, actor=request.user, reason=reason)
                self.message_user(request, f"{experiment.key}: {label}")
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"{experiment.key}: {_errors(exc)}", messages.ERROR)

    @admin.action(description="Start the selected experiments (reason required)", permissions=["operate"])
    def start_selected(self, request, queryset):
        self._bulk(request, queryset, experiment_start, "started")

    @admin.action(description="Stop the selected experiments (reason required)", permissions=["operate"])
    def stop_selected(self, request, queryset):
        self._bulk(request, queryset, experiment_stop, "stopped")

    @admin.action(description="Update bandit weights now", permissions=["operate"])
    def bandit_update_selected(self, request, queryset):
        for experiment in queryset:
            try:
                weights = experiment_bandit_update(experiment=experiment, actor=request.user)
            except PermissionDenied as exc:
                self.message_user(request, f"{experiment.key}: {_errors(exc)}", messages.ERROR)
                continue
            self.message_user(request, f"{experiment.key}: {weights or 'not a running bandit'}")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/report/", wrap(self.report_view), name="experiments_experiment_report"),
            path("<int:pk>/report.csv", wrap(self.csv_view), name="experiments_experiment_csv"),
            path("<int:pk>/act/", wrap(self.act_view), name="experiments_experiment_act"),
        ] + super().get_urls()

    def _get(self, request, pk, *, operate=False) -> Experiment:
        experiment = get_object_or_404(Experiment, pk=pk)
        allowed = (
            self.has_operate_permission(request, experiment) if operate
            else self.has_view_permission(request, experiment)
        )
        if not allowed:
            raise PermissionDenied
        return experiment

    def report_view(self, request, pk):
        experiment = self._get(request, pk)
        analysis = experiment_analyze(experiment=experiment)
        cohort_form = CohortForm(request.GET or None)
        kind, trait = CohortKind.ENTRY_WEEK, ""
        if cohort_form.is_valid():
            kind, trait = cohort_form.cleaned_data["kind"], cohort_form.cleaned_data["trait"]
        try:
            cohorts = experiment_cohorts(experiment=experiment, kind=kind, trait=trait, daily=analysis.daily)
        except ValueError as exc:
            cohorts = experiment_cohorts(experiment=experiment, kind=CohortKind.ENTRY_WEEK, daily=analysis.daily)
            messages.warning(request, str(exc))
        funnels = [
            (f, svg.funnel_chart(f))
            for f in (
                version_funnel(version=v, experiment=experiment)
                for v in report_export.experiment_versions(experiment=experiment)
            )
        ]
        active = experiment.arms.filter(retired_at__isnull=True)
        conclude, retire = ConcludeForm(), RetireForm()
        conclude.fields["winner"].queryset = active
        retire.fields["arm"].queryset = active.filter(is_control=False)
        model = PropensityModel.objects.filter(experiment=experiment).first()
        explanation, who = None, request.GET.get("customer", "").strip()
        if model is not None and who:
            customer = Customer.objects.filter(external_id=who).first()
            explanation = nba_explain(model=model, customer=customer) if customer else []
        context = {
            **self.admin_site.each_context(request),
            "title": f"Experiment report: {experiment.name}",
            "opts": self.model._meta,
            "experiment": experiment,
            "analysis": analysis,
            "chart": svg.conversion_chart(analysis.series),
            "cohorts": cohorts,
            "cohort_chart": svg.cohort_heatmap(cohorts),
            "cohort_form": cohort_form if cohort_form.is_bound else CohortForm(),
            "funnels": funnels,
            "attribution": experiment_attribution(experiment=experiment),
            "conclude_form": conclude,
            "retire_form": retire,
            "weights_form": WeightsForm(arms=active),
            "train_form": TrainForm(initial={"features": ", ".join(model.features) if model else ""}),
            "model": model,
            "explain_customer": who,
            "explanation": explanation,
            "can_change": self.has_operate_permission(request, experiment),
            "running": experiment.status == ExperimentStatus.RUNNING,
        }
        return render(request, "experiments/report.html", context)

    def csv_view(self, request, pk):
        experiment = self._get(request, pk)
        section = request.GET.get("section", "arms")
        try:
            rows = report_export.report_rows(
                experiment=experiment,
                section=section,
                kind=request.GET.get("kind", CohortKind.ENTRY_WEEK),
                trait=request.GET.get("trait", ""),
            )
        except ValueError as exc:
            return HttpResponse(str(exc), status=400, content_type="text/plain")
        response = HttpResponse(spreadsheet_csv(rows), content_type="text/csv")  # trait values are customer data
        response["Content-Disposition"] = f'attachment; filename="{experiment.key}-{section}.csv"'
        return response

    def act_view(self, request, pk):
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:experiments_experiment_report", args=[pk]))
        experiment = self._get(request, pk, operate=True)
        action, user = request.POST.get("action"), request.user
        active = experiment.arms.filter(retired_at__isnull=True)
        try:
            if action == "conclude":
                form = ConcludeForm(request.POST)
                form.fields["winner"].queryset = active
                if not form.is_valid():
                    raise ValidationError(_form_errors(form))
                experiment_conclude(
                    experiment=experiment,
                    winner=form.cleaned_data["winner"],
                    actor=user,
                    reason=form.cleaned_data["reason"],
                )
                done = f"concluded: {form.cleaned_data['winner'].name} receives every new entry"
            elif action == "retire":
                form = RetireForm(request.POST)
                form.fields["arm"].queryset = active
                if not form.is_valid():
                    raise ValidationError(_form_errors(form))
                arm_retire(arm=form.cleaned_data["arm"], actor=user, reason=form.cleaned_data["reason"])
                done = f"retired {form.cleaned_data['arm'].name}"
            elif action == "weights":
                form = WeightsForm(request.POST, arms=active)
                if not form.is_valid():
                    raise ValidationError(_form_errors(form))
                weights = {k[2:]: v for k, v in form.cleaned_data.items() if k.startswith("w_")}
                experiment_set_weights(
                    experiment=experiment, weights=weights, actor=user, reason=form.cleaned_data["reason"]
                )
                done = f"weights set to {weights}"
            elif action == "train":
                form = TrainForm(request.POST)
                if not form.is_valid():
                    raise ValidationError(_form_errors(form))
                features = [f.strip() for f in form.cleaned_data["features"].split(",") if f.strip()]
                model = nba_train(experiment=experiment, features=features, actor=user)
                done = f"model trained on {model.samples} exposures"
            elif action == "auto_retire":
                retired, held = experiment_auto_retire_check(experiment=experiment, actor=user)
                done = f"auto-retired: {', '.join(a.name for a in retired) or 'none'}{f' ({held})' if held else ''}"
            elif action == "bandit":
                weights = experiment_bandit_update(experiment=experiment, actor=user)
                done = f"bandit weights: {weights or 'not a running bandit'}"
            else:
                raise ValidationError(f"unknown action {action!r}")
        except (ValidationError, PermissionDenied) as exc:
            messages.error(request, _errors(exc))
        else:
            messages.success(request, done)
        return HttpResponseRedirect(reverse("admin:experiments_experiment_report", args=[experiment.pk]))


# The experiments the viewer may see: an editor never learns another unit's experiments from the sidebar.
VisibleExperimentFilter = scoped_list_filter(lambda user: experiments_for_user(user).order_by("name", "pk"))


@admin.register(Arm)
class ArmAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = ArmAdminForm
    list_display = ("__str__", "is_control", "weight", "retired_at", "retired_reason")
    list_filter = (("experiment", VisibleExperimentFilter), "is_control")
    list_select_related = ("experiment",)  # an arm is named by its experiment's key
    readonly_fields = ("retired_at", "retired_reason")

    def get_queryset(self, request):
        return super().get_queryset(request).filter(experiment__in=experiments_for_user(request.user))

    def has_module_permission(self, request):
        return experiment_user_can(request.user, VIEW)

    def has_view_permission(self, request, obj=None):
        return experiment_user_can(request.user, VIEW, obj.experiment if obj is not None else None)

    def has_change_permission(self, request, obj=None):
        return experiment_user_can(request.user, CHANGE, obj.experiment if obj is not None else None)

    def has_add_permission(self, request):
        return request.user.has_perm("experiments.add_arm")  # editors add arms on their experiment's page

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "experiment") if obj is not None else self.readonly_fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "experiment":
            kwargs["queryset"] = experiments_for_user(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        experiment_authorize(actor=request.user, action=CHANGE, experiment=obj.experiment)  # re-checked at save
        super().save_model(request, obj, form, change)


@admin.register(Assignment)
class AssignmentAdmin(LargeTableMixin, admin.ModelAdmin):
    """Read-only: assignments are made by the split step and never edited."""

    list_display = ("experiment", "customer", "arm", "holdout", "via", "bucket", "assigned_at", "run_id")
    list_filter = (("experiment", VisibleExperimentFilter), "holdout", "via")
    search_fields = ("customer__external_id", "customer__email")
    list_select_related = ("experiment", "customer", "arm")
    readonly_fields = [f.name for f in Assignment._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(PropensityModel)
class PropensityModelAdmin(admin.ModelAdmin):
    """Read-only view of a next-best-action model, with its coefficients explained."""

    list_display = ("experiment", "trained_at", "samples", "features")
    readonly_fields = ("experiment", "trained_at", "samples", "features", "quality", "coefficients")
    exclude = ("params", "metrics")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="held-out quality")
    def quality(self, obj):
        return format_html_join(
            "",
            "<div>{}: n={}, AUC={}</div>",
            ((arm, m.get("n"), "-" if m.get("auc") is None else f"{m['auc']:.3f}") for arm, m in obj.metrics.items()),
        )

    @admin.display(description="how it decides")
    def coefficients(self, obj):
        rows = [
            (arm, f"{p['intercept']:+.3f}", ", ".join(f"{f}: {c:+.3f}" for f, c in zip(obj.features, p["coef"])))
            for arm, p in obj.params.get("arms", {}).items()
        ]
        intro = mark_safe(
            "<p>Predicted response = sigmoid(intercept + sum of coef x standardised trait). "
            "A positive coefficient means customers with more of that trait respond better to "
            "that arm; the split sends each customer to the arm with the highest prediction "
            "(except an exploration share, assigned at random).</p>"
        )
        table = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html(
            "{}<table><tr><th>arm</th><th>intercept</th><th>coefficients</th></tr>{}</table>", intro, table
        )
