"""Settings for the journey console.

Everything that differs between a laptop and production comes from the
environment: DATABASE_URL (PostgreSQL via psycopg 3, else a SQLite file),
REDIS_URL (django-q2 Redis broker and shared cache, else the ORM broker and a
local cache; Q_BROKER=orm|redis overrides the broker), SECRET_KEY, DEBUG and
ALLOWED_HOSTS. Web and worker processes must share SECRET_KEY: django-q2 signs
tasks with it, and a worker drops a task it cannot verify.

Secure by default: no SECRET_KEY means no start (there is no fallback key), DEBUG is
off unless DEBUG=1, and HTTPS-only cookies, the HTTPS redirect and HSTS are on unless
the environment turns them off (scripts/run.sh does, for http://127.0.0.1).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}: {value!r} is not a whole number") from None


def database_from_url(url: str) -> dict:
    """Turn postgres://user:pass@host:port/name?opt=v into a DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"DATABASE_URL: unsupported scheme {parsed.scheme!r} (use postgresql://)")
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "OPTIONS": options,
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        # Behind PgBouncer in transaction mode server-side cursors (.iterator()) break: set it to 1.
        "DISABLE_SERVER_SIDE_CURSORS": env_bool("DB_DISABLE_SERVER_SIDE_CURSORS", False),
    }


def secret_key_from_env() -> str:
    """SECRET_KEY, else the file SECRET_KEY_FILE names (a container secret), else the key that
    `make run` generated into the git-ignored LOCAL_SECRET_KEY_FILE. There is no fallback: a
    process without a key of its own refuses to start (journeys.checks flags public keys)."""
    if key := os.environ.get("SECRET_KEY", "").strip():
        return key
    path = os.environ.get("SECRET_KEY_FILE", "").strip()
    candidate = Path(path) if path else LOCAL_SECRET_KEY_FILE
    if path or candidate.is_file():
        try:
            key = candidate.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"SECRET_KEY_FILE {candidate}: {exc}") from exc
        if key:
            return key
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE) to at least 50 random characters, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'; web and worker processes need the same "
        "one. `make run` makes one for local use in .secret_key.")


LOCAL_SECRET_KEY_FILE = BASE_DIR / ".secret_key"  # written by scripts/run.sh, git-ignored
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_key_from_env()
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "guardian",
    "simple_history",
    "django_q",
    "axes",
    "journeys",
    "channels_app",
    "agents",
    "experiments",
]

MIDDLEWARE = [
    # /healthz and /readyz (config.health): first, before the host check, the HTTPS redirect and sessions.
    "config.health.HealthCheckMiddleware",
    # CORS for the tracking API (/v1/) only: browsers' analytics SDKs post from other origins.
    "journeys.api.cors.TrackingCorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.csp.ContentSecurityPolicyMiddleware",
    # Serves our own static files from gunicorn (no CDN, no separate web server needed).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "journeys.middleware.PermissionScopeMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Login throttling (django-axes): must come last, it turns a lockout into a 429 answer.
    "axes.middleware.AxesMiddleware",
]

# Content-Security-Policy (config.csp): no inline script, no eval, our own origin only. Inline
# style attributes stay allowed (Django's admin uses some); images may come from https (email
# HTML in template previews). See docs/CONVENTIONS.md, "Pages and the Content-Security-Policy".
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": ["'self'", "data:", "https:"],
    "font-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
SECURE_REFERRER_POLICY = "same-origin"

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            # WAL + a busy timeout let the web server and the q2 worker share the file.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    # First: refuses every login attempt (even with the right password) while locked out.
    "journeys.services.throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login throttling on /admin/login/ and /agents/login/ (django-axes, failures kept in the
