"""What a channel's settings may hold, checked when the channel is saved (the admin form) and
shown on the channel's page for rows saved before the rules existed. The same rules are
enforced again at send time by the providers (journeys.services.outbound)."""

from __future__ import annotations

import re

from journeys.errors import OutboundRefused, OutboundUnreachable, SecretUnavailable
from journeys.services.outbound import outbound_host_check, outbound_secret_name_check, outbound_url_problem

MAX_CONNECTIONS = 32
SECRET_KEY_RE = re.compile(r"(secret|token|password|passwd|api_?key|private|credential)", re.IGNORECASE)


def channel_settings_problems(*, provider: str, settings: object) -> list[str]:
    """Why these settings cannot be saved for `provider`, one message per problem, each naming
    its key (empty when they are fine):

    - a key that looks like a secret must name an environment variable instead (`..._env`);
    - every `..._env` value must be a JOURNEYS_SECRET_... variable name;
    - every URL the provider connects to must be http(s) to an allowed address;
    - a host the provider connects to (SMTP) must be an allowed address;
    - `connections` (sessions at once for a large batch) is a whole number from 1 to 32."""
    from channels_app.providers import PROVIDERS

    if not isinstance(settings, dict):
        return ["settings must be a JSON object"]
    problems: list[str] = []
    for key, value in settings.items():
        if key.endswith("_env"):
            try:
                outbound_secret_name_check(name=value if isinstance(value, str) else repr(value))
            except SecretUnavailable as exc:
                problems.append(f"{key}: {exc.message}")
        elif SECRET_KEY_RE.search(key):
            problems.append(f"{key!r} looks like a secret: keep secrets in the environment and name the variable "
                            f"instead, e.g. \"{key}_env\": \"JOURNEYS_SECRET_{key.upper()}\"")
    if "connections" in settings:
        value = settings["connections"]
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CONNECTIONS):
            problems.append(f"connections: must be a whole number from 1 to {MAX_CONNECTIONS} (sessions a "
                            f"dispatcher opens at once for a large batch), not {value!r}")
    cls = PROVIDERS.get(provider)
    for key in getattr(cls, "url_settings", ()):
        if key in settings:
            value = settings[key]
            problem = outbound_url_problem(url=value) if isinstance(value, str) else "must be a URL string"
            if problem:
                problems.append(f"{key}: {problem}")
    for key in getattr(cls, "host_settings", ()):
        if settings.get(key):
            try:
                outbound_host_check(host=str(settings[key]), port=int(settings.get("port") or 25))
            except OutboundRefused as exc:
                problems.append(f"{key}: {exc.message}")
            except (OutboundUnreachable, ValueError):
                pass  # checked again right before connecting
    return problems
