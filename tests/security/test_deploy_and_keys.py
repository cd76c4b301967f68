"""Security checks that need no browser: deploy settings, hashed keys, login walls, CSRF."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def test_check_deploy_is_clean_for_production_settings():
    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": "x" * 30 + "-prod-secret-key-with-enough-entropy-123456",
           "ALLOWED_HOSTS": "journeys.example.com", "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


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
