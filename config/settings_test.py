"""Test settings: the real settings with tasks run inline and a fast password hasher."""

from config.settings import *  # noqa: F403

Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EVENT_API = {**EVENT_API, "RATE_LIMIT_REQUESTS": 100000}  # noqa: F405
# The channel tests talk to real local servers (tests/channels_app/servers.py).
OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
