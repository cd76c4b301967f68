"""One migrated PostgreSQL template per suite, cloned into each test database.

Migrating is the slow part of making a test database (~90 migrations, ~40 s of Python CPU),
and every xdist worker, plus the private servers of tests/proof/, used to do it again. Here the
first worker migrates `<test name>_template` once (`manage.py migrate`, under a file lock the
other workers wait on), and each worker's database is made from it with PostgreSQL's
`CREATE DATABASE ... TEMPLATE` (Django's TEST["TEMPLATE"]): a copy of the files, ~1 s. Django
still runs `migrate` on the copy, which finds nothing to apply.

The template is remade whenever the migrations could give something else: its COMMENT holds a
digest of every migration file's text, Django's version and the settings module; a template
without the current digest (missing, stale, or half made by a run that died) is dropped and
migrated again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.proc import BASE_DIR, database_url


def template_name(settings_dict: dict) -> str:
    """The template of the test databases of this DATABASES entry."""
    return f"test_{settings_dict['NAME']}_template"


def migrations_digest() -> str:
    """What the migrations would build: every migration file on disk (all apps), Django's version."""
    import django
    from django.db.migrations.loader import MigrationLoader

    digest = hashlib.sha256(f"django {django.__version__}\n".encode())
    loader = MigrationLoader(None, ignore_no_migrations=True, load=True)
    for key in sorted(loader.disk_migrations):
        module = sys.modules[loader.disk_migrations[key].__module__]
        digest.update(f"{key}\n".encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _admin_connection(settings_dict: dict):
    """An autocommit connection to the server's `postgres` database (CREATE/DROP DATABASE)."""
    import psycopg

    url = database_url({**settings_dict, "NAME": "postgres"})
    return psycopg.connect(url, autocommit=True, **{k: v for k, v in (settings_dict.get("OPTIONS") or {}).items()
                                                     if k in {"sslmode", "connect_timeout"}})


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def template_comment(settings_dict: dict, name: str) -> str | None:
    """The template's COMMENT (its digest once fully migrated); None if there is no such database."""
    with _admin_connection(settings_dict) as conn:
        row = conn.execute(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = %s",
            [name]).fetchone()
    return None if row is None else row[0]


def template_ensure(settings_dict: dict, name: str) -> None:
    """Make sure database `name` is a migrated template of the current migrations (under a lock,
    so that one process migrates it and the others wait for it)."""
    digest = migrations_digest()
    host = settings_dict.get("HOST") or "local"
    lock_path = Path(tempfile.gettempdir()) / f"journeys-test-template-{host}-{settings_dict.get('PORT') or ''}-{name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if template_comment(settings_dict, name) == digest:
            return
        with _admin_connection(settings_dict) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {_quote(name)}")
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        env.update(DATABASE_URL=database_url({**settings_dict, "NAME": name}),
                   DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings_test"))
        # As Django's create_test_db migrates a test database (run_syncdb: apps without migrations).
        done = subprocess.run([sys.executable, "-W", "ignore", str(BASE_DIR / "manage.py"), "migrate", "--noinput",
                               "--run-syncdb", "-v", "0"], cwd=BASE_DIR, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"migrating the test template {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        with _admin_connection(settings_dict) as conn:
            conn.execute(f"COMMENT ON DATABASE {_quote(name)} IS {_literal(digest)}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def template_dump_into(settings_dict: dict, target_url: str) -> bool:
    """Copy the session's migrated template (TEST["TEMPLATE"]) into the database at `target_url`
    (another server: pg_dump | psql). False when there is no current template to copy."""
    name = (settings_dict.get("TEST") or {}).get("TEMPLATE")
    if not name or template_comment(settings_dict, name) != migrations_digest():
        return False
    from tests.proc import PG_BIN

    dump = subprocess.Popen([str(PG_BIN / "pg_dump"), "--no-owner", "--no-privileges", "-d",
                             database_url({**settings_dict, "NAME": name})], stdout=subprocess.PIPE)
    load = subprocess.run([str(PG_BIN / "psql"), "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", target_url],
                          stdin=dump.stdout, capture_output=True, text=True)
    dump.stdout.close()
    if dump.wait() or load.returncode:
        raise AssertionError(f"copying the template {name} failed:\n{load.stderr[-3000:]}")
    return True


if __name__ == "__main__":
    # scripts/test.sh starts this before the parallel run: the template is migrated while the
    # xdist workers import and collect the tests (they wait on its lock afterwards, or build it
    # themselves if this failed).
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings_test")
    django.setup()
    from django.conf import settings

    default = settings.DATABASES["default"]
    if default["ENGINE"] == "django.db.backends.postgresql":
        template_ensure(default, template_name(default))