# database so every web process shares them): after LOGIN_FAILURE_LIMIT failures for one
# account, or from one address, further attempts (even with the right password) get 429
# for LOGIN_LOCKOUT_MINUTES. Behind a proxy set TRUSTED_PROXIES (below) so the client's address
# is read from X-Forwarded-For (journeys.services.client_ip), not the proxy's.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # per account, and per address, separately
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "journeys.services.client_ip.request_client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_LOCKOUT_CALLABLE = "journeys.services.throttle.login_lockout"  # that page, the wait in words, Retry-After

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `manage.py collectstatic` gathers the files whitenoise serves (check --deploy: journeys.W002).
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", "").strip() or BASE_DIR / "staticfiles")
WHITENOISE_USE_FINDERS = DEBUG  # serve app static files without collectstatic while developing
LOGIN_URL = "admin:login"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# django-q2: the ORM broker by default (at-least-once; on the same database an
# async_task inside the event transaction is an outbox). `retry` must exceed the
# longest task plus its queue wait, otherwise a slow task runs twice.
Q_CLUSTER = {
    "name": "journeys",
    "workers": env_int("Q_WORKERS", 2),
    "recycle": 500,
    "timeout": env_int("Q_TIMEOUT", 120),
    "retry": env_int("Q_RETRY", 180),
    "max_attempts": 5,
    "ack_failures": True,
    # 0: q2 keeps successful results and never prunes them per task (its pruning reads and locks
    # every kept row each time a task finishes); events_housekeeping keeps the newest
    # Q_SUCCESS_KEEP (journeys.services.task_results). -1: keep no successes at all.
    "save_limit": env_int("Q_SAVE_LIMIT", 0),
    "queue_limit": 50,
    # An idle ORM-broker pusher sleeps this long before looking again: it bounds how soon a
    # freshly enqueued batch is picked up (p99 at 100 events/s); ~20 cheap SELECTs/s per cluster.
    "poll": float(os.environ.get("Q_POLL", "0.05")),
    "bulk": env_int("Q_BULK", 1),
    "catch_up": False,
    "label": "Task queue",
}
Q_SUCCESS_KEEP = env_int("Q_SUCCESS_KEEP", 1000)
# A cluster whose task queue is stuck this many seconds after one of its workers (or its pusher)
# was killed restarts its workers on a new queue (journeys.qcluster; django-q2 issue #23).
Q_FREEZE_S = env_int("Q_FREEZE_S", 10)

# History retention (docs/SCALING.md "Retention"), applied by the events housekeeping schedule in
# bounded batches: finished journey runs (with their step executions and messages), closed cases
# and finished jobs older than this many days are deleted, and anonymous profiles left with
# nothing. Unset: kept forever, profiles too (an upgrade deletes nothing). Re-entry limits,
# frequency caps, experiments, unsent messages and open cases keep holding (see
# journeys.services.history_retention).
HISTORY_RETENTION_DAYS = env_int("HISTORY_RETENTION_DAYS", 0) or None
# A job's input (an import's uploaded file, an API trigger's recipients and their data) is kept
# this many days after the job finished, then deleted by the same schedule (0: at its next run);
# an erasure takes the person out of the inputs still kept (docs/PRIVACY.md).
JOB_INPUT_KEEP_DAYS = env_int("JOB_INPUT_KEEP_DAYS", 7)
# The key of the digests that recognise a personal value without keeping it (API idempotency
# keys, an erased person's suppressions, hard-bounce marks): journeys.services.digests. Empty:
# derived from SECRET_KEY. Set it before rotating SECRET_KEY, or those digests are forgotten.
PRIVACY_DIGEST_KEY = os.environ.get("PRIVACY_DIGEST_KEY", "").strip()
# The login access log (django-axes) is kept this many days; expired sessions go at once.
LOGIN_LOG_KEEP_DAYS = env_int("LOGIN_LOG_KEEP_DAYS", 90)
# Q_BROKER picks the queue: "orm" (default without REDIS_URL) or "redis" (default with it).
# Q_BROKER=orm with REDIS_URL keeps the at-least-once ORM queue and still shares the cache.
Q_BROKER = os.environ.get("Q_BROKER", "redis" if REDIS_URL else "orm").strip().lower()
if Q_BROKER not in {"orm", "redis"}:
    raise ValueError(f"Q_BROKER: unknown broker {Q_BROKER!r} (use orm or redis)")
