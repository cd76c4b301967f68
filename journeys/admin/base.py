"""Admin building blocks shared by the admin modules of every app.

`HistoryReasonMixin` is the one way a configuration model's admin asks "why?": the change
form gets a required "Reason for this change" field, and the reason and the acting user
land on the simple-history row of the object and of every inline row saved with it, so the
history page shows who, when and why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.forms.models import BaseInlineFormSet
from django.db import connections, transaction
from django.db.models import QuerySet
from django.http import HttpResponseRedirect, QueryDict
from django.utils.functional import cached_property

from journeys.errors import DraftChanged
from journeys.services.references import config_rename_check
from journeys.services.governance import history_stamp, run_user_can_view, runs_visible_to

REASON_FIELD = "change_reason"
REASON_HELP = "Why are you making this change? Recorded in the history and the audit log."
REASON_MISSING = "This field is required: say why you are making this change (it is recorded in the history)."


def reason_field() -> forms.CharField:
    return forms.CharField(
        label="Reason for this change", required=True, max_length=500, help_text=REASON_HELP,
        error_messages={"required": REASON_MISSING}, widget=forms.TextInput(attrs={"size": 80}),
    )


class ReasonForm(forms.ModelForm):
    """Every change made by a person says why (simple-history's change reason)."""

    change_reason = reason_field()

    def clean_change_reason(self) -> str:
        reason = (self.cleaned_data.get(REASON_FIELD) or "").strip()
        if not reason:
            raise forms.ValidationError(REASON_MISSING, code="required")
        return reason


_REASON_FORMS: dict[type, type] = {}


def with_reason(form_class: type[forms.ModelForm]) -> type[forms.ModelForm]:
    """`form_class` with the required change reason field (the class itself if it has one)."""
    if REASON_FIELD in form_class.base_fields:
        return form_class
    if form_class not in _REASON_FORMS:
        _REASON_FORMS[form_class] = type(f"{form_class.__name__}WithReason", (ReasonForm, form_class), {})
    return _REASON_FORMS[form_class]


class HistoryRevertGuard:
    """For every SimpleHistoryAdmin here. simple_history's history page saves a posted revert
    whatever `revert_disabled` says (that only hides the button), for anyone who may *view* the
    object (a view-only user's form has no fields, so the whole old version is saved), and writes
    every column of the old version, read-only ones included (a revoked token's revocation, a
    rotated key). A revert here is an edit with the old values filled in: refused where the admin
    has no revert or the user may not change the object, and only the change form's fields move."""

    history_revert = True
    # A deleted object's history page restores it (for people who may add such objects) only
    # where the admin says so; elsewhere the page says why there is no Revert.
    history_restore_deleted = False
    NOT_RESTORED = ("This {what} was deleted: its history shows how it was, but it cannot be restored from here "
                    "(no Revert). Add it again with the values shown, if it is still wanted.")

    def revert_disabled(self, request, obj=None):
        if obj is not None and obj.pk is not None and not self.model._default_manager.filter(pk=obj.pk).exists():
            return not self._may_restore(request) or super().revert_disabled(request, obj)
        return not self.history_revert or super().revert_disabled(request, obj)

    def _may_restore(self, request) -> bool:
        return self.history_revert and self.history_restore_deleted and self.has_add_permission(request)

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        current = self.get_object(request, unquote(object_id))
        if current is None and not self._may_restore(request):  # deleted: say why there is no Revert
            messages.warning(request, self.NOT_RESTORED.format(what=self.model._meta.verbose_name))
            if request.method == "POST":
                return HttpResponseRedirect(request.path)
        elif request.method == "POST":
            if current is not None and (self.revert_disabled(request, current)
                                        or not self.has_change_permission(request, current)):
                raise PermissionDenied("this history cannot be reverted by you")
            request._history_revert_of = current
        return super().history_form_view(request, object_id, version_id, extra_context)

    def save_form(self, request, form, change):
        obj = super().save_form(request, form, change)
        current = getattr(request, "_history_revert_of", None)
        if current is not None and current.pk == obj.pk:
            for field in obj._meta.concrete_fields:
                if field.name not in form.fields and not field.primary_key:
                    setattr(obj, field.attname, getattr(current, field.attname))
        return obj


class HistoryReasonMixin(HistoryRevertGuard):
    """For a SimpleHistoryAdmin of a configuration model: a required change reason on the form,
    stored with the acting user on the history rows of the object and of its inline rows."""

    # Reverting from the history page saves through the same form (a reason is asked there too).
    reason_fieldset = ("Change", {"fields": (REASON_FIELD,)})

    def get_form(self, request, obj=None, **kwargs):
        kwargs["form"] = with_reason(kwargs.get("form", self.form))
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))
        may_change = self.has_add_permission(request) if obj is None else self.has_change_permission(request, obj)
        names = flatten_fieldsets(fieldsets)
        if not may_change:  # a read-only page asks nothing
            return [(name, {**opts, "fields": [f for f in opts["fields"] if f != REASON_FIELD]})
                    for name, opts in fieldsets]
        if REASON_FIELD not in names:
            fieldsets.append(self.reason_fieldset)
        elif fieldsets and len(fieldsets) == 1 and fieldsets[0][0] is None:  # default layout: put it last
            fields = [f for f in fieldsets[0][1]["fields"] if f != REASON_FIELD] + [REASON_FIELD]
            fieldsets = [(None, {**fieldsets[0][1], "fields": fields})]
        return fieldsets

    def _reason(self, request, form) -> str:
        return (form.cleaned_data.get(REASON_FIELD) or "").strip() if form is not None else ""

    def save_model(self, request, obj, form, change):
        history_stamp(obj, actor=request.user, reason=self._reason(request, form))
        super().save_model(request, obj, form, change)

    def save_formset(self, request, form, formset, change):
        reason = self._reason(request, form) or "edited in admin"
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            history_stamp(obj, actor=request.user, reason=reason).delete()
        for obj in instances:
            history_stamp(obj, actor=request.user, reason=reason).save()
        formset.save_m2m()

    # Deleting is a change too: both confirmation pages ask for the reason and refuse without one.
    delete_confirmation_template = "history_reason/delete_confirmation.html"
    delete_selected_confirmation_template = "history_reason/delete_selected_confirmation.html"

    @staticmethod
    def _delete_reason(request) -> str:
        return (request.POST.get(REASON_FIELD) or "").strip()

    @staticmethod
    def _without_confirmation(request, post: QueryDict) -> None:
        """Turn a confirmed delete without a reason back into the confirmation page, with the error."""
        request.POST = post
        request.reason_missing = REASON_MISSING

    def delete_view(self, request, object_id, extra_context=None):
        if request.method == "POST" and not self._delete_reason(request):
            self._without_confirmation(request, QueryDict())  # the delete view deletes on any POST body
        return super().delete_view(request, object_id, extra_context)

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            _func, name, description = actions["delete_selected"]
            actions["delete_selected"] = (self._delete_selected_with_reason, name, description)
        return actions

    @staticmethod
    def _delete_selected_with_reason(modeladmin, request, queryset):
        if request.POST.get("post") and not modeladmin._delete_reason(request):
            post = request.POST.copy()
            del post["post"]
            modeladmin._without_confirmation(request, post)
        return delete_selected(modeladmin, request, queryset)

    def delete_model(self, request, obj):
        history_stamp(obj, actor=request.user, reason=self._delete_reason(request) or "deleted in the admin")
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:  # one by one, so each history row carries who and why
            self.delete_model(request, obj)


