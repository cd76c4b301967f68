"""Constants of the agents app, in one place."""

from __future__ import annotations

from datetime import timedelta

from django.db import models


class AgentStatus(models.TextChoices):
    ONLINE = "online", "Online"
    AWAY = "away", "Away"
    OFFLINE = "offline", "Offline"


class CaseStatus(models.TextChoices):
    NEW = "new", "New (in queue)"
    ASSIGNED = "assigned", "Assigned"
    PENDING = "pending", "Pending (waiting on customer)"
    RESOLVED = "resolved", "Resolved"
    CLOSED = "closed", "Closed"


# Cases an agent is working on: they count against the agent's capacity.
OPEN_CASE_STATUSES = (CaseStatus.ASSIGNED, CaseStatus.PENDING)
# Cases the SLA timer watches while a response is due (sla_due_at set).
WAITING_CASE_STATUSES = (CaseStatus.NEW, CaseStatus.ASSIGNED)


class Priority(models.IntegerChoices):
    LOW = 1, "Low"
    NORMAL = 2, "Normal"
    HIGH = 3, "High"
    URGENT = 4, "Urgent"


# Time to first response per priority; an SLA breach re-routes or raises the priority.
SLA_FIRST_RESPONSE = {
    Priority.LOW: timedelta(hours=24),
    Priority.NORMAL: timedelta(hours=4),
    Priority.HIGH: timedelta(hours=1),
    Priority.URGENT: timedelta(minutes=15),
}


class ResolutionCode(models.TextChoices):
    ANSWERED = "answered", "Question answered"
    FIXED = "fixed", "Problem fixed"
    REFUNDED = "refunded", "Refund issued"
    REPLACED = "replaced", "Replacement sent"
    NO_ACTION = "no_action", "No action needed"
    DUPLICATE = "duplicate", "Duplicate case"
    NO_RESPONSE = "no_response", "Customer did not respond"


class EntryKind(models.TextChoices):
    NOTE = "note", "Internal note"
    MESSAGE = "message", "Message to customer"
    INBOUND = "inbound", "Message from customer"
    ASSIGNMENT = "assignment", "Assignment"
    STATUS = "status", "Status change"
    SLA = "sla", "SLA timer"
    FOLLOW_UP = "follow_up", "Follow-up workflow"
    TRANSCRIPT = "transcript", "Chat transcript"


class ConversationStatus(models.TextChoices):
    BOT = "bot", "With the bot"
    RESOLVED = "resolved", "Resolved by the bot"
    HANDED_OFF = "handed_off", "Handed off to an agent"


class Sender(models.TextChoices):
    CUSTOMER = "customer", "Customer"
    BOT = "bot", "Bot"
    AGENT = "agent", "Agent"


class Intent(models.TextChoices):
    """What the customer wants, guessed by the transparent scorer (keyword rules)."""

    REFUND = "refund", "Refund"
    CANCEL = "cancel", "Cancel"
    BILLING = "billing", "Billing"
    DELIVERY = "delivery", "Delivery"
    TECHNICAL = "technical", "Technical problem"
    ACCOUNT = "account", "Account access"
    COMPLAINT = "complaint", "Complaint"
    QUESTION = "question", "General question"


class ErrorCode(models.TextChoices):
    NOT_ALLOWED = "not_allowed", "You may not do this to this case"
    WRONG_STATUS = "wrong_status", "The case is not in a status that allows this"
    NO_CAPACITY = "no_capacity", "The agent has no free capacity"
    TAKEN = "taken", "Another agent took the case first"
    ALREADY_YOURS = "already_yours", "The case is already yours"
    NO_CHANNEL = "no_channel", "No channel can reach the customer"
