"""Date-attribute triggers from precomputed due moments: each customer's own timezone, offsets,
Feb 29, DST, one-off dates; the moments follow trait and timezone changes whatever writes them;
an idle tick reads nothing but its indexes."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from journeys.engine.dates import DateRule, occurrence_next
from journeys.engine.scheduler import date_triggers_run, engine_tick
from journeys.models import BusinessUnit, Customer, DateTriggerDue, JourneyRun, Workflow
from journeys.services.workflows import version_build, version_publish, workflow_create
from tests.console.conftest import demo  # noqa: F401 - the demo data (its ops admin and source)

pytestmark = pytest.mark.django_db
UTC = timezone.utc


def publish(config: dict, *, name: str = "birthday", **extra):
    unit, _ = BusinessUnit.objects.get_or_create(slug="dates", defaults={"name": "Dates"})
    workflow = workflow_create(name=name, business_unit=unit)
    definition = {"trigger_kind": "date_attribute", "trigger_config": config, "reentry_policy": "always",
                  "steps": [{"key": "done", "kind": "goal", "config": {}}], **extra}
    return version_publish(version=version_build(workflow=workflow, definition=definition), reason="test")


def person(name: str, zone: str = "UTC", **traits) -> Customer:
    return Customer.objects.create(external_id=name, timezone=zone, traits=traits)


def entered(version) -> dict[str, list[str]]:
    """external id -> trigger keys of the runs made."""
    out: dict[str, list[str]] = {}
    for ext, key in JourneyRun.objects.filter(version=version).order_by("trigger_key").values_list(
            "customer__external_id", "trigger_key"):
        out.setdefault(ext, []).append(key)
    return out


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------- the occurrence, as a function


@pytest.mark.parametrize("anchor, today, expected", [
    ("2000-02-29", date(2025, 1, 1), date(2025, 2, 28)),  # common year: Feb 28
    ("2000-02-29", date(2027, 3, 1), date(2028, 2, 29)),  # leap year: Feb 29
    ("1990-06-15", date(2025, 6, 15), date(2025, 6, 15)),  # today counts (until the local day ends)
    ("1990-06-15", date(2025, 6, 16), date(2026, 6, 15)),
    ("2025-06-15", date(2025, 6, 1), date(2026, 6, 15)),  # yearly: never in the year of the date itself
])
def test_the_next_yearly_occurrence(anchor, today, expected):
    found = occurrence_next(anchor, rule=DateRule("d", 0, time(9, 0), True), zone=ZoneInfo("UTC"), from_date=today)
    assert found[0] == expected


def test_offsets_move_the_occurrence_and_may_cross_the_year():
    rule = DateRule("renewal", -3, time(9, 0), True)  # three days before
    assert occurrence_next("2020-01-02", rule=rule, zone=ZoneInfo("UTC"), from_date=date(2025, 12, 1))[0] == date(2025, 12, 30)
    one_off = DateRule("trial_end", 1, time(9, 0), False)
    assert occurrence_next("2025-05-31", rule=one_off, zone=ZoneInfo("UTC"), from_date=date(2025, 5, 1))[0] == date(2025, 6, 1)
    assert occurrence_next("2025-05-31", rule=one_off, zone=ZoneInfo("UTC"), from_date=date(2025, 6, 2)) is None


def test_local_time_across_dst_in_new_york():
    rule = DateRule("d", 0, time(2, 30), True)
    ny = ZoneInfo("America/New_York")
    # 2025-03-09: clocks jump from 02:00 to 03:00; 02:30 does not exist and is read as 03:30 EDT.
    _, due, ends = occurrence_next("2000-03-09", rule=rule, zone=ny, from_date=date(2025, 3, 1))
    assert due == at(2025, 3, 9, 7, 30)
    assert ends == at(2025, 3, 10, 4, 0)  # local midnight after the jump (EDT)
    # 2025-11-02: 01:30 happens twice; the first one (EDT) is taken.
    rule = DateRule("d", 0, time(1, 30), True)
    assert occurrence_next("2000-11-02", rule=rule, zone=ny, from_date=date(2025, 11, 1))[1] == at(2025, 11, 2, 5, 30)


def test_values_that_are_not_dates_have_no_occurrence():
    rule = DateRule("d", 0, time(9, 0), True)
    for value in ("soon", 12, None, "2025-13-01", {"y": 1}):
        assert occurrence_next(value, rule=rule, zone=ZoneInfo("UTC"), from_date=date(2025, 1, 1)) is None


# --------------------------------------------------------------------------- through the tick


def test_each_customer_enters_at_their_own_local_time_once_per_day():
    version = publish({"attribute": "birthday", "at": "09:00"})
    person("tokyo", "Asia/Tokyo", birthday="1990-06-15")
    person("london", "Europe/London", birthday="1985-06-15")
    person("ny", "America/New_York", birthday="1979-06-15")
    person("other", "UTC", birthday="1979-06-16")
    person("bad-zone", "Mars/Olympus", birthday="1990-06-15")  # unknown timezone: UTC

    assert date_triggers_run(now=at(2025, 6, 15, 0, 30)) == 1  # 09:30 in Tokyo
    assert set(entered(version)) == {"tokyo"}
    assert date_triggers_run(now=at(2025, 6, 15, 8, 0)) == 1  # 09:00 BST
    assert date_triggers_run(now=at(2025, 6, 15, 9, 0)) == 1  # 09:00 UTC: the unknown zone
    assert date_triggers_run(now=at(2025, 6, 15, 12, 59)) == 0  # 08:59 in New York
    assert date_triggers_run(now=at(2025, 6, 15, 13, 0)) == 1
    assert date_triggers_run(now=at(2025, 6, 15, 23, 0)) == 0  # once per local day
    assert entered(version) == {"tokyo": ["date:2025-06-15"], "london": ["date:2025-06-15"],
                                "ny": ["date:2025-06-15"], "bad-zone": ["date:2025-06-15"]}
    # A year on: the four again; "other" (the 16th) missed 2025 while no tick ran and waits for its day.
    assert date_triggers_run(now=at(2026, 6, 15, 13, 0)) == 4
    assert date_triggers_run(now=at(2026, 6, 16, 9, 0)) == 1
    assert entered(version)["other"] == ["date:2026-06-16"]


@pytest.mark.parametrize("config, names", [
    ({"at": "24:30"}, "at: '24:30' is not a local time"),
    ({"at": "09:60"}, "at: '09:60'"),
    ({"at": "+1:00"}, "at: '+1:00'"),
    ({"offset_days": "3d"}, "offset_days: '3d' is not a whole number of days"),
    ({"offset_days": "--3"}, "offset_days: '--3' is not a whole number of days"),
    ({"offset_days": 10**9}, "offset_days: 1000000000"),
])
def test_settings_the_tick_could_not_read_are_refused_when_built(config, names):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        publish({"attribute": "birthday", **config})
    assert names in str(refused.value.message_dict["trigger_config"])


def test_a_trigger_stored_with_bad_settings_does_not_stop_the_others_or_the_tick(caplog):
    """Saved before the settings were checked (or written to the database by hand): that trigger
    is left out with an error in the log; every other date trigger and every other part of the
    tick still run, this tick and the next."""
    from journeys.models import WorkflowVersion

    broken = publish({"attribute": "birthday", "at": "09:00"}, name="broken")
    WorkflowVersion.objects.filter(pk=broken.pk).update(trigger_config={"attribute": "birthday", "at": "24:30"})
    version = publish({"attribute": "birthday", "at": "09:00"})
    person("p", birthday="1990-06-15")

    result = engine_tick(now=at(2025, 6, 15, 9, 0))
    assert result["date"] == 1 and "failed" not in result
    assert entered(version) == {"p": ["date:2025-06-15"]} and entered(broken) == {}
    assert f"date trigger of workflow version {broken.pk} is not run: trigger_config at: '24:30'" in caplog.text


def test_a_part_of_the_tick_that_fails_does_not_stop_the_parts_after_it(monkeypatch, caplog):
    import journeys.engine.scheduler as scheduler

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scheduler, "watches_fire_due", broken)
    version = publish({"attribute": "birthday", "at": "09:00"})
    person("p", birthday="1990-06-15")

    result = engine_tick(now=at(2025, 6, 15, 9, 0))
    assert result["failed"] == ["inactivity"] and result["date"] == 1
    assert entered(version) == {"p": ["date:2025-06-15"]}
    assert "the inactivity part failed" in caplog.text and "boom" in caplog.text


def test_feb_29_birthdays_are_celebrated_on_feb_28_in_common_years():
    version = publish({"attribute": "birthday", "at": "09:00"})
    person("leapling", birthday="2000-02-29")

    assert date_triggers_run(now=at(2025, 2, 28, 9, 0)) == 1
    assert date_triggers_run(now=at(2025, 3, 1, 9, 0)) == 0
    assert date_triggers_run(now=at(2028, 2, 28, 9, 0)) == 0  # a leap year: the 29th
    assert date_triggers_run(now=at(2028, 2, 29, 9, 0)) == 1
    assert entered(version)["leapling"] == ["date:2025-02-28", "date:2028-02-29"]


def test_a_day_the_tick_missed_is_not_sent_late():
    version = publish({"attribute": "birthday", "at": "09:00"})
    person("p", birthday="1990-06-15")

    assert date_triggers_run(now=at(2025, 6, 16, 10, 0)) == 0  # down on the 15th
    assert date_triggers_run(now=at(2026, 6, 15, 9, 0)) == 1
    assert entered(version) == {"p": ["date:2026-06-15"]}


def test_one_off_dates_with_an_offset_fire_once_and_are_forgotten():
    version = publish({"attribute": "trial_end", "at": "10:00", "yearly": False, "offset_days": -2})
    person("t", "Europe/Paris", trial_end="2025-07-03")

    assert date_triggers_run(now=at(2025, 7, 1, 7, 59)) == 0  # 09:59 in Paris
    assert date_triggers_run(now=at(2025, 7, 1, 8, 0)) == 1
    assert not DateTriggerDue.objects.exists()
    assert date_triggers_run(now=at(2026, 7, 1, 8, 0)) == 0
    assert entered(version) == {"t": ["date:2025-07-01"]}


def test_a_trait_changed_through_the_event_api_moves_the_due_moment(send):
    version = publish({"attribute": "renewal_date", "at": "09:00", "yearly": False})
    send("identify", userId="r", traits={"renewal_date": "2025-09-01"})
    assert date_triggers_run(now=at(2025, 6, 15, 9, 30)) == 0

    send("identify", userId="r", traits={"renewal_date": "2025-06-15"})  # set-based profile update
    assert date_triggers_run(now=at(2025, 6, 15, 9, 30)) == 1

    send("identify", userId="r", traits={"renewal_date": "not a date"})
    assert not DateTriggerDue.objects.exists()
    assert entered(version) == {"r": ["date:2025-06-15"]}


def test_a_timezone_change_moves_the_due_moment(send):
    version = publish({"attribute": "birthday", "at": "09:00"})
    send("identify", userId="traveller", traits={"birthday": "1990-06-15"}, context={"timezone": "America/Los_Angeles"})
    assert date_triggers_run(now=at(2025, 6, 15, 10, 0)) == 0  # 03:00 in Los Angeles

    send("identify", userId="traveller", traits={"timezone": "Asia/Tokyo"})  # 19:00 there
    assert date_triggers_run(now=at(2025, 6, 15, 10, 1)) == 1
    assert entered(version) == {"traveller": ["date:2025-06-15"]}


def test_customers_written_in_bulk_and_changed_with_update_are_kept_current():
    """Any write path: bulk inserts and queryset updates reach the database trigger too."""
    version = publish({"attribute": "birthday", "at": "09:00"})
    Customer.objects.bulk_create([Customer(external_id=f"b{i}", traits={"birthday": "1990-01-01"}) for i in range(5)])
    date_triggers_run(now=at(2025, 3, 1, 8, 0))
    assert DateTriggerDue.objects.count() == 5

    Customer.objects.filter(external_id__in=["b0", "b1"]).update(traits={"birthday": "1990-03-01"})
    Customer.objects.filter(external_id="b2").update(timezone="Pacific/Kiritimati")  # UTC+14: already 22:00 on Mar 1
    assert date_triggers_run(now=at(2025, 3, 1, 9, 0)) == 2
    assert sorted(entered(version)) == ["b0", "b1"]


def test_customers_who_had_the_trait_before_the_workflow_went_live_are_included():
    person("early", birthday="1990-06-15")
    person("none")
    version = publish({"attribute": "birthday", "at": "09:00"})

    assert date_triggers_run(now=at(2025, 6, 15, 9, 0)) == 1
    assert entered(version) == {"early": ["date:2025-06-15"]}


def test_a_paused_workflow_drops_its_due_moments_and_picks_them_up_again():
    version = publish({"attribute": "birthday", "at": "09:00"})
    person("p", birthday="1990-06-15")
    date_triggers_run(now=at(2025, 6, 1))
    assert DateTriggerDue.objects.filter(version=version).count() == 1

    Workflow.objects.filter(pk=version.workflow_id).update(status="paused")
    date_triggers_run(now=at(2025, 6, 2))
    assert not DateTriggerDue.objects.exists()

    Workflow.objects.filter(pk=version.workflow_id).update(status="active")
    assert date_triggers_run(now=at(2025, 6, 15, 9, 0)) == 1


def test_an_idle_tick_reads_only_its_indexes(django_assert_max_num_queries):
    """Nothing due: the whole minute tick is a fixed handful of statements, whatever the number of customers."""
    publish({"attribute": "birthday", "at": "09:00"})
    Customer.objects.bulk_create([Customer(external_id=f"c{i}", traits={"birthday": f"1990-{1 + i % 12:02d}-{1 + i % 28:02d}"})
                                  for i in range(300)])
    engine_tick(now=at(2025, 6, 30, 10, 1))  # first tick: computes everyone's moment once
    assert DateTriggerDue.objects.count() == 300

    with django_assert_max_num_queries(25):
        result = engine_tick(now=at(2025, 6, 30, 10, 2))
    assert result["date"] == 0 and result["woken"] == 0


def test_the_first_tick_after_go_live_prepares_the_version_once():
    version = publish({"attribute": "birthday", "at": "09:00"})
    for i in range(3):
        person(f"p{i}", birthday="1990-12-24")
    date_triggers_run(now=at(2025, 6, 1))
    first = set(DateTriggerDue.objects.values_list("customer_id", "due_at"))
    date_triggers_run(now=at(2025, 6, 1, 0, 1))
    assert set(DateTriggerDue.objects.values_list("customer_id", "due_at")) == first
    assert {due for _, due in first} == {at(2025, 12, 24, 9, 0)}
    assert version.trigger_state.prepared_at is not None
    assert (at(2025, 12, 24, 9) - at(2025, 6, 1)) > timedelta(days=100)


def test_dates_imported_from_a_customers_file_are_due_on_their_day(demo, django_capture_on_commit_callbacks):
    """Imports write profiles set-based through ingestion: the database trigger queues them too."""
    from django.contrib.auth.models import User

    from journeys.models import Source
    from journeys.services.jobs import job_start

    version = publish({"attribute": "renewal_date", "at": "10:00", "yearly": False}, name="renewals")
    text = "user_id,email,renewal_date,timezone\nu-r1,r1@example.com,2025-07-01,Europe/Paris\nu-r2,r2@example.com,2025-08-01,UTC\n"
    with django_capture_on_commit_callbacks(execute=True):
        job = job_start(kind="import_customers", actor=User.objects.get(username="ops"),
                        params={"source_id": Source.objects.get(name="demo-web").pk}, input_name="c.csv", input_text=text)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error

    assert date_triggers_run(now=at(2025, 7, 1, 7, 59)) == 0
    assert date_triggers_run(now=at(2025, 7, 1, 8, 0)) == 1  # 10:00 in Paris
    assert entered(version) == {"u-r1": ["date:2025-07-01"]}
