"""Security checks that need no browser: deploy settings, hashed keys, login walls, CSRF."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py with the production settings module and only the given settings in the environment,
    on an empty database of its own (not the checkout's db.sqlite3, where `make run` keeps its demo logins)."""
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "DATABASE_URL", "SECRET_KEY_FILE"}}
    with tempfile.TemporaryDirectory() as empty:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                              env={**base, "DJANGO_SETTINGS_MODULE": "config.settings",
                                   "ALLOWED_HOSTS": "journeys.example.com", "SQLITE_PATH": str(Path(empty) / "db.sqlite3"),
                                   **env})


def test_check_deploy_is_clean_for_production_settings_and_debug_is_off_by_default(tmp_path):
    # given a deploy with a key of its own, its public address and its static files collected,
    # and nothing else said (DEBUG not set)
    deploy = {"SECRET_KEY": secrets.token_urlsafe(50), "PUBLIC_BASE_URL": "https://journeys.example.com",
              "STATIC_ROOT": str(tmp_path / "static")}
    collected = manage("collectstatic", "--noinput", "-v", "0", **deploy)
    assert collected.returncode == 0, collected.stderr

    result = manage("check", "--deploy", "--fail-level", "WARNING", **deploy)

    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_fails_on_a_deploy_that_forgot_its_public_address_and_collectstatic(tmp_path):
    # given the production settings with PUBLIC_BASE_URL unset and STATIC_ROOT empty
    deploy = {"SECRET_KEY": secrets.token_urlsafe(50), "STATIC_ROOT": str(tmp_path)}

    result = manage("check", "--deploy", "--fail-level", "WARNING", **deploy)

    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "journeys.E005" in out and "PUBLIC_BASE_URL is not set" in out and "PUBLIC_BASE_URL=https://" in out
    assert "journeys.W002" in out and "collectstatic" in out
    # while the checks every command runs (make run's migrate, gunicorn's and qcluster's start) stay quiet
    assert manage("check", "--fail-level", "WARNING", **deploy).returncode == 0


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1:8000", "is not set"),
    ("http://localhost:8000/", "names this machine"),
    ("https://[::1]", "names this machine"),
    ("http://127.0.1.1", "names this machine"),
    ("http://0.0.0.0:8000", "names this machine"),
    ("http://journeys.localhost", "names this machine"),
    ("journeys.example.com", "is not an absolute http(s) URL"),
    ("", "is not an absolute http(s) URL"),
])
def test_a_public_base_url_no_customer_reaches_is_an_error(settings, url, problem):
    from journeys.checks import public_base_url_check

    settings.DEBUG, settings.PUBLIC_BASE_URL = False, url
    (error,) = public_base_url_check(None)
    assert error.id == "journeys.E005" and problem in error.msg


@pytest.mark.parametrize("url, debug", [("https://journeys.example.com", False), ("http://10.1.2.3:8000", False),
                                        ("http://127.0.0.1:8000", True)])
def test_a_reachable_public_base_url_or_debug_passes(settings, url, debug):
    from journeys.checks import public_base_url_check

    settings.DEBUG, settings.PUBLIC_BASE_URL = debug, url
    assert public_base_url_check(None) == []


def test_static_files_not_collected_are_a_warning_unless_served_from_the_apps(settings, tmp_path):
    from journeys.checks import static_root_check

    settings.DEBUG, settings.WHITENOISE_USE_FINDERS = False, False
    for root in (tmp_path / "missing", tmp_path):
        settings.STATIC_ROOT = root
        (warning,) = static_root_check(None)
        assert warning.id == "journeys.W002" and "collectstatic" in warning.hint
    (tmp_path / "admin").mkdir()
    assert static_root_check(None) == []
    settings.STATIC_ROOT, settings.WHITENOISE_USE_FINDERS = tmp_path / "missing", True  # the test settings
    assert static_root_check(None) == []


def test_a_trusted_proxy_that_is_no_address_stops_every_command_naming_it():
    result = manage("check", SECRET_KEY=secrets.token_urlsafe(50), TRUSTED_PROXIES="10.0.0.0/24, lb.internal")
    assert result.returncode != 0
    assert "journeys.E004" in result.stderr and "TRUSTED_PROXIES: 'lb.internal' is not an address" in result.stderr
    assert result.stderr.count("journeys.E004") == 1  # the network before it is fine


def test_production_settings_refuse_to_start_without_a_key_of_their_own():
    result = manage("check", SECRET_KEY_FILE=os.devnull)  # no SECRET_KEY and no local key file
    assert result.returncode != 0 and "SECRET_KEY is not set" in result.stderr


def test_a_number_setting_that_is_not_a_number_is_refused_by_name():
    result = manage("check", SECRET_KEY=secrets.token_urlsafe(50), Q_SUCCESS_KEEP="lots")
    assert result.returncode != 0 and "Q_SUCCESS_KEEP: 'lots' is not a whole number" in result.stderr


