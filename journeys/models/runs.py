from __future__ import annotations

from django.db import models

from journeys.choices import RunStatus
from journeys.models.base import Timestamped
from journeys.models.fields import ClientJSONField


class JourneyRun(Timestamped):
    """Where one customer is in one workflow version, and what it remembers (variables).

    `trigger_key` makes enrolment idempotent: a retried task that enrols the
    same customer for the same trigger finds the existing run.
    """

    # workflow_id and customer_id lead the indexes below: their own FK indexes would only slow inserts.
    workflow = models.ForeignKey("journeys.Workflow", on_delete=models.CASCADE, related_name="runs", db_index=False)
    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.PROTECT, related_name="runs",
                                db_index=False)  # run_version_created_idx leads with it
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="runs", db_index=False)
    trigger_key = models.CharField(max_length=100)
    trigger_event = models.ForeignKey(
        "journeys.Event", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.ACTIVE)
    exclusive = models.BooleanField(default=True, help_text="counts toward 'one open run per customer'")
    current_step = models.CharField(max_length=64, blank=True)
    next_wake_at = models.DateTimeField(null=True, blank=True)
    wait_event = models.CharField(max_length=255, blank=True)
    variables = ClientJSONField(default=dict, blank=True)
    visits = models.JSONField(default=dict, blank=True, help_text="step key -> times reached")
    converted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "customer", "trigger_key"], name="run_trigger_unique"),
            models.UniqueConstraint(
                fields=["workflow", "customer"],
                condition=models.Q(exclusive=True, status__in=["active", "waiting"]),
                name="one_open_run_per_customer",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_wake_at"], name="run_due_idx"),
            models.Index(fields=["customer", "status"], name="run_customer_status_idx"),
            # "does any run wait for this event?" (internal events nobody hears are stored processed)
            models.Index(fields=["wait_event"], condition=models.Q(status="waiting") & ~models.Q(wait_event=""),
                         name="run_waiting_event_idx"),
            # Open runs per workflow and version (dashboard, graph page): holds only open runs, so
            # counting them costs what is open, not every run ever made.
            models.Index(fields=["workflow", "status", "version"], condition=models.Q(status__in=["active", "waiting"]),
                         name="run_open_idx"),
            # Finished runs by when they finished: the dashboard's failures of the last day.
            models.Index(fields=["status", "finished_at"], condition=models.Q(finished_at__isnull=False),
                         name="run_finished_idx"),
            # The same per workflow: the retention walks only the workflows whose history goes,
            # never the old runs of those it keeps (open experiments).
            models.Index(fields=["workflow", "status", "finished_at"], condition=models.Q(finished_at__isnull=False),
                         name="run_workflow_finished_idx"),
            # A version's runs, the newest first: the graph page counts a recent window of them.
            models.Index(fields=["version", "created_at"], name="run_version_created_idx"),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} {self.status} at {self.current_step or '-'}"


class StepExecution(models.Model):
    """Log of one visit of a run to a step. Unique per (run, step, visit): a retried
    task finds the finished row and reuses its outcome instead of acting again."""

    run = models.ForeignKey(JourneyRun, on_delete=models.CASCADE, related_name="executions")
    step_key = models.CharField(max_length=64)
    step_kind = models.CharField(max_length=40)
    visit = models.PositiveIntegerField(default=1)
    outcome = models.CharField(max_length=64, blank=True)
    detail = ClientJSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "started_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step_key", "visit"], name="step_execution_unique")
        ]

    def __str__(self) -> str:
        return f"{self.step_key}#{self.visit} -> {self.outcome or '...'}"


class TriggerWatch(models.Model):
    """An open inactivity window: event A happened; if B does not follow by `due_at`, enrol."""

    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="watches")
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="+")
    start_event = models.ForeignKey("journeys.Event", on_delete=models.CASCADE, related_name="+")
    due_at = models.DateTimeField()
    cancelled_at = models.DateTimeField(null=True, blank=True)
    fired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "start_event"], name="watch_unique")
        ]
        indexes = [models.Index(fields=["due_at"], name="watch_due_idx", condition=models.Q(fired_at__isnull=True, cancelled_at__isnull=True))]


