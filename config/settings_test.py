"""Test settings: the real settings with tasks run inline and a fast password hasher."""

import os

# An explicit key for tests (public: `check --deploy` flags it). Processes the tests start
# (tests/proc.py) are given the same one, so they verify the tasks this process signs.
os.environ.setdefault("SECRET_KEY", "tests-only-public-key-never-deploy-0f3c9a1e7b5d2c4a8e6f0b1d3c5a7e9")

from config.settings import *  # noqa: E402,F403

Q_CLUSTER = {**Q_CLUSTER, "sync": True}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EVENT_API = {**EVENT_API, "RATE_LIMIT_REQUESTS": 100000}  # noqa: F405
# The channel tests talk to real local servers (tests/channels_app/servers.py).
OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
# The test client and the live server speak plain http.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
WHITENOISE_USE_FINDERS = True  # static files without collectstatic (browser tests)