def test_check_deploy_is_loud_for_a_public_key_debug_and_plain_http():
    result = manage("check", "--deploy", SECRET_KEY="dev-only-insecure-key-change-me-in-production-0123456789",
                    DEBUG="1", SESSION_COOKIE_SECURE="0", SECURE_SSL_REDIRECT="0")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for finding in ("journeys.E001", "security.W018", "security.W012", "security.W008"):
        assert finding in out


@pytest.fixture
def deploy_settings(settings):
    """Production settings that pass `check --deploy` as they are (a key of its own, https everywhere)."""
    settings.DEBUG, settings.SECRET_KEY = False, secrets.token_urlsafe(50)
    settings.PUBLIC_BASE_URL, settings.ALLOWED_HOSTS = "https://journeys.example.com", ["journeys.example.com"]
    settings.TRUSTED_PROXIES = ["10.0.0.0/24"]
    settings.SECURE_SSL_REDIRECT = settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_HSTS_SECONDS = 31536000
    return settings


def check_deploy() -> str:
    """`manage.py check --deploy --fail-level WARNING`: what it reports ("" when it passes)."""
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        call_command("check", "--deploy", "--fail-level", "WARNING")
    except SystemCheckError as exc:
        return str(exc)
    return ""


@pytest.mark.django_db
def test_check_deploy_fails_while_a_demo_login_still_works(deploy_settings):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from tests.factories import UserFactory

    deploy_settings.WHITENOISE_USE_FINDERS = True  # (collected static files are journeys.W002's business)
    assert check_deploy() == ""
    UserFactory.create_batch(3)  # other users cost nothing: only the demo's names are tried
    call_command("load_demo", "--allow-production")

    report = check_deploy()
    assert "journeys.E006" in report and "admin, agent, agent2, analyst, approver, editor, ops, triage" in report
    assert "changepassword" in report

    User = get_user_model()
    for user in User.objects.exclude(username="admin").filter(username__in=["agent", "agent2", "analyst", "approver",
                                                                          "editor", "ops"]):
        user.set_password(secrets.token_urlsafe(12))
        user.save()
    User.objects.filter(username="triage").update(is_active=False)
    report = check_deploy()
    assert "journeys.E006" in report and "active: admin still" in report
    admin = User.objects.get(username="admin")
    admin.set_password(secrets.token_urlsafe(12))
    admin.save()
    assert check_deploy() == ""


@pytest.mark.parametrize("setting, value, finding", [
    ("ALLOWED_HOSTS", ["*"], "journeys.W003"),
    ("ALLOWED_HOSTS", ["journeys.example.com", "*"], "journeys.W003"),
    ("PUBLIC_BASE_URL", "http://journeys.example.com", "journeys.W004"),
    ("TRUSTED_PROXIES", ["0.0.0.0/0"], "journeys.E007"),
    ("TRUSTED_PROXIES", ["10.0.0.5", "::/0"], "journeys.E007"),
])
@pytest.mark.django_db
def test_check_deploy_fails_on_any_host_plain_http_and_trusting_every_proxy(deploy_settings, setting, value, finding):
    deploy_settings.WHITENOISE_USE_FINDERS = True
    setattr(deploy_settings, setting, value)

    report = check_deploy()

    assert finding in report and "identified 1 issue" in report and "HINT:" in report, report


@pytest.mark.parametrize("key, finding", [
    ("dev-only-insecure-key-change-me-in-production-0123456789", "old public fallback key"),
    ("tests-only-public-key-never-deploy-0f3c9a1e7b5d2c4a8e6f0b1d3c5a7e9", "written in config/settings_test.py"),
    ("short-key-123", "too weak (13 characters"),
    ("ab" * 40, "too weak (80 characters, 2 different"),
])
def test_known_and_weak_keys_are_errors(settings, key, finding):
    from journeys.checks import secret_key_check

    settings.SECRET_KEY = key
    messages = [e.msg for e in secret_key_check(None)]
    assert any(finding in m for m in messages), messages


