"""`manage.py timezones_normalise`: profiles the previous release left on UTC because their
timezone trait was spelled as old clients sent it (`asia/kolkata`, `America/New_York `) get
the zone the trait names; a trait that names no zone, a profile already on its zone, merged and
erased profiles are left alone. Idempotent, and its writes follow the rows it changes."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from journeys.models import Customer
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("timezones_normalise", *args, stdout=out)
    return out.getvalue()


def zones() -> dict[str, str]:
    return dict(Customer.objects.values_list("external_id", "timezone"))


@pytest.fixture
def stored():
    """Profiles as the previous release stored them."""
    kolkata = CustomerFactory(external_id="in", traits={"timezone": "asia/kolkata", "plan": "pro"})
    CustomerFactory(external_id="ny", traits={"timezone": "America/New_York "})
    CustomerFactory(external_id="ny2", traits={"timezone": "America/New_York "})
    CustomerFactory(external_id="offset", timezone="Asia/Tokyo", traits={"timezone": "+05:30"})
    CustomerFactory(external_id="paris", timezone="Europe/Paris", traits={"timezone": "Europe/Paris"})
    CustomerFactory(external_id="none", traits={"plan": "free"})
    CustomerFactory(external_id="merged", traits={"timezone": "asia/tokyo"}, merged_into=kolkata)
    CustomerFactory(external_id="erased", traits={"timezone": "asia/tokyo"}, erased_at=timezone.now())


def test_dry_run_reports_what_it_would_set_and_writes_nothing(stored):
    before = zones()

    out = run("--dry-run", "--spellings")

    assert zones() == before
    assert "3 profile zones would be set from their timezone trait" in out
    assert "'America/New_York ' -> America/New_York: 2" in out and "'asia/kolkata' -> Asia/Kolkata: 1" in out
    assert "'+05:30' names no zone (left as it is): 1" in out


def test_sets_the_zone_the_trait_names_leaves_the_rest_and_a_second_run_writes_nothing(stored):
    out = run("--chunk", "2")

    assert "3 profile zones set from their timezone trait" in out
    assert "1 profiles hold a timezone trait that names no zone" in out
    assert zones() == {"in": "Asia/Kolkata", "ny": "America/New_York", "ny2": "America/New_York",
                       "offset": "Asia/Tokyo", "paris": "Europe/Paris", "none": "UTC", "merged": "UTC",
                       "erased": "UTC"}
    assert Customer.objects.get(external_id="in").traits == {"timezone": "asia/kolkata", "plan": "pro"}
    # run again: nothing to set, nothing written
    with CaptureQueriesContext(connection) as queries:
        again = run()
    assert again.startswith("0 profile zones set")
    assert not [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]


def test_its_writes_follow_the_spellings_it_changes_not_the_customers_it_reads(db):
    # given 300 profiles on their zone and 40 left on UTC with one misspelt zone
    CustomerFactory.create_batch(300, timezone="Europe/Paris", traits={"timezone": "Europe/Paris"})
    CustomerFactory.create_batch(40, traits={"timezone": "europe/berlin"})
    # when it runs
    with CaptureQueriesContext(connection) as queries:
        out = run()
    # then one UPDATE sets the 40
    updates = [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1 and "40 profile zones set" in out
    assert Customer.objects.filter(timezone="Europe/Berlin").count() == 40
