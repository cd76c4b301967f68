"""The journeys app's own configuration outside workflows (sources, the event catalog, lifecycle
stages) asks for a reason in the admin like every other configuration model, and keeps who and why."""

from __future__ import annotations

import pytest

from journeys.models import EventDefinition, LifecycleStage
from tests.factories import make_source
from tests.journeys.test_governance_fixtures import assert_change_needs_a_reason

pytestmark = pytest.mark.django_db

CASES = {
    "source": (lambda: make_source("web")[0], {"rate_limit": 50}, lambda s: s.rate_limit == 50),
    "event definition": (lambda: EventDefinition.objects.create(name="Order Completed", schema={}),
                         {"owner": "checkout team"}, lambda d: d.owner == "checkout team"),
    "lifecycle stage": (lambda: LifecycleStage.objects.create(key="vip", name="VIP", order=1, rule="profile.ltv >= 1000"),
                        {"rule": "profile.ltv >= 2000"}, lambda s: s.rule == "profile.ltv >= 2000"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_journeys_config_change_needs_a_reason_and_keeps_who_and_why(admin_client, admin_user, case):
    make, changes, changed = CASES[case]
    saved = assert_change_needs_a_reason(admin_client, admin_user, make(), changes)
    assert changed(saved)