LOADED_FIELD = "loaded"
PAGE_OUT_OF_DATE = "this page does not say which state of the {what} it shows: reload it, then save again"


class StalePageMixin:
    """For the change page of shared configuration edited by several people (before
    HistoryReasonMixin in the bases): the page carries what it showed (`page_token` of the
    stored row, in a hidden `loaded` field) and `save_model` hands it to the service, which
    refuses a save over a change made since (`journeys.services.stale_edits`, `DraftChanged`).
    The page then comes back with what was typed and the refusal (who changed it, when: reload)."""

    def page_token(self, obj) -> str:
        raise NotImplementedError

    @staticmethod
    def loaded(form) -> str | None:
        """The token the saved page was opened with (None: a form without one, e.g. an add)."""
        return form.cleaned_data.get(LOADED_FIELD) if form is not None and LOADED_FIELD in form.fields else None

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))
        if (obj is None or obj.pk is None or not self.has_change_permission(request, obj)
                or not self.model._default_manager.filter(pk=obj.pk).exists()):  # (a deleted one's history)
            return fieldsets
        return [*fieldsets, (None, {"fields": (LOADED_FIELD,), "classes": ("hidden",)})]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None or obj.pk is None:
            return super().get_form(request, obj, change=change, **kwargs)
        fields = kwargs["fields"] if "fields" in kwargs else flatten_fieldsets(self.get_fieldsets(request, obj))
        if fields is not None:  # not a model field: declared on the page's own form class below
            kwargs["fields"] = [f for f in fields if f != LOADED_FIELD]
        form = super().get_form(request, obj, change=change, **kwargs)
        stored = self.model._default_manager.filter(pk=obj.pk).first()  # a history page shows an older copy
        if stored is None:  # restoring a deleted one from its history: nobody's change to keep
            return form
        what = self.model._meta.verbose_name
        token = self.page_token(stored)
        attrs = {LOADED_FIELD: forms.CharField(widget=forms.HiddenInput, initial=token,
                                               error_messages={"required": PAGE_OUT_OF_DATE.format(what=what)}),
                 "refused": getattr(request, "_changed_meanwhile", "")}
        return type(form.__name__, (_RefusedOnClean, form), attrs)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except DraftChanged as exc:  # saved by someone else since the page was opened: all of it rolled back
            if request.method != "POST" or object_id is None or getattr(request, "_changed_meanwhile", ""):
                raise
            request._changed_meanwhile = "; ".join(exc.messages)  # the page again, what was typed kept
            return super().changeform_view(request, object_id, form_url, extra_context)

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        try:
            with transaction.atomic():
                return super().history_form_view(request, object_id, version_id, extra_context)
        except DraftChanged as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            return HttpResponseRedirect(request.path)


