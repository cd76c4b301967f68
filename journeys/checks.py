"""System checks for a secure deployment (`manage.py check --deploy`), beyond Django's own.

- journeys.E001: SECRET_KEY is public — the old built-in fallback, or written whole in a file of
  this repository that git tracks (test keys, examples in docs); a key file kept out of git is
  not. Anyone could sign click links that redirect anywhere, open any preference centre, fake
  delivery callbacks and forge tasks.
- journeys.E002: SECRET_KEY is short or has little variety.
- journeys.E003: OUTBOUND_ALLOWED_NETWORKS holds something that is not a network (always checked).
- journeys.E004: TRUSTED_PROXIES holds something that is not an address or a network (always
  checked): a host name cannot be matched against a request's peer address.
- journeys.E005: PUBLIC_BASE_URL is left at its default or names this machine (localhost, a
  loopback address) with DEBUG off: every link in a message (List-Unsubscribe, preferences,
  clicks, opens) and every URL given to a provider (status callbacks, inbound messages) would
  point at the server's own loopback, which no customer or provider can reach.
- journeys.E006: an active user still has the password `load_demo` gave it (admin/admin, the role
  and agent logins whose password is their name): anyone who read the README signs in.
- journeys.E007: TRUSTED_PROXIES trusts every address (0.0.0.0/0, ::/0): any client may name any
  address in X-Forwarded-For, so login throttling and the addresses recorded with events are
  whatever the client says (always checked, like E004).
- journeys.W001: DELIVERY_SENDING_LEASE_S is not longer than the task timeout of the cluster that
  sends (always checked; a warning, so that tests may shorten the lease on purpose): a dispatcher
  still sending when its claim's lease ends would send again what the sweeper hands to another one.
- journeys.W002: STATIC_ROOT is missing or empty with DEBUG off: without `collectstatic` the
  admin has no styles and the console no scripts (404).
- journeys.W003: ALLOWED_HOSTS accepts any host ('*') with DEBUG off: the Host header of a
  request is taken as it comes, and nothing else in front may be checking it.
- journeys.W004: PUBLIC_BASE_URL is plain http with DEBUG off: the signed links in messages
  (unsubscribe, preferences) and the providers' callbacks travel unencrypted.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register  # noqa: A004

from journeys.services.client_ip import network_parse

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


def _tracked_files(root: Path) -> list[Path] | None:
    """The files git tracks under `root`, or None when it is not a git checkout (a copied release)."""
    try:
        listing = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [root / os.fsdecode(name) for name in listing.split(b"\0") if name]


def _shipped_files(root: Path, *, skip: set[Path]) -> Iterator[Path]:
    """Without git: every text file of the code base, but for the local key files it holds."""
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for filename in filenames:
            path = Path(directory) / filename
            if path.suffix in _TEXT_SUFFIXES and path.resolve() not in skip:
                yield path


def secret_key_found_in(*, key: str, root: Path, skip: tuple[Path, ...] = ()) -> Path | None:
    """The first public file under `root` (the code base) where `key` is written whole, as a token of
    its own (between quotes, after `=`...), not inside a longer word; else None. Public means
    tracked by git; without git, shipped: any text file but the key files in `skip`, which a
    checkout keeps out of git (the git-ignored .secret_key, a SECRET_KEY_FILE in the tree)."""
    token = re.compile(rb"(?<![\w-])" + re.escape(key.encode()) + rb"(?![\w-])")
    files = _tracked_files(root)
    if files is None:
        files = _shipped_files(root, skip={path.resolve() for path in skip})
    for path in files:
        try:
            if path.is_file() and path.stat().st_size <= _MAX_FILE_BYTES and token.search(path.read_bytes()):
                return path
        except OSError:
            continue
    return None


def _key_files() -> tuple[Path, ...]:
    files = [Path(settings.LOCAL_SECRET_KEY_FILE)] if getattr(settings, "LOCAL_SECRET_KEY_FILE", None) else []
    if named := os.environ.get("SECRET_KEY_FILE", "").strip():
        files.append(Path(named))
    return tuple(files)


@register(Tags.security, deploy=True)
def secret_key_check(app_configs, **kwargs) -> list[Error]:
    key = str(getattr(settings, "SECRET_KEY", "") or "")
    root = Path(settings.BASE_DIR)
    hint = ("generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))' and give the same value "
            "to every web and worker process (SECRET_KEY or SECRET_KEY_FILE)")
    errors = []
    if key in KNOWN_PUBLIC_KEYS:
        errors.append(Error("SECRET_KEY is the old public fallback key", hint=hint, id="journeys.E001"))
    elif len(key) >= MIN_KEY_LENGTH and (found := secret_key_found_in(key=key, root=root, skip=_key_files())):
        # (a shorter key is refused as weak below; a few characters match some word by chance)
        errors.append(Error(f"SECRET_KEY is public: it is written in {found.relative_to(root)}", hint=hint,
                            id="journeys.E001"))
    if len(key) < MIN_KEY_LENGTH or len(set(key)) < MIN_KEY_UNIQUE_CHARACTERS:
        errors.append(Error(f"SECRET_KEY is too weak ({len(key)} characters, {len(set(key))} different; need at "
                            f"least {MIN_KEY_LENGTH} and {MIN_KEY_UNIQUE_CHARACTERS})", hint=hint,
                            id="journeys.E002"))
    return errors


def _network_list_errors(name: str, *, what: str, example: str, check_id: str) -> list[Error]:
    """One error per entry of the list setting `name` that is not an address or a network."""
    return [Error(f"{name}: {item!r} is not {what} (e.g. {example})", hint=f"write {name} as comma-separated "
                  "IP addresses or CIDR networks, not host names", id=check_id)
            for item in getattr(settings, name, ()) or () if network_parse(item) is None]


@register(Tags.security)
def outbound_allow_list_check(app_configs, **kwargs) -> list[Error]:
    return _network_list_errors("OUTBOUND_ALLOWED_NETWORKS", what="a network", example="10.20.0.0/16",
                                check_id="journeys.E003")


@register(Tags.security)
def trusted_proxies_check(app_configs, **kwargs) -> list[Error]:
    return _network_list_errors("TRUSTED_PROXIES", what="an address or a network", example="10.0.0.5 or 10.0.0.0/24",
                                check_id="journeys.E004")


@register(Tags.security)
def trusted_proxies_everyone_check(app_configs, **kwargs) -> list[Error]:
    everyone = [item for item in getattr(settings, "TRUSTED_PROXIES", ()) or ()
                if (network := network_parse(item)) is not None and network.prefixlen == 0]
    return [Error(f"TRUSTED_PROXIES: {item!r} trusts every address: any client can name any address in "
                  "X-Forwarded-For, so login throttling and the addresses recorded with events and in the access "
                  "log are whatever it says", hint="list only the load balancers' own addresses or networks, e.g. "
                  "TRUSTED_PROXIES=10.0.0.5 or 10.0.0.0/24 (empty: the TCP peer's address is used)",
                  id="journeys.E007") for item in everyone]


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


def _names_this_machine(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


@register(Tags.security, deploy=True)
def public_base_url_check(app_configs, **kwargs) -> list[Error]:
    if settings.DEBUG:
        return []
    base = str(getattr(settings, "PUBLIC_BASE_URL", "") or "")
    hint = ("set PUBLIC_BASE_URL to the https address customers and providers reach this server at, e.g. "
            "PUBLIC_BASE_URL=https://journeys.example.com, in the environment of every web and worker process")
    parts = urlsplit(base)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        problem = f"PUBLIC_BASE_URL {base!r} is not an absolute http(s) URL"
    elif base.rstrip("/") == getattr(settings, "PUBLIC_BASE_URL_DEFAULT", None):
        problem = f"PUBLIC_BASE_URL is not set (it defaults to {base})"
    elif _names_this_machine(parts.hostname):
        problem = f"PUBLIC_BASE_URL {base!r} names this machine"
    else:
        return []
    return [Error(f"{problem}: unsubscribe, preference, click and open links in messages and the providers' status "
                  "and inbound URLs would point there, where no customer or provider reaches", hint=hint,
                  id="journeys.E005")]


@register(Tags.staticfiles, deploy=True)
def static_root_check(app_configs, **kwargs) -> list[Warning]:
    if settings.DEBUG or getattr(settings, "WHITENOISE_USE_FINDERS", False):
        return []  # the files are served from the apps themselves
    root = Path(settings.STATIC_ROOT) if getattr(settings, "STATIC_ROOT", None) else None
    if root is not None and root.is_dir() and any(root.iterdir()):
        return []
    return [Warning(f"STATIC_ROOT ({root}) is missing or empty: the admin's styles and the console's scripts "
                    "would answer 404", hint="run `manage.py collectstatic --noinput` with the deploy's settings "
                    "after installing each version of the code", id="journeys.W002")]


@register(Tags.security, deploy=True)
def allowed_hosts_check(app_configs, **kwargs) -> list[Warning]:
    if settings.DEBUG or "*" not in (getattr(settings, "ALLOWED_HOSTS", ()) or ()):
        return []
    return [Warning("ALLOWED_HOSTS accepts any host ('*'): requests naming any Host are served, so a forged Host "
                    "header reaches the application", hint="set ALLOWED_HOSTS to the names the console is reached "
                    "at, comma-separated, e.g. ALLOWED_HOSTS=journeys.example.com", id="journeys.W003")]


@register(Tags.security, deploy=True)
def public_base_url_https_check(app_configs, **kwargs) -> list[Warning]:
    base = str(getattr(settings, "PUBLIC_BASE_URL", "") or "")
    if settings.DEBUG or urlsplit(base).scheme != "http" or base.rstrip("/") == settings.PUBLIC_BASE_URL_DEFAULT:
        return []  # the default is journeys.E005's
    return [Warning(f"PUBLIC_BASE_URL {base!r} is plain http: the signed unsubscribe, preference and click links "
                    "in messages and the providers' status and inbound callbacks would travel unencrypted",
                    hint="serve the console over https and set PUBLIC_BASE_URL=https://...", id="journeys.W004")]


@register(Tags.security, deploy=True)
def demo_logins_check(app_configs, **kwargs) -> list[Error]:
    """Only the few logins load_demo creates are read and tried (a password hash costs time on
    purpose): the cost is the same with ten users or a million."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import check_password
    from django.db import DatabaseError

    from config.demo import demo_logins

    logins = dict(demo_logins())
    try:
        users = list(get_user_model().objects.filter(username__in=logins, is_active=True)
                     .values_list("username", "password"))
    except DatabaseError:
        return []  # not migrated yet: no user at all
    # hashers.check_password, not User.check_password: a check must not rewrite the stored hash.
    found = sorted(name for name, encoded in users if check_password(logins[name], encoded))
    if not found:
        return []
    return [Error(f"demo logins are active: {', '.join(found)} still sign in with the password `load_demo` gave "
                  "them (admin/admin, the others their own name)", hint="give each a password of its own "
                  "(manage.py changepassword NAME) or deactivate it in the admin; load_demo is for a local demo only",
                  id="journeys.E006")]