def test_a_key_file_git_does_not_track_is_not_public_but_a_tracked_one_is(settings, tmp_path):
    # given a code base where git tracks docs/example.env and not secrets/django_key
    from journeys.checks import secret_key_check

    kept, shown = secrets.token_urlsafe(50), secrets.token_urlsafe(50)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "django_key").write_text(kept + "\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "example.env").write_text(f"SECRET_KEY={shown}\n")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "docs/example.env"], check=True)
    settings.BASE_DIR = tmp_path

    settings.SECRET_KEY = kept
    assert secret_key_check(None) == []
    settings.SECRET_KEY = shown
    assert [e.msg for e in secret_key_check(None)] == ["SECRET_KEY is public: it is written in docs/example.env"]
    settings.SECRET_KEY = shown[:-1]  # a key inside a longer one is not that key
    assert secret_key_check(None) == []


def test_a_short_key_is_weak_not_written_in_some_file(settings):
    from journeys.checks import secret_key_check

    settings.SECRET_KEY = "abc"  # in "collections.abc" of many files, and quoted in some tests
    assert [e.id for e in secret_key_check(None)] == ["journeys.E002"]


def test_a_fresh_random_key_passes(settings):
    from journeys.checks import secret_key_check

    settings.SECRET_KEY = secrets.token_urlsafe(50)
    assert secret_key_check(None) == []


@pytest.mark.django_db
def test_admin_forms_require_csrf(django_user_model):
    django_user_model.objects.create_superuser("root", "r@example.com", "pw")
    client = Client(enforce_csrf_checks=True)
    client.login(username="root", password="pw")
    response = client.post("/admin/journeys/source/add/", {"name": "x", "enabled": "on"})
    assert response.status_code == 403


@pytest.mark.django_db
def test_write_key_lookup_uses_hash_and_constant_time_compare(source, write_key):
    from journeys.services.sources import source_authenticate

    assert source_authenticate(write_key=write_key) == source
    assert source.key_hash != write_key and len(source.key_hash) == 64


def test_the_web_servers_access_log_never_shows_a_write_key(tmp_path):
    """gunicorn as `make run` and docs/SCALING.md start it (config.gunicorn) logs each request; a
    write key in HTTP Basic (every server-side SDK), in `?writeKey=` (RudderStack's beacon and
    source config) or in Segment's settings path appears as its prefix, as the admin lists it."""
    import base64
    import http.client

    from tests.proc import WebServer, server_env

    key = "wk_" + secrets.token_urlsafe(32)
    env = {k: v for k, v in server_env("").items() if k != "DATABASE_URL"}
    env["SQLITE_PATH"] = str(tmp_path / "db.sqlite3")  # the answers do not matter here, only the log lines
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
             "Content-Type": "application/json"}
    with WebServer(env=env, workers=1, name="access-log", args=("--access-logfile", "-")) as web:
        for method, path, headers in [
            ("POST", "/v1/batch", basic),
            ("POST", f"/beacon/v1/batch?writeKey={key}", {"Content-Type": "text/plain"}),
            ("GET", f"/v1/sourceConfig/?p=npm&v=3.34.1&writeKey={key}", {}),
            ("GET", f"/v1/projects/{key}/settings", {}),
        ]:
            conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
            conn.request(method, path, body=b'{"batch": []}' if method == "POST" else None, headers=headers)
            conn.getresponse().read()
            conn.close()
        log = wait_for_lines(web, "/v1/projects/", 4)

    assert key not in log  # nor in Django's own lines ("Internal Server Error: /v1/projects/...")
    shown = f"{key[:10]}***"
    assert f'127.0.0.1 - {shown} [' in log  # the Basic user
    assert f'"POST /beacon/v1/batch?writeKey={shown} HTTP/1.1"' in log
    assert f'"GET /v1/sourceConfig/?p=npm&v=3.34.1&writeKey={shown} HTTP/1.1"' in log
    assert f'"GET /v1/projects/{shown}/settings HTTP/1.1"' in log


def test_the_web_servers_access_log_keeps_no_identifier_of_a_customer_lookup(tmp_path):
    """A DPO's `GET /api/v1/customers?user_id=...` or `?email=` (or the admin's search and export
    link) names the person in the request line; a log file is out of an erasure's reach, so
    gunicorn's access log writes `***` instead."""
    import http.client

    from tests.proc import WebServer, server_env

    env = {k: v for k, v in server_env("").items() if k != "DATABASE_URL"}
    env["SQLITE_PATH"] = str(tmp_path / "db.sqlite3")
    lookups = ["/api/v1/customers?user_id=c7-private", "/api/v1/customers?limit=5&email=person7%40mail.example.org",
               "/api/v1/customers?phone=%2B15557770007&anonymous_id=anon-7-private", "/api/v1/customers?userId=c7-x",
               "/admin/channels_app/datasubject/?q=c7-search", "/admin/journeys/job/add/?kind=export&customer=c7-y"]
    with WebServer(env=env, workers=1, name="access-log-lookups", args=("--access-logfile", "-")) as web:
        for path in lookups:
            conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
            conn.request("GET", path, headers={"Authorization": "Bearer not-a-token"})
            conn.getresponse().read()
            conn.close()
        log = wait_for_lines(web, "customer=", 6)

    for private in ("c7-private", "person7", "15557770007", "anon-7-private", "c7-x", "c7-search", "c7-y"):
        assert private not in log
    assert '"GET /api/v1/customers?user_id=*** HTTP/1.1"' in log
    assert '"GET /api/v1/customers?limit=5&email=*** HTTP/1.1"' in log
    assert '"GET /api/v1/customers?phone=***&anonymous_id=*** HTTP/1.1"' in log
    assert '"GET /admin/journeys/job/add/?kind=export&customer=*** HTTP/1.1"' in log


def wait_for_lines(web, needle: str, count: int) -> str:
    from tests.proc import wait_until

    return wait_until(lambda: (out := web.output(20_000)).count('HTTP/1.1"') >= count and needle in out and out,
                      timeout=30, message="the access log lines")
