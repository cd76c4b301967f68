"""Providers: one small interface, one class per vendor. Adding a provider is one class
decorated with `@provider` (and imported here)."""

from channels_app.providers.base import (
    OutgoingMessage,
    PermanentError,
    Provider,
    ProviderError,
    SendResult,
    TransientError,
    get_provider,
    provider,
    PROVIDERS,
)
from channels_app.providers import console, email, http  # noqa: F401,E402  (register)

__all__ = [
    "OutgoingMessage", "PermanentError", "Provider", "ProviderError", "SendResult", "TransientError",
    "get_provider", "provider", "PROVIDERS",
]
