"""The console provider: logs the message (demo and development)."""

from __future__ import annotations

import logging

from channels_app.providers.base import OutgoingMessage, Provider, SendResult, provider

logger = logging.getLogger("channels_app.console")


@provider
class ConsoleProvider(Provider):
    name = "console"
    kinds = ("email", "sms", "push", "in_app", "chat", "voice", "webhook")

    def send(self, message: OutgoingMessage) -> SendResult:
        logger.info("[%s] to %s: %s | %s", message.kind, message.to, message.subject, message.body[:200])
        return SendResult(provider_message_id=f"console-{message.delivery_id}")