if Q_BROKER == "redis":
    if not REDIS_URL:
        raise ValueError("Q_BROKER=redis needs REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
if env_bool("Q_SYNC", False):
    Q_CLUSTER["sync"] = True
# The q2 schedules (the engine's minute tick, the deliveries and SLA ticks, the daily audit...)
# run on a cluster of their own, so that they never take the event workers: `make run` starts
# it beside the main one (`Q_CLUSTER_NAME=schedules manage.py qcluster`). `migrate` assigns
# every schedule to it (journeys.schedules). Q_SCHEDULE_CLUSTER="" keeps them on the main
# cluster (a deployment that runs one qcluster only). Work the tick hands out (starting and
# resuming runs) is queued for the main cluster by name.
Q_SCHEDULE_CLUSTER = os.environ.get("Q_SCHEDULE_CLUSTER", "schedules").strip()
Q_CLUSTER["ALT_CLUSTERS"] = {
    Q_SCHEDULE_CLUSTER: {
        "workers": env_int("Q_SCHEDULE_WORKERS", 1),
        "timeout": env_int("Q_SCHEDULE_TIMEOUT", 600),  # the daily audit may take minutes
        "retry": env_int("Q_SCHEDULE_RETRY", 900),
    },
} if Q_SCHEDULE_CLUSTER else {}
# Sending (the deliveries' tasks: providers, retries, drains) can run on a cluster of its own, so a
# slow or hanging vendor never takes the workers that process events (docs/SCALING.md): set
# Q_DELIVERY_CLUSTER=deliveries and run `Q_CLUSTER_NAME=deliveries manage.py qcluster` beside the
# main one. "" (default): deliveries are sent by the main cluster's workers.
Q_DELIVERY_CLUSTER = os.environ.get("Q_DELIVERY_CLUSTER", "").strip()
if Q_DELIVERY_CLUSTER:
    Q_CLUSTER["ALT_CLUSTERS"] = {**Q_CLUSTER["ALT_CLUSTERS"],
                                 Q_DELIVERY_CLUSTER: {"workers": env_int("Q_DELIVERY_WORKERS", 2)}}
# The engine tick stops claiming new work after this many seconds (what is left stays due for the
# next tick); keep it well under a minute and under the schedules cluster's timeout.
ENGINE_TICK_BUDGET_S = env_int("ENGINE_TICK_BUDGET_S", 45)
# The agents' SLA tick (same cluster, every minute) stops claiming breached cases after this many
# seconds; what is left is still due at the next tick.
AGENTS_SLA_TICK_BUDGET_S = env_int("AGENTS_SLA_TICK_BUDGET_S", 20)
# "Audience now" of a version (journeys.services.segments.segment_size) takes at most this long in
# all: the SQL count, and the Python check of a rule that cannot run as SQL (an estimate from the
# customers checked by then, or given up).
SEGMENT_COUNT_TIMEOUT_MS = env_int("SEGMENT_COUNT_TIMEOUT_MS", 5000)
# A bulk import runs as a chain of q2 tasks, each taking at most this many rows of the file or
# this many seconds (0: a quarter of Q_CLUSTER's timeout), so none nears the task time limit.
JOB_IMPORT_PART_ROWS = env_int("JOB_IMPORT_PART_ROWS", 5000)
JOB_IMPORT_PART_SECONDS = env_int("JOB_IMPORT_PART_SECONDS", 0)
# Runs started or resumed per q2 task (bulk entries, due delays and waits).
ENGINE_RUN_BATCH = env_int("ENGINE_RUN_BATCH", 1000)

# Dispatch (channels_app.services.dispatch): deliveries claimed and sent per batch; a claim
# (`sending`) whose worker died is looked at again after the lease; the minute tick starts
# at most DELIVERY_DRAIN_TASKS drain tasks, each sending due batches for at most
# DELIVERY_DRAIN_SECONDS (and half the task timeout).
DELIVERY_BATCH_SIZE = env_int("DELIVERY_BATCH_SIZE", 200)
DELIVERY_SENDING_LEASE_S = env_int("DELIVERY_SENDING_LEASE_S", 600)
DELIVERY_DRAIN_TASKS = env_int("DELIVERY_DRAIN_TASKS", 2)
DELIVERY_DRAIN_SECONDS = env_int("DELIVERY_DRAIN_SECONDS", 40)
# Sessions (SMTP connections, HTTP keep-alive connections) a dispatcher opens at once for a
# channel's part of a batch (at least 20 messages a session) with a provider across a network;
# a channel's settings {"connections": n} override it (1: one session, one message at a time).
DELIVERY_CONNECTIONS = env_int("DELIVERY_CONNECTIONS", 4)
# A channel's breaker also opens when its consecutive failures took this many seconds together
# (a vendor that hangs each request to the channel's timeout); 0: only breaker_threshold counts.
DELIVERY_BREAKER_FAILING_S = env_int("DELIVERY_BREAKER_FAILING_S", 30)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# The OpenAPI document (GET /v1/openapi.json) is generated from the views and serializers.
SPECTACULAR_SETTINGS = {
    "TITLE": "Journey console API",
    "DESCRIPTION": "Tracking API (Segment-compatible, write keys) and management API (/api/v1, bearer tokens).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The API's one PATCH (customer traits) reads its whole body, not a partial one: keep the
    # required fields (drf-spectacular would describe every PATCH body as all-optional "Patched*").
    "COMPONENT_SPLIT_PATCH": False,
    # Choice sets sharing a field name (status, kind) keep one stable name each in generated clients.
    "ENUM_NAME_OVERRIDES": {
        "ApiScopeEnum": "journeys.choices.ApiScope",
        "KindEnum": "journeys.models.jobs.JobKind",
        "JobOutStatusEnum": "journeys.models.jobs.JobStatus",
        "DeliveryOutStatusEnum": "channels_app.choices.DeliveryStatus",
        "ChannelKindEnum": "channels_app.choices.ChannelKind",
        "WorkflowStatusEnum": "journeys.choices.WorkflowStatus",
        "ExperimentStatusEnum": "experiments.choices.ExperimentStatus",
    },
}

# Management API (/api/v1): bearer tokens made in the admin.
API = {
    # Requests per minute per token (a token may set its own), counted for all processes at once.
    "RATE_LIMIT": env_int("API_RATE_LIMIT", 600),
    "RATE_WINDOW_S": 60,
    # Access-log rows (one per call) are kept this long.
    "LOG_KEEP_DAYS": env_int("API_LOG_KEEP_DAYS", 30),
    # A trigger for more recipients than this (or for a segment) is enrolled by a background job.
    "TRIGGER_SYNC_MAX": 100,
    "TRIGGER_MAX_RECIPIENTS": 10000,
    "MAX_BODY_BYTES": 2 * 1024 * 1024,  # below DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)
}

# Outbound event stream (Standard Webhooks) to the destinations configured in the admin.
STREAM = {
    "TIMEOUT_S": env_int("STREAM_TIMEOUT_S", 15),
    # Backoff after a failed request: RETRY_BASE_S doubling per failure, at most RETRY_MAX_S.
    "RETRY_BASE_S": 5,
    "RETRY_MAX_S": 3600,
    # Delivered batches (and their events) are purged after this many days; undelivered never.
    "KEEP_DAYS": env_int("STREAM_KEEP_DAYS", 7),
    # Workers re-read the list of destinations this often (a change in this process: at once).
    "CACHE_S": 5,
    # The first QUICK_RETRIES failures in a row are retried after about QUICK_RETRY_S seconds (an
    # error now and then costs little); then the backoff above (a 429 or a Retry-After: that at once).
    "QUICK_RETRIES": 3,
    "QUICK_RETRY_S": 0.1,
    # Seconds one delivery task sends to a destination (and waits out its short backoffs) before
    # it hands over to the next task: tasks share the event workers, so this is also how long a
    # destination may keep one from the journeys' events.
    "TASK_S": env_int("STREAM_TASK_S", 5),
    # Order (PostgreSQL): before sending events, the stream waits for the transactions that may
    # still commit lower ids; one open longer than this is not waited for (see README).
    "SETTLE_S": env_int("STREAM_SETTLE_S", 5),
    # After a secret rotation, requests are signed with the old secret too for this long.
    "ROTATION_OVERLAP_S": env_int("STREAM_ROTATION_OVERLAP_S", 86400),
}

# Event API limits (the Segment HTTP Tracking API's own limits).
# Origins whose pages may read the tracking API's (/v1/) answers from a browser: "*" (any, the
# default: a browser source's write key is public in its pages anyway, and the answers are never
# credentialed, journeys.api.cors) or a list such as "https://shop.example.com,https://www.example.com".
EVENT_API_CORS_ORIGINS = [o.strip().rstrip("/") for o in os.environ.get("EVENT_API_CORS_ORIGINS", "*").split(",")
                          if o.strip()]
EVENT_API = {
    "MAX_EVENT_BYTES": 32 * 1024,
    # A request body, plain or once decompressed (a gzip bomb is cut off one byte past it). Every
    # batch the SDKs build must fit, or their oversized event costs the whole batch (a 413 is
    # fatal to them) instead of being quarantined alone. rudder-sdk-python builds the largest: it
    # takes events of up to 4 MiB and stops filling a batch only once it holds 4 MiB, so a batch
    # reaches 8 MiB and its JSON punctuation; 9 MiB leaves room for that. (Its Node SDK flushes at
    # 450 KB and sends a larger event alone; Segment's SDKs stay under 500 KB + one 32 KB event.)
    "MAX_BATCH_BYTES": env_int("EVENT_API_MAX_BATCH_BYTES", 9 * 1024 * 1024),
    "MAX_BATCH_EVENTS": 2500,
    # A resent (source, messageId) is stored once if it comes back within this many days.
    "DEDUP_DAYS": env_int("EVENT_API_DEDUP_DAYS", 30),
    # PostgreSQL: ids per partition of journeys_event (partitioned by id range; docs/SCALING.md).
    "PARTITION_IDS": env_int("EVENT_PARTITION_IDS", 10_000_000),
    # Replayed or discarded quarantine entries are deleted this many days after the decision.
    "QUARANTINE_KEEP_DAYS": env_int("EVENT_API_QUARANTINE_KEEP_DAYS", 90),
    # Default per-source rate limit (requests per window, counted for all processes together in
    # the database or Redis); a Source may override it. 12,000 a minute (200 requests/s) is far
    # above what Segment's and RudderStack's SDKs send (a flush every 0.5-10 s per process, 15-500
    # events a request), so only a runaway client meets it; it answers 429 with Retry-After.
    "RATE_LIMIT_REQUESTS": env_int("EVENT_API_RATE_LIMIT", 12000),
    "RATE_LIMIT_WINDOW_S": env_int("EVENT_API_RATE_WINDOW", 60),
}

# An event whose timestamp is older than this many seconds when it is accepted (a backfill through
# /v1/import or /v1/batch, a replayed pipeline, a quarantined event replayed late) is stored as
# history: it counts for segments, reports and event-count rules and still stops what is under
# way (converts goals, closes inactivity windows, answers a wait that began before it happened),
# but starts no workflow, and says so on its row (status `history`). 7 days: SDK offline queues and retrying pipelines deliver hours to a few
# days late, and a journey step about something older than a week ("Welcome!") is stale. 0: off.
EVENT_TRIGGER_MAX_AGE_S = env_int("EVENT_TRIGGER_MAX_AGE_S", 7 * 24 * 3600)

# Addresses (or networks, CIDR) of the reverse proxies / load balancers in front of the web
# processes. Only a request arriving from one of them may name the client's address in
# X-Forwarded-For; the address recorded with an event, in the API access log and by login
# throttling is the last one in that chain that is not a trusted proxy. Empty (the default): the TCP peer's address, X-Forwarded-For ignored.
# IP addresses and networks only: a host name (lb.internal) is refused by every manage.py command (journeys.E004).
TRUSTED_PROXIES = [p.strip() for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p.strip()]
# /metrics (Prometheus text, config.metrics) answers a token with the metrics:read scope, or any
# request from these addresses or networks (IP or CIDR; the client's address as TRUSTED_PROXIES
# reads it), e.g. the Prometheus server's. Empty: a token only.
METRICS_ALLOWED_IPS = [p.strip() for p in os.environ.get("METRICS_ALLOWED_IPS", "").split(",") if p.strip()]
# The aggregated WARNINGs an on-call alerts on (journeys.services.oplog: quarantine storms, provider
# errors): at most one line per source or channel per this many seconds, in each process.
OPS_LOG_INTERVAL_S = env_int("OPS_LOG_INTERVAL_S", 60)

# Email: real SMTP (tests point it at a local aiosmtpd server). Secrets only from the environment.
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 1025)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "journeys@localhost")
# Outbound calls (channel providers, webhooks, event-stream destinations) only go to public
# addresses; these name the exceptions (comma-separated in the environment), e.g. an internal
# gateway: OUTBOUND_ALLOWED_HOSTS=sms-gw.corp.internal, OUTBOUND_ALLOWED_NETWORKS=10.20.0.0/16.
OUTBOUND_ALLOWED_HOSTS = [h.strip() for h in os.environ.get("OUTBOUND_ALLOWED_HOSTS", "").split(",") if h.strip()]
OUTBOUND_ALLOWED_NETWORKS = [n.strip() for n in os.environ.get("OUTBOUND_ALLOWED_NETWORKS", "").split(",") if n.strip()]
# The address customers and providers reach this server at (https://journeys.example.com): the
# base of signed links in messages (List-Unsubscribe, preferences, clicks, opens) and of the URLs
# given to providers (status callbacks, inbound messages). The default only suits `make run`;
# with DEBUG off `check --deploy` fails until it is set (journeys.E005). The SDK settings
# endpoints fall back to the origin the SDK reached while it is left at the default.
PUBLIC_BASE_URL_DEFAULT = "http://127.0.0.1:8000"
PUBLIC_BASE_URL = os.environ.get("PUBLIC_BASE_URL", PUBLIC_BASE_URL_DEFAULT)

SIMPLE_HISTORY_HISTORY_CHANGE_REASON_USE_TEXT_FIELD = True
GUARDIAN_RAISE_403 = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Write keys in a request path ("Unauthorized: /v1/projects/<key>/settings") are masked.
    "filters": {"write_keys": {"()": "config.log_masking.WriteKeyFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["write_keys"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# HTTPS by default. A plain-http local run (scripts/run.sh on 127.0.0.1) turns these off
# explicitly through the environment; `manage.py check --deploy` then says so.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# A Prometheus server on an allowed address scrapes the web processes directly, over plain http.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"] if METRICS_ALLOWED_IPS else []
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_HTTPONLY = True
