"""Security checks that need no browser: deploy settings, hashed keys, login walls, CSRF."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py with the production settings module and only the given settings in the environment."""
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "DATABASE_URL", "SECRET_KEY_FILE"}}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", "ALLOWED_HOSTS": "journeys.example.com",
                               **env})


def test_check_deploy_is_clean_for_production_settings_and_debug_is_off_by_default():
    # given a deploy with a key of its own and nothing else said (DEBUG not set)
    result = manage("check", "--deploy", "--fail-level", "WARNING", SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode == 0, result.stdout + result.stderr


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
