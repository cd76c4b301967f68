"""Constants of the journeys app, in one place."""

from django.db import models

# The roles: groups `roles_setup` maintains (journeys.services.governance), granted and revoked through
# `user_roles_set`. Business-unit editors also need a unit (`business_unit_grant_editor`): the role
# without a unit edits nothing, and a unit grant without the role edits nothing either.
ROLE_OPS = "Ops admins"
ROLE_EDITORS = "Business-unit editors"
ROLE_APPROVERS = "Approvers"
ROLE_AGENTS = "Agents"
ROLE_ANALYSTS = "Analysts"
ROLES = (ROLE_OPS, ROLE_EDITORS, ROLE_APPROVERS, ROLE_AGENTS, ROLE_ANALYSTS)


class IdentityKind(models.TextChoices):
    USER_ID = "user_id", "User id"
    ANONYMOUS_ID = "anonymous_id", "Anonymous id"
    EMAIL = "email", "Email"
    PHONE = "phone", "Phone"


class EventType(models.TextChoices):
    TRACK = "track", "Track"
    IDENTIFY = "identify", "Identify"
    PAGE = "page", "Page"
    SCREEN = "screen", "Screen"
    GROUP = "group", "Group"
    ALIAS = "alias", "Alias"


class EventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    FAILED = "failed", "Failed"
    # Stored as history: it counts for segments, reports and event-count rules and stopped what it
    # stops (goals, inactivity windows, a wait begun before it), but started no workflow (an import
    # that did not opt in, or older than EVENT_TRIGGER_MAX_AGE_S when accepted).
    HISTORY = "history", "History (no workflow)"


class WorkflowStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    ARCHIVED = "archived", "Archived"


class VersionState(models.TextChoices):
    DRAFT = "draft", "Draft"
    IN_REVIEW = "in_review", "In review"
    APPROVED = "approved", "Approved"
    LIVE = "live", "Live"
    RETIRED = "retired", "Retired"


class TriggerKind(models.TextChoices):
    EVENT = "event", "Event received"
    ATTRIBUTE_CHANGE = "attribute_change", "Profile attribute changed"
    SEGMENT_ENTRY = "segment_entry", "Segment entered"
    DATE_ATTRIBUTE = "date_attribute", "Date attribute (anniversary)"
    INACTIVITY = "inactivity", "Inactivity (A without B)"
    SCHEDULE = "schedule", "Cron schedule over a segment"


class ReentryPolicy(models.TextChoices):
    ONCE = "once", "Once per customer"
    COOLDOWN = "cooldown", "Again after a cooldown"
    ALWAYS = "always", "Always"


class RunStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    WAITING = "waiting", "Waiting"
    COMPLETED = "completed", "Completed"
    EXITED = "exited", "Exited"
    FAILED = "failed", "Failed"


OPEN_RUN_STATUSES = (RunStatus.ACTIVE, RunStatus.WAITING)


class ApiScope(models.TextChoices):
    """What an API token may do (a token holds a list of these)."""

    TRACK = "track", "Send events (/v1/track, /v1/batch...)"
    TRIGGER = "trigger", "Trigger workflows"
    SEND = "send", "Send transactional messages"
    CUSTOMERS_READ = "customers:read", "Read customer profiles"
    CUSTOMERS_WRITE = "customers:write", "Update, merge and delete customers"
    EXPORT = "export", "Export a customer's data"
    # Read-only views of the configuration and of what happened (ids and names for the calls above):
    WORKFLOWS_READ = "workflows:read", "Read workflows and their versions"
    CHANNELS_READ = "channels:read", "Read channels and message templates (never settings or secrets)"
    DELIVERIES_READ = "deliveries:read", "Read deliveries (every message's status, of every customer)"
    EXPERIMENTS_READ = "experiments:read", "Read experiments and their results"
    METRICS_READ = "metrics:read", "Read the operational metrics (/metrics: backlogs, queues, breakers)"


class StreamEventType(models.TextChoices):
    """What the outbound event stream tells its destinations (Standard Webhooks `type`)."""

    MESSAGE_SENT = "message.sent", "Message sent"
    MESSAGE_DELIVERED = "message.delivered", "Message delivered"
    MESSAGE_OPENED = "message.opened", "Message opened"
    MESSAGE_CLICKED = "message.clicked", "Message clicked"
    MESSAGE_BOUNCED = "message.bounced", "Message bounced"
    MESSAGE_FAILED = "message.failed", "Message failed"
    MESSAGE_SUPPRESSED = "message.suppressed", "Message suppressed (with its reason)"
    JOURNEY_ENTERED = "journey.entered", "Journey entered"
    JOURNEY_STEP_REACHED = "journey.step_reached", "Journey step reached"
    JOURNEY_CONVERTED = "journey.converted", "Journey converted"
    JOURNEY_EXITED = "journey.exited", "Journey exited (completed, exited or failed)"
    CASE_OPENED = "case.opened", "Case opened"
    CASE_RESOLVED = "case.resolved", "Case resolved"


class QuarantineStatus(models.TextChoices):
    QUARANTINED = "quarantined", "Quarantined"
    REPLAYED = "replayed", "Replayed"
    DISCARDED = "discarded", "Discarded"


class QuarantineReason(models.TextChoices):
    """Why an event was set aside (the error codes of the tracking API)."""

    INVALID = "invalid_event", "Invalid field"
    TOO_LARGE = "too_large", "Too large"
    TOO_DEEP = "too_deep", "Nested too deeply"
    SCHEMA = "schema", "Breaks the event catalog"