class _RefusedOnClean:
    """Put the refusal of the save (`refused`, set for the page shown again), or a page that did
    not say what it showed, at the top of the form."""

    refused = ""

    def clean(self):
        cleaned = super().clean()
        for error in self.errors.pop(LOADED_FIELD, []):  # its row is hidden: said at the top of the form
            self.add_error(None, error)
        if self.refused:
            self.add_error(None, self.refused)
        return cleaned


def scoped_list_filter(choices: Callable[[Any], QuerySet]) -> type[admin.RelatedFieldListFilter]:
    """A filter by a related object that lists `choices(user)`, the objects the viewer may see,
    not every row of the related table: an editor never learns another unit's workflow or
    experiment names from a list's sidebar (the rows are scoped; the sidebar must be too)."""

    class ScopedRelatedFilter(admin.RelatedFieldListFilter):
        def field_choices(self, field, request, model_admin):
            return [(obj.pk, str(obj)) for obj in choices(request.user)]

    return ScopedRelatedFilter


class RunScopeMixin:
    """Journey runs as each user may see them (services.governance decides): an editor watches the runs
    and step executions of their unit's workflows; other units' runs are neither listed nor opened."""

    def get_queryset(self, request):
        return runs_visible_to(user=request.user) & super().get_queryset(request)

    def has_module_permission(self, request):
        return run_user_can_view(user=request.user)

    def has_view_permission(self, request, obj=None):
        return run_user_can_view(user=request.user, run=obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records that are facts (events, audit entries, reports): viewable, never edited here."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReasonActionForm(ActionForm):
    """The changelist's action bar with a reason box, for actions that change configuration."""

    reason = forms.CharField(required=False, label="Reason", widget=forms.TextInput(attrs={"size": 40}))


def action_selection_within(model_admin: admin.ModelAdmin, request, queryset, *, limit: int, instead: str) -> bool:
    """Whether an admin action may work through this selection inside the web request. A "select
    all" over a big list would run past the web server's timeout, half done and unreported; above
    `limit` rows the action is refused with a message: how many were selected, the limit, and
    `instead` (what to do: a narrower filter, the command or API for bulk work)."""
    from django.contrib import messages

    selected = queryset.count()
    if selected <= limit:
        return True
    noun = model_admin.model._meta.verbose_name_plural
    model_admin.message_user(request, f"Nothing done: {selected:,} {noun} are selected and this action takes at most "
                                      f"{limit:,} at a time. {instead}", messages.ERROR)
    return False


def action_reason(model_admin: admin.ModelAdmin, request) -> str:
    """The reason typed next to an admin action; empty means the action is refused with a message."""
    from django.contrib import messages

    reason = (request.POST.get("reason") or "").strip()
    if not reason:
        model_admin.message_user(request, "Nothing changed: type a reason in the Reason box next to the action.",
                                 messages.ERROR)
    return reason


# --------------------------------------------------------------------------- tables that grow without bound

COUNT_CAP = 10_000  # a changelist counts at most this many rows (100 pages); past it, "more than"


class AtLeast(int):
    """A count that stopped counting: compares as the number, reads as "more than N"."""

    def __str__(self) -> str:
        return f"more than {int(self):,}"


class About(int):
    """A count read from the planner's statistics, not counted."""

    def __str__(self) -> str:
        return f"about {int(self):,}"


def table_rows_estimate(model, using: str = "default") -> int | None:
    """PostgreSQL's own estimate of the rows in a model's table (the sum over its partitions, for
    the event table partitioned by id), from the last ANALYZE; None elsewhere or never analysed."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT SUM(GREATEST(c.reltuples, 0)), MAX(c.reltuples) FROM pg_class c WHERE c.relkind = 'r' AND "
            "(c.oid = %s::regclass OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::regclass)))",
            [model._meta.db_table] * 2)
        total, best = cursor.fetchone()
    return int(total) if best is not None and best >= 0 else None


class BoundedCountPaginator(Paginator):
    """The admin changelist always asks its paginator for a count. Over a table of millions of rows
    a COUNT(*) reads every row, on every page load. This one never does: the whole table (no
    filter, no search) on PostgreSQL is PostgreSQL's estimate; anything else is counted up to
    COUNT_CAP + 1 rows with a LIMIT, and past that says "more than COUNT_CAP"."""

    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = table_rows_estimate(queryset.model, queryset.db)
            if estimate is not None and estimate > self.cap:
                return About(estimate)
        counted = queryset.order_by()[: self.cap + 1].count()
        return AtLeast(self.cap) if counted > self.cap else counted


class PageFirstChangeList(ChangeList):
    """A changelist whose page costs the rows it shows. It reads the page's primary keys first
    (with the filters and the order, but without the joined rows and per-row extras, so that
    skipping to a deep page walks an index only), then those rows with their joins and the
    model admin's `page_queryset` extras. A column left out of `sortable_by` is not sorted by,
    even from a hand-written `?o=` link."""

    def get_ordering_field(self, field_name):
        if field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)

    def get_results(self, request):
        super().get_results(request)
        ids = [row.pk for row in self.result_list.select_related(None).only("pk")]
        self.result_list = self.model_admin.page_queryset(request, self.queryset.filter(pk__in=ids))


class LargeTableMixin:
    """For the changelist of a table that grows without bound (events, deliveries, runs, logs):
    newest first by primary key, whose index serves `ORDER BY id DESC LIMIT 100` (an order on
    an unindexed column sorts the whole table for every page), and a paginator that never
    counts the whole table. Filter by date with a date list filter on the page, not a date
    hierarchy (its year links are a DISTINCT over every row). For the same reason no "Show counts":
    Django's facets count every filter choice over the whole table (one scan per workflow on the
    deliveries), so `?_facets` is ignored here."""

    ordering = ("-pk",)
    paginator = BoundedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    # Sorting by a column sorts the whole table for every page (1M deliveries: 2-8 s); an admin
    # may list the columns an index serves.
    sortable_by: tuple[str, ...] = ()

    def get_changelist(self, request, **kwargs):
        return PageFirstChangeList

    def page_queryset(self, request, queryset: QuerySet) -> QuerySet:
        """The rows of the page shown (filtered by primary key): per-row extras go here."""
        return queryset

    # Django's "Delete selected" lists every selected row and every row the delete cascades to on its
    # confirmation page, built in the request: over a "select all" of such a table, a page of many
    # megabytes or a worker killed at the web server's timeout. It takes at most this many rows.
    delete_selected_limit = 100
    delete_selected_instead = "Narrow the list with a filter or the search and delete in parts."

    def get_actions(self, request):
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            func, name, description = actions["delete_selected"]
            actions["delete_selected"] = (self._bounded(func), name, description)
        return actions

    @staticmethod
    def _bounded(delete: Callable) -> Callable:
        def delete_within_limit(modeladmin, request, queryset):
            if not action_selection_within(modeladmin, request, queryset, limit=modeladmin.delete_selected_limit,
                                           instead=modeladmin.delete_selected_instead):
                return None
            return delete(modeladmin, request, queryset)

        return delete_within_limit


# --------------------------------------------------------------------------- inlines that grow without bound


class NewestRowsFormSet(BaseInlineFormSet):
    """The newest `shown` rows of an inline only (NewestRowsInline sets `shown` and `full_list_url`
    on the class it makes for each page): how many there are in all, and where to read them all,
    are printed under the rows (admin/edit_inline/newest_rows.html)."""

    shown: int = 50
    full_list_url: str | None = None

    def get_queryset(self):
        if not hasattr(self, "_newest"):
            self._all = super().get_queryset()
            self._newest = self._queryset = self._all[: self.shown]
        return self._newest

    @cached_property
    def total(self) -> int:
        """How many rows there are: counted only when the page shows as many as it may."""
        shown = len(self.get_queryset())
        return shown if shown < self.shown else self._all.count()

    @property
    def hidden(self) -> int:
        return self.total - len(self.get_queryset())


class NewestRowsInline:
    """For a read-only inline whose rows grow without bound (step executions of a looping run, the
    entries of a long case, a delivery's attempts): the change page renders every inline row, so
    a run with 20,000 step executions took 40 s to open. Only the newest `shown` rows are rendered
    (newest first), with the total and, where `full_list_url` names one, a link to all of them.
    `list_select_related` names the related rows the columns print (one query, not one per row)."""

    shown = 50
    ordering = ("-pk",)
    formset = NewestRowsFormSet
    template = "admin/edit_inline/newest_rows.html"
    list_select_related: tuple[str, ...] = ()

    def full_list_url(self, request, obj) -> str | None:
        """Where all the rows of `obj` can be read (None: nowhere but here)."""
        return None

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset.select_related(*self.list_select_related) if self.list_select_related else queryset

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)  # a class made for this page
        formset.shown = self.shown
        formset.full_list_url = self.full_list_url(request, obj) if obj is not None else None
        return formset


def form_rename_check(form, *, what: str) -> str:
    """A form's clean_name for a template or channel: one that versions in use name keeps its name
    (`config_rename_check`, said on the name field; the service checks again under the row's lock)."""
    from django.core.exceptions import ValidationError

    name = form.cleaned_data["name"]
    if form.instance.pk:
        stored = type(form.instance).objects.filter(pk=form.instance.pk).values_list("name", flat=True).first()
        try:
            config_rename_check(what=what, old=stored or "", new=name)
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["name"]) from None
    return name
