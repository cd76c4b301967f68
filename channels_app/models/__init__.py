"""Models of the channels app, split by concept and re-exported here."""

from channels_app.choices import ChannelKind, DeliveryStatus
from channels_app.models.channels import Channel, ChannelBreaker, InboundMessage
from channels_app.models.consent import Consent, DataSubject, ErasureRecord, Suppression, Topic
from channels_app.models.deliveries import Delivery, DeliveryAttempt, FrequencyCap
from channels_app.models.templates import ContentBlock, MessageTemplate, TemplateVariant

__all__ = [
    "ChannelKind",
    "DeliveryStatus",
    "Channel",
    "ChannelBreaker",
    "InboundMessage",
    "Consent",
    "DataSubject",
    "ErasureRecord",
    "Suppression",
    "Topic",
    "Delivery",
    "DeliveryAttempt",
    "FrequencyCap",
    "ContentBlock",
    "MessageTemplate",
    "TemplateVariant",
]
