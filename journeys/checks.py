"""System checks for a secure deployment (`manage.py check --deploy`), beyond Django's own.

- journeys.E001: SECRET_KEY is public — the old built-in fallback, or a string written in a
  file of this repository (test keys, examples in docs). Anyone could sign click links that
  redirect anywhere, open any preference centre, fake delivery callbacks and forge tasks.
- journeys.E002: SECRET_KEY is short or has little variety.
- journeys.E003: OUTBOUND_ALLOWED_NETWORKS holds something that is not a network (always checked).
- journeys.W001: DELIVERY_SENDING_LEASE_S is not longer than the task timeout of the cluster that
  sends (always checked; a warning, so that tests may shorten the lease on purpose): a dispatcher
  still sending when its claim's lease ends would send again what the sweeper hands to another one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register  # noqa: A004

# Keys that were public before the repository stopped shipping a fallback.
KNOWN_PUBLIC_KEYS = frozenset({
    "dev-only-insecure-key-change-me-in-production-0123456789",
})
MIN_KEY_LENGTH = 50
MIN_KEY_UNIQUE_CHARACTERS = 10
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "staticfiles", "build", "tmp", "__pycache__",
              ".hypothesis", ".pytest_cache"}
_TEXT_SUFFIXES = {".py", ".md", ".txt", ".sh", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".json", ".env",
                  ".html", ".js", ".css", ""}
_MAX_FILE_BYTES = 2 * 1024 * 1024


def _repo_files(root: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for filename in filenames:
            path = Path(directory) / filename
            if path.suffix in _TEXT_SUFFIXES:
                yield path


def secret_key_found_in(*, key: str, root: Path, skip: Path | None = None) -> Path | None:
    """The first text file under `root` (the code base) that contains `key`, else None."""
    needle = key.encode()
    for path in _repo_files(root):
        if skip is not None and path == skip:
            continue
        try:
            if path.stat().st_size <= _MAX_FILE_BYTES and needle in path.read_bytes():
                return path
        except OSError:
            continue
    return None


@register(Tags.security, deploy=True)
def secret_key_check(app_configs, **kwargs) -> list[Error]:
    key = str(getattr(settings, "SECRET_KEY", "") or "")
    root = Path(settings.BASE_DIR)
    hint = ("generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))' and give the same value "
            "to every web and worker process (SECRET_KEY or SECRET_KEY_FILE)")
    errors = []
    if key in KNOWN_PUBLIC_KEYS:
        errors.append(Error("SECRET_KEY is the old public fallback key", hint=hint, id="journeys.E001"))
    elif key and (found := secret_key_found_in(key=key, root=root,
                                               skip=Path(getattr(settings, "LOCAL_SECRET_KEY_FILE", "")))):
        errors.append(Error(f"SECRET_KEY is public: it is written in {found.relative_to(root)}", hint=hint,
                            id="journeys.E001"))
    if len(key) < MIN_KEY_LENGTH or len(set(key)) < MIN_KEY_UNIQUE_CHARACTERS:
        errors.append(Error(f"SECRET_KEY is too weak ({len(key)} characters, {len(set(key))} different; need at "
                            f"least {MIN_KEY_LENGTH} and {MIN_KEY_UNIQUE_CHARACTERS})", hint=hint,
                            id="journeys.E002"))
    return errors


@register(Tags.security)
def outbound_allow_list_check(app_configs, **kwargs) -> list[Error]:
    errors = []
    for item in getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", ()) or ():
        try:
            ipaddress.ip_network(str(item).strip(), strict=False)
        except ValueError:
            errors.append(Error(f"OUTBOUND_ALLOWED_NETWORKS: {item!r} is not a network (e.g. 10.20.0.0/16)",
                                id="journeys.E003"))
    return errors


@register()
def sending_lease_check(app_configs, **kwargs) -> list[Warning]:
    lease = int(getattr(settings, "DELIVERY_SENDING_LEASE_S", 600))
    timeout = (getattr(settings, "Q_CLUSTER", {}) or {}).get("timeout")
    if timeout and lease <= int(timeout):
        return [Warning(f"DELIVERY_SENDING_LEASE_S ({lease}) must be longer than the task timeout Q_TIMEOUT ({timeout}): "
                      "a dispatcher still sending when its lease ends would send again what the sweeper hands out",
                      hint="raise DELIVERY_SENDING_LEASE_S (default 600) or lower Q_TIMEOUT (default 120)",
                      id="journeys.W001")]
    return []
