"""The provider interface and its errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from journeys.errors import SecretUnavailable
from journeys.services.outbound import SECRET_PREFIX, outbound_secret_name_check, outbound_secret_read


class ProviderError(Exception):
    """A send failed. `transient` errors are retried (with backoff); others are not.
    `unanswered`: the message was handed over and no answer came (a timeout, a connection lost
    after the request was written): the vendor may have taken it, so it is retried with the
    same idempotency key on the same channel, never rerouted to a fallback.
    `recipient_only`: a temporary refusal of this one recipient (greylisting, a full mailbox):
    retried, but it says nothing about the channel, so it never counts toward its breaker.
    `bounce`: the recipient's address does not exist (a hard bounce): recorded as bounced, and
    the address is not sent to again (consent.address_suppress).
    `opt_out`: the vendor refused because the recipient unsubscribed there (Twilio 21610, a STOP
    texted to the sending number): recorded as failed (reason channel_opt_out), and the customer
    opted out of the channel kind, as our own STOP does."""

    transient: bool = False

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None,
                 unanswered: bool = False, recipient_only: bool = False, bounce: bool = False,
                 opt_out: bool = False):
        super().__init__(message)
        self.bounce = bounce
        self.opt_out = opt_out
        self.status_code = status_code
        self.retry_after = retry_after
        self.unanswered = unanswered
        self.recipient_only = recipient_only

    @property
    def channel_failure(self) -> bool:
        """Whether this failure counts toward the channel's circuit breaker."""
        return self.transient and not self.recipient_only


class TransientError(ProviderError):
    """Timeouts, connection errors, 5xx, 429: worth retrying later."""

    transient = True


class PermanentError(ProviderError):
    """4xx, rejected recipient, bad configuration: retrying would fail the same way."""

    transient = False


@dataclass
class OutgoingMessage:
    """Everything a provider needs; built from a Delivery (providers never touch the ORM)."""

    delivery_id: int
    idempotency_key: str
    kind: str
    to: str
    subject: str
    body: str
    html_body: str = ""
    headers: dict = field(default_factory=dict)
    status_callback_url: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class SendResult:
    provider_message_id: str = ""
    status_code: int | None = None


class Provider:
    """Sends messages on one channel. `settings` are the channel's non-secret settings;
    `secret(name)` reads the secret that `settings[name + '_env']` names: an environment
    variable called JOURNEYS_SECRET_... (or the same key of the CHANNEL_SECRETS setting), never
    any other variable (journeys.services.outbound).

    `url_settings` / `host_settings` name the settings a provider connects to: they are checked
    when the channel is saved and again before every connection (public addresses only, unless
    allow-listed).

    One instance serves one dispatcher run: it may keep a connection open between messages
    (an SMTP session, HTTP keep-alive connections); `close()` releases it."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()
    url_settings: ClassVar[tuple[str, ...]] = ()
    host_settings: ClassVar[tuple[str, ...]] = ()
    # Whether messages should carry a signed status-callback URL (signing one costs ~40 us).
    status_callbacks: ClassVar[bool] = False
    # Whether a dispatcher may send a large batch over several instances at once (settings
    # "connections", default DELIVERY_CONNECTIONS): for providers across a network, where a
    # message's round trips, not CPU, bound the rate of one session. Instances must not share
    # state, and with batch_unit() 1 their send_batch must be `send` per message (each session
    # calls `send` itself).
    concurrent: ClassVar[bool] = False

    def __init__(self, settings: dict):
        self.settings = settings or {}

    def secret(self, name: str, *, required: bool = True) -> str:
        env_name = self.settings.get(f"{name}_env", "")
        if not env_name:
            if required:
                raise PermanentError(f"secret {name!r} missing: set settings[{name + '_env'!r}] to the name of an "
                                     f"environment variable that holds it ({SECRET_PREFIX}...)")
            return ""
        try:
            outbound_secret_name_check(name=str(env_name))  # a name that is not allowed always fails
            return outbound_secret_read(name=str(env_name))
        except SecretUnavailable as exc:
            if not required and str(env_name).startswith(SECRET_PREFIX):
                return ""
            raise PermanentError(f"secret {name!r} (settings[{name + '_env'!r}]): {exc.message}") from None

    def send(self, message: OutgoingMessage) -> SendResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult | ProviderError]:
        """Send several messages; yields one outcome per message, in order, as each one is done.

        The dispatcher records each accepted message before it asks for the next outcome, and
        may stop asking (e.g. the breaker opened): messages not reached yet are not sent. So a
        provider sends message n+1 only when outcome n has been taken, unless it uses a bulk
        endpoint, where one request is the unit. This default sends them one by one with
        `send` (over whatever connection the instance keeps)."""
        for message in messages:
            try:
                yield self.send(message)
            except ProviderError as exc:
                yield exc

    def batch_unit(self) -> int:
        """How many messages one request carries (a bulk endpoint's chunk): once a chunk is
        handed over, the dispatcher takes every outcome of it, even after deciding to stop, so
        a message the vendor may have accepted is never claimed again as "not sent"."""
        return 1

    def close(self) -> None:
        """Release connections kept between messages (the dispatcher calls it when done)."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PROVIDERS: dict[str, type[Provider]] = {}


def provider(cls: type[Provider]) -> type[Provider]:
    PROVIDERS[cls.name] = cls
    return cls


def get_provider(name: str, settings: dict) -> Provider:
    try:
        return PROVIDERS[name](settings)
    except KeyError:
        raise PermanentError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