class TriggerState(models.Model):
    """Per-version bookkeeping of time-based triggers, changed only under this row's lock.

    Cron: `last_tick_at` is the last moment considered; a matched moment is claimed once
    (`broadcast_at`) and its audience enrolled page by page, each page committing with the
    cursor (`broadcast_after_id`), so a crash resumes where it stopped and two ticks never
    claim the same moment twice. Date triggers: `prepared_at` says when the version's
    due moments were first computed for every customer (see journeys.engine.dates).
    """

    version = models.OneToOneField("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="trigger_state")
    last_tick_at = models.DateTimeField(null=True, blank=True)
    broadcast_at = models.DateTimeField(null=True, blank=True, help_text="cron moment whose audience is being enrolled")
    broadcast_after_id = models.BigIntegerField(default=0, help_text="customers up to this id are enrolled")
    prepared_at = models.DateTimeField(null=True, blank=True)


class EntryGate(models.Model):
    """The last entry of a customer into a workflow whose re-entry policy limits entries
    (once, cooldown). Its unique key and a conditional upsert in the enrolling transaction
    enforce the limit in the database: two ticks or workers enrolling the same customer at
    once cannot both pass (journeys.engine.entry_gate.entries_admit)."""

    workflow = models.ForeignKey("journeys.Workflow", on_delete=models.CASCADE, related_name="+")
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="+")
    entered_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow", "customer"], name="entry_gate_unique")]


class DateTriggerDue(models.Model):
    """When a customer is next due in a date-attribute trigger (a birthday, a renewal), in UTC,
    precomputed from the trait, the trigger's offset and local time and the customer's timezone.
    The tick reads only the rows that are due (index on due_at); the window closes at the end of
    that local day (`expires_at`)."""

    # No database-level foreign keys: a million rows are rewritten when a version goes live, and
    # checking each at commit cost a third of that. Deleting a customer or a version still deletes
    # their rows (Django's cascade); the tick skips rows whose customer is gone.
    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="+",
                                db_constraint=False, db_index=False)  # date_due_unique leads with it
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="+", db_constraint=False)
    occurs_on = models.DateField(help_text="the customer's local date of the occurrence (the trigger key)")
    due_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "customer"], name="date_due_unique")]
        indexes = [models.Index(fields=["due_at"], name="date_due_at_idx")]


class DateTriggerStale(models.Model):
    """Customers whose due moments must be recomputed: a watched date trait, the timezone or a
    merge changed. Rows are written by a database trigger on the customer table, so every path
    that changes a profile (the event API's set-based updates, imports, merges, steps, the admin,
    erasure) is covered; the tick drains them (journeys.engine.dates)."""

    customer_id = models.BigIntegerField(primary_key=True)


class SegmentMember(models.Model):
    """Who was in a segment-entry trigger's segment at its last refresh (journeys.engine.segment_entries):
    the hourly refresh enrols those who joined since, whatever made them join (time passing, an import,
    a change made without an event). Inserted with ON CONFLICT DO NOTHING: only the refresh that
    records a new member enrols them."""

    version = models.ForeignKey("journeys.WorkflowVersion", on_delete=models.CASCADE, related_name="+",
                                db_constraint=False, db_index=False)  # segment_member_unique leads with it
    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="+", db_constraint=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "customer"], name="segment_member_unique")]


class SegmentRecheck(models.Model):
    """When to compare a customer with the segment-entry triggers' segments again (PostgreSQL):
    the hourly refresh reads only the rows due, not every customer (journeys.services.rechecks).
    The refresh writes the earliest moment any live segment-entry rule's answer may change with
    time alone; a database trigger marks a customer due at once when anything a rule can read
    changes on the row, while the refresh keeps rechecks (a SegmentRules row exists)."""

    customer = models.OneToOneField("journeys.Customer", primary_key=True, on_delete=models.CASCADE,
                                    related_name="+", db_constraint=False)  # as StageRecheck's
    due_at = models.DateTimeField()
    # Set when a refresh left the customer due without comparing them (a worker held them, or they
    # changed meanwhile): the refresh that last compared them. Who entered through the event path
    # since then is not entered again when they are compared.
    since = models.DateTimeField(null=True)

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="segment_recheck_due_idx")]


class SegmentRules(models.Model):
    """The live segment-entry versions the rechecks were worked out for (one row; none: nobody
    is marked). When they change, the next refresh walks every customer once."""

    fingerprint = models.CharField(max_length=64)
    walked_at = models.DateTimeField(null=True)


class SchedulerLease(models.Model):
    """A named lease that keeps a periodic job from overlapping itself: taken with one
    conditional UPDATE, renewed while the job works, released at its end; a holder that dies
    loses it when it expires (journeys.engine.lease)."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=128, blank=True)
    expires_at = models.DateTimeField()


class EngineGeneration(models.Model):
    """A counter bumped whenever the set of live versions changes; workers reload their trigger index."""

    value = models.PositiveBigIntegerField(default=0)
