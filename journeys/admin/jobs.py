"""Background jobs: start an import, replay or export, watch its progress, read its result."""

from __future__ import annotations

import json
import os

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse

from journeys.admin.common import (
    object_or_404,
)
from journeys.errors import JourneyError, PermissionDenied
from journeys.services.event_parsing import MAX_DEPTH, nesting_path
from journeys.models import (
    Job,
)
from journeys.selectors import (
    EDIT,
    REVIEW,
    user_has_global,
    user_has_workflows,
    versions_for_user,
)


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
    start_workflows = forms.BooleanField(
        required=False, label="Start workflows for these events",
        help_text="off (the default): the events are stored as history - they count for segments, reports and "
                  "event-count rules and still convert goals and close windows, but start no workflow, so a backfill "
                  "sends no welcome. Tick it only "
                  "for recent events that should act as if they arrived live (events older than "
                  "EVENT_TRIGGER_MAX_AGE_S start nothing anyway)")

    CUSTOMERS_HELP = ("off (the default): the rows set traits and consents (date triggers read the dates they set) "
                      "but start no attribute-change or segment-entry workflow, so moving customers in does not "
                      "greet everyone on the pro plan. Tick it for a sync of real changes that should act as if "
                      "the customers had changed live")

    FIELDS = {"import_customers": ("file", "source", "start_workflows"),
              "import_events": ("file", "source", "start_workflows"),
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
            elif name not in ("days", "start_workflows"):
                self.fields[name].required = True
        if "start_workflows" in self.fields:
            from journeys.services.jobs import START_WORKFLOWS_LABELS

            self.fields["start_workflows"].label = START_WORKFLOWS_LABELS[kind]
            if kind == "import_customers":
                self.fields["start_workflows"].help_text = self.CUSTOMERS_HELP

    def params(self) -> dict:
        data = self.cleaned_data
        if self.kind == "replay":
            return {"version_id": data["version"].pk, "days": data.get("days") or 7}
        if self.kind == "export":
            return {"customer_id": self.customer.pk}
        return {"source_id": data["source"].pk, "start_workflows": bool(data.get("start_workflows"))}

    def clean_customer(self):
        from journeys.selectors import customer_find

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
                whole = json.loads(text)  # NaN and 1e999 are read: the import rejects their rows by number
            except RecursionError:
                raise ValidationError(f"{name} nests lists or objects too deeply (at {nesting_path(text) or 'the top'}):"
                                      f" at most {MAX_DEPTH} levels") from None
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
        from journeys.console.selectors import jobs_for_user

        return jobs_for_user(request.user) & super().get_queryset(request)

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_staff and (
            self.has_add_permission(request) or jobs_for_user_exists(request.user))

    def has_view_permission(self, request, obj=None):
        from journeys.console.selectors import jobs_for_user

        if obj is None:
            return self.has_module_permission(request)
        return jobs_for_user(request.user).filter(pk=obj.pk).exists()

    def has_add_permission(self, request):
        return _may_start_data_jobs(request.user) or user_has_workflows(request.user, EDIT) or \
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
        from journeys.console.selectors import job_result
        from journeys.console.views import job_status
        from journeys.services.jobs import jobs_purge_exports

        jobs_purge_exports()
        job = object_or_404(self.get_queryset(request), object_id)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "job": job,
                   "result": job_result(job), "status": job_status(job),
                   "title": f"Job #{job.pk}: {job.get_kind_display()}"}
        return render(request, "admin/journeys/job/job.html", context)


def _may_start_data_jobs(user) -> bool:
    from journeys.services.jobs import DATA_JOB_PERM

    return bool(user.is_active and (user.is_superuser or user.has_perm(DATA_JOB_PERM)))


def jobs_for_user_exists(user) -> bool:
    from journeys.console.selectors import jobs_for_user

    return jobs_for_user(user).exists()
