"""Background jobs started from the console: long operations with progress and a result page."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class JobKind(models.TextChoices):
    IMPORT_CUSTOMERS = "import_customers", "Bulk import of customers"
    IMPORT_EVENTS = "import_events", "Bulk import of events"
    REPLAY = "replay", "Dry-run replay of a version"
    EXPORT = "export", "Data-subject export"
    TRIGGER = "trigger", "Workflow trigger (API)"
    ERASE = "erase", "Data-subject erasure (API)"


# Jobs that read an uploaded file (`Job.input_text`).
IMPORT_KINDS = (JobKind.IMPORT_CUSTOMERS, JobKind.IMPORT_EVENTS)


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Job(models.Model):
    """One long operation run by a django-q2 worker.

    The console page polls `progress_done / progress_total`; the result (counts, rejected rows,
    the replay report, an export's summary) stays here so the result page can be opened again
    later; an export's copy itself is in JobChunk rows. While an import runs, `result` holds its
    place in the file and its counts so far (`partial`), so its parts and the sweep go on from there.
    The uploaded input is kept in the row because the worker may run on another machine.
    """

    kind = models.CharField(max_length=32, choices=JobKind.choices)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    params = models.JSONField(default=dict, blank=True)
    input_name = models.CharField(max_length=255, blank=True)
    input_text = models.TextField(blank=True, help_text="uploaded file content (imports)")
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    message = models.CharField(max_length=255, blank=True, help_text="what the job is doing now")
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    api_token = models.ForeignKey("journeys.ApiToken", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="jobs", help_text="the API token that started it")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True,
                                       help_text="API jobs: the client's key (a replay finds this job)")
    request_hash = models.CharField(max_length=64, blank=True, help_text="API jobs: what the key was used for")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["finished_at"], condition=models.Q(finished_at__isnull=False),
                                name="job_finished_idx")]  # the history retention, oldest first
        permissions = [
            ("run_data_jobs", "Can run bulk imports and data-subject exports"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)

    @property
    def percent(self) -> int:
        if self.finished and self.status == JobStatus.SUCCEEDED:
            return 100
        return int(100 * self.progress_done / self.progress_total) if self.progress_total else 0


class JobChunk(models.Model):
    """A piece of a job's result too large for one row: a data-subject export is written here as
    ordered pieces of its JSON text while it is produced, page by page, and the download streams
    them back in order, so neither the worker nor the web process ever holds the whole of it.
    They go with the job (cascade), when the export expires and when the customer is erased."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="jobchunk_job_seq_unique")]

    def __str__(self) -> str:
        return f"job {self.job_id} chunk {self.seq}"
