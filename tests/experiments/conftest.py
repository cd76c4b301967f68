from __future__ import annotations

import pytest

from journeys.engine.compiled import reset_caches
from journeys.models import BusinessUnit, Event
from journeys.services.workflows import version_build, version_publish, workflow_create


@pytest.fixture(autouse=True)
def _fresh_engine():
    reset_caches()
    yield
    reset_caches()


@pytest.fixture
def publish(db):
    counter = {"n": 0}
    unit = BusinessUnit.objects.get_or_create(slug="growth", defaults={"name": "Growth"})[0]

    def make(definition: dict, name: str | None = None):
        counter["n"] += 1
        workflow = workflow_create(name=name or f"exp-wf-{counter['n']}", business_unit=unit)
        version = version_build(workflow=workflow, definition=definition)
        return version_publish(version=version, reason="test")

    return make


@pytest.fixture
def send(api, django_capture_on_commit_callbacks):
    """Send an event through the HTTP API; the inline worker processes it."""

    def post(kind="track", **body):
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(kind, body)
        assert response.status_code == 200, response.content
        return Event.objects.order_by("-id").first()

    return post
