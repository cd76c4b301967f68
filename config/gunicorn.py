"""gunicorn's settings for the web processes: `gunicorn -c python:config.gunicorn config.wsgi`
(`make run`, docs/SCALING.md and the tests' servers start it so).

gunicorn's access log printed write keys (config.log_masking): `%(u)s` is the HTTP Basic user,
the write key of every server-side SDK's request, and the request line may carry one. The
logger below masks them in every field a log format can name.
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from config.log_masking import key_masked, keys_masked

_SECRET_HEADERS = ("{authorization}i", "{http_authorization}e")


class KeyMaskingLogger(Logger):
    """gunicorn's logger, with no write key in the access log whatever its format names."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if isinstance(value, str):  # the request line, path, query, and any header or environ value
                atoms[name] = keys_masked(value)
        if atoms.get("u") not in (None, "-"):
            atoms["u"] = key_masked(atoms["u"])
        for name in _SECRET_HEADERS:
            if name in atoms:
                atoms[name] = "***"
        return atoms


logger_class = KeyMaskingLogger
