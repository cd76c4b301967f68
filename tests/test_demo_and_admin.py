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
