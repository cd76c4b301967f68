"""The demo data loads (twice, idempotently) and every admin page opens for an ops admin."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from config.demo import demo_load
from journeys.models import Workflow

pytestmark = pytest.mark.django_db


def test_demo_loads_three_live_workflows_idempotently():
    demo_load()
    demo_load()
    assert Workflow.objects.filter(live_version__isnull=False).count() == 3


def test_load_demo_refuses_a_production_deploy_unless_told(settings):
    """With DEBUG off (a deploy) the demo's guessable logins are not created without --allow-production."""
    from django.contrib.auth import get_user_model
    from django.core.management import CommandError, call_command

    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off.*--allow-production"):
        call_command("load_demo")
    assert not get_user_model().objects.filter(username="admin").exists()

    call_command("load_demo", "--allow-production")  # what make run does
    assert get_user_model().objects.get(username="admin").check_password("admin")


def test_load_demo_runs_with_debug_on(settings, capsys):
    from django.core.management import call_command

    settings.DEBUG = True
    call_command("load_demo")
    assert "Demo admin login: username=admin password=admin" in capsys.readouterr().out


@pytest.fixture
def admin_client_with_demo(client):
    demo_load()
    client.login(username="admin", password="admin")
    return client


@pytest.mark.parametrize("model", list(admin.site._registry), ids=lambda m: m._meta.label)
def test_every_admin_changelist_and_change_page_opens(admin_client_with_demo, model):
    opts = model._meta
    response = admin_client_with_demo.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert response.status_code == 200
    obj = model._default_manager.first()
    if obj is not None:
        response = admin_client_with_demo.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
        assert response.status_code == 200


def test_admin_requires_login(client):
    response = client.get(reverse("admin:journeys_workflow_changelist"))
    assert response.status_code == 302 and "login" in response["Location"]


def test_dry_run_page(admin_client_with_demo):
    version = Workflow.objects.get(name="High-value support query").live_version
    url = reverse("admin:journeys_workflowversion_dry_run", args=[version.pk])
    response = admin_client_with_demo.post(url, {"customer": "u-alan", "event": '{"event": "Support Message", "properties": {"sentiment": 0.5}}'})
    assert response.status_code == 200
    assert b"would_send" in response.content and b"support-ack" in response.content
    bad = admin_client_with_demo.post(url, {"customer": "nobody", "event": "{oops"})
    assert b"not valid JSON" in bad.content


def test_import_rejects_bad_file(admin_client_with_demo):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = admin_client_with_demo.post(reverse("admin:journeys_workflow_import"),
                                           {"file": SimpleUploadedFile("x.json", b'{"format": "other"}')})
    assert response.status_code == 200
    assert b"expected format" in response.content
