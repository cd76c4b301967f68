from __future__ import annotations

import pytest

from journeys.models import BusinessUnit
from journeys.services.workflows import version_build, version_publish, workflow_create


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


