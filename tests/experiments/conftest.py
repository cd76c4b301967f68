from __future__ import annotations

import pytest

from experiments.models import Experiment
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




@pytest.fixture
def running(publish, send):
    """An experiment run through the engine: 40 sign-ups, a third convert."""
    from tests.experiments.factories import make_experiment, split_workflow

    experiment = make_experiment(
        goal_event="Order Completed", holdout_share=0.2, secondary_metrics=["completion", "open_rate"]
    )
    publish(split_workflow(holdout=True))
    for i in range(40):
        send(userId=f"a{i}", event="Signed Up")
    for i in range(0, 40, 3):
        send(userId=f"a{i}", event="Order Completed")
    return Experiment.objects.get(pk=experiment.pk)
