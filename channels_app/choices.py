"""Constants of the channels app, in one place."""

from django.db import models


class ChannelKind(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"
    IN_APP = "in_app", "In-app"
    CHAT = "chat", "Chat"
    VOICE = "voice", "Voice"
    WEBHOOK = "webhook", "Webhook"


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    DEFERRED = "deferred", "Deferred (waits for a window, a retry or a closed breaker)"
    SENDING = "sending", "Sending"
    SUPPRESSED = "suppressed", "Suppressed"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    OPENED = "opened", "Opened"
    CLICKED = "clicked", "Clicked"
    FAILED = "failed", "Failed"
    BOUNCED = "bounced", "Bounced"


# Statuses of a message that was sent: the provider took it and nobody refused it. A bounced one
# (the recipient's server refused the address) was not: it is counted as "bounced", beside "failed",
# wherever messages are counted (graph page, dashboard, /metrics).
SENT_STATUSES = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.OPENED, DeliveryStatus.CLICKED)
# Statuses of a message that counts as a contact for frequency caps: every one that went out to the
# provider (`sent_at` set), a bounce reported after the provider took it included.
CONTACT_STATUSES = (*SENT_STATUSES, DeliveryStatus.BOUNCED)
# Vendor error codes (Twilio's, in a refusal of its REST API or a status callback's ErrorCode) that say
# the number itself cannot get messages: 30005 unknown or inactive number, 30006 landline or unreachable
# carrier, 21211 invalid 'To' number, 21614 not a mobile number. Recorded as a bounce, and the number
# suppressed like a hard bounce (consent.address_suppress).
DEAD_NUMBER_CODES = frozenset({"30005", "30006", "21211", "21614"})
# Twilio 21610 "Attempt to send to unsubscribed recipient": the person texted STOP to the sending
# number. Recorded as failed (reason channel_opt_out), and the number's customers opted out of the
# channel kind as an inbound STOP does.
UNSUBSCRIBED_CODES = frozenset({"21610"})
# Only ever moves forward: a late "delivered" callback must not undo "opened".
STATUS_RANK = {
    DeliveryStatus.SENT: 1, DeliveryStatus.DELIVERED: 2, DeliveryStatus.OPENED: 3, DeliveryStatus.CLICKED: 4,
}


class Reason(models.TextChoices):
    """Why a delivery was suppressed or deferred (error codes in one place)."""

    HOLDOUT = "holdout", "Experiment holdout"
    DO_NOT_CONTACT = "do_not_contact", "Global do-not-contact"
    CHANNEL_OPT_OUT = "channel_opt_out", "Opted out of the channel"
    TOPIC_OPT_OUT = "topic_opt_out", "Opted out of the topic"
    NO_OPT_IN = "no_opt_in", "Topic requires opt-in"
    NO_ADDRESS = "no_address", "no enabled channel can reach this customer"
    FREQUENCY_CAP = "frequency_cap", "Frequency cap reached"
    RECENT_CONTACT = "recent_contact", "Contacted recently on another channel"
    ERASED = "erased", "Customer erased"
    UNDELIVERABLE = "undeliverable", "The address bounced for good (hard bounce)"
    QUIET_HOURS = "quiet_hours", "Quiet hours"
    PAUSED = "paused", "Channel paused"
    BREAKER_OPEN = "breaker_open", "Circuit breaker open"
    RATE_LIMIT = "rate_limit", "Channel send rate limit"
    RETRY = "retry", "Retrying after a transient error"
    PERMANENT_ERROR = "permanent_error", "Permanent provider error"
    TEMPLATE_ERROR = "template_error", "The template could not be rendered"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted", "Gave up after the last retry"
    SEND_TIME = "send_time", "Waiting for the customer's usual engagement hour"


class Urgency(models.TextChoices):
    """How a best-channel message ranks channels: urgent updates go to push or SMS first,
    triage (a conversation to start) to chat first, normal ones follow the customer."""

    NORMAL = "normal", "Normal"
    URGENT = "urgent", "Urgent (push or SMS first)"
    TRIAGE = "triage", "Triage (chat first)"


# Channel kinds tried first for each urgency, in order.
URGENCY_KINDS = {
    Urgency.URGENT: (ChannelKind.PUSH, ChannelKind.SMS),
    Urgency.TRIAGE: (ChannelKind.CHAT,),
    Urgency.NORMAL: (),
}


class ConsentStatus(models.TextChoices):
    OPTED_IN = "opted_in", "Opted in"
    OPTED_OUT = "opted_out", "Opted out"
    UNKNOWN = "unknown", "Unknown"


class BreakerState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open (probing)"


class PressureAction(models.TextChoices):
    SUPPRESS = "suppress", "Suppress"
    DEFER = "defer", "Defer"
