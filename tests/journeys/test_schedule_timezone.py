"""A cron schedule read on a time zone's wall clock: the setting is checked when the version is
saved, the broadcast goes out at that local time on both sides of a DST change, a time the
change skips runs once at the jump and a repeated one once (UTC when no zone is set)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError

from journeys.engine.scheduler import engine_tick, schedules_run
from journeys.models import BusinessUnit, Customer, JourneyRun
from journeys.services.workflows import (
    version_build,
    version_canary_start,
    version_publish,
    version_validate,
    workflow_create,
)

pytestmark = pytest.mark.django_db
UTC = timezone.utc
GOAL = [{"key": "done", "kind": "goal", "config": {}}]


def definition(**config) -> dict:
    return {"trigger_kind": "schedule", "trigger_config": {"segment": "", **config}, "reentry_policy": "always",
            "steps": GOAL}


def build(**config):
    unit, _ = BusinessUnit.objects.get_or_create(slug="tz", defaults={"name": "TZ"})
    return version_build(workflow=workflow_create(name="tz", business_unit=unit), definition=definition(**config))


def fires(version, start: datetime, end: datetime) -> list[str]:
    """Tick every 15 minutes from `start` to `end` (UTC), as a slow scheduler would (each tick
    claims the latest moment since the last); the broadcasts' moments, in UTC."""
    Customer.objects.get_or_create(external_id="someone")
    moment = start
    while moment <= end:
        schedules_run(now=moment)
        moment += timedelta(minutes=15)
    return sorted(set(JourneyRun.objects.filter(version=version).values_list("trigger_key", flat=True)))


def test_the_zone_is_stored_in_its_own_spelling():
    assert build(cron="0 9 * * *", timezone=" america/new_york").trigger_config["timezone"] == "America/New_York"


@pytest.mark.parametrize(("config", "message"), [
    ({"timezone": "Not/AZone"}, "timezone: 'Not/AZone' is not an IANA time zone"),
    ({"timezone": "+05:00"}, "timezone: '+05:00' is not an IANA time zone"),
    *[({name: "America/New_York"}, f"{name}: the schedule trigger has no such setting; did you mean 'timezone'?")
      for name in ("tz", "time_zone", "zone", "timeZone", "Timezone")],
])
def test_a_bad_zone_or_a_misspelt_timezone_is_refused_saying_what_to_fix(config, message):
    with pytest.raises(ValidationError) as exc:
        build(cron="0 9 * * *", **config)
    assert message in exc.value.message_dict["trigger_config"][0]


def test_a_schedule_saved_with_other_keys_keeps_them_and_can_be_submitted_and_published_again():
    # given a live weekly digest stored before the schedule read a zone, with a note in its settings
    version = build(cron="0 9 * * 1")
    stored = {"cron": "0 9 * * 1", "segment": "", "note": "weekly digest"}
    type(version).objects.filter(pk=version.pk).update(trigger_config=stored)
    version.refresh_from_db()
    # when it is validated (submit, approve, publish) and published, and a draft is built from it
    assert version_validate(version=version).errors == []
    published = version_publish(version=version, reason="t")
    copy = version_build(workflow=version.workflow, definition=definition(cron="0 9 * * 1", note="weekly digest"))
    # then the note is kept, as any other trigger kind keeps keys it does not read
    assert published.trigger_config["note"] == "weekly digest"
    assert copy.trigger_config["note"] == "weekly digest"


def test_a_saved_version_with_a_bad_zone_fails_validation():
    version = build(cron="0 9 * * *")
    type(version).objects.filter(pk=version.pk).update(trigger_config={"cron": "0 9 * * *", "timezone": "Mars/Olympus"})
    version.refresh_from_db()
    assert any("timezone: 'Mars/Olympus' is not an IANA time zone" in e for e in version_validate(version=version).errors)


def test_fires_at_nine_new_york_time_before_and_after_the_spring_change():
    version = version_publish(version=build(cron="0 9 * * *", timezone="America/New_York"), reason="t")

    # 2027-03-14: New York springs forward (EST -5 -> EDT -4)
    keys = fires(version, datetime(2027, 3, 13, 12, 50, tzinfo=UTC), datetime(2027, 3, 15, 14, 10, tzinfo=UTC))

    assert keys == ["schedule:2027-03-13T14:00:00+00:00", "schedule:2027-03-14T13:00:00+00:00",
                    "schedule:2027-03-15T13:00:00+00:00"]


def test_a_time_the_spring_change_skips_runs_once_at_the_jump():
    version = version_publish(version=build(cron="30 2 * * *", timezone="America/New_York"), reason="t")

    keys = fires(version, datetime(2027, 3, 14, 6, 0, tzinfo=UTC), datetime(2027, 3, 14, 8, 0, tzinfo=UTC))

    assert keys == ["schedule:2027-03-14T07:00:00+00:00"]  # 03:00 EDT, the first real minute after 01:59 EST


def test_a_time_the_autumn_change_repeats_runs_once():
    version = version_publish(version=build(cron="30 1 * * *", timezone="America/New_York"), reason="t")

    # 2027-11-07: 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST)
    keys = fires(version, datetime(2027, 11, 7, 5, 0, tzinfo=UTC), datetime(2027, 11, 7, 7, 0, tzinfo=UTC))

    assert keys == ["schedule:2027-11-07T05:30:00+00:00"]


def test_an_every_half_hour_schedule_keeps_running_through_the_repeated_hour():
    version = version_publish(version=build(cron="0,30 * * * *", timezone="America/New_York"), reason="t")

    keys = fires(version, datetime(2027, 11, 7, 5, 0, tzinfo=UTC), datetime(2027, 11, 7, 7, 0, tzinfo=UTC))

    assert len(keys) == 5  # 05:00, 05:30, 06:00, 06:30, 07:00 UTC: no hour left out


def test_without_a_zone_the_schedule_is_utc_through_the_tick():
    version = version_publish(version=build(cron="0 9 * * *"), reason="t")
    Customer.objects.create(external_id="someone")

    engine_tick(now=datetime(2027, 3, 14, 8, 59, tzinfo=UTC))
    engine_tick(now=datetime(2027, 3, 14, 9, 0, tzinfo=UTC))

    assert list(JourneyRun.objects.filter(version=version).values_list("trigger_key", flat=True)) == [
        "schedule:2027-03-14T09:00:00+00:00"]


def upgraded_on(monkeypatch, version, *, old_ticks: tuple[datetime, datetime], new_ticks: tuple[datetime, datetime]):
    """The previous release ticks (it read every schedule on the UTC clock, whatever its
    `timezone` key), then the new code from the upgrade on."""
    from zoneinfo import ZoneInfo

    from journeys.engine import scheduler

    with monkeypatch.context() as old_release:
        old_release.setattr(scheduler, "zone_named", lambda name: ZoneInfo("UTC"))
        fires(version, *old_ticks)
    return fires(version, *new_ticks)


@pytest.mark.parametrize(("cron", "zone", "old_moment", "new_moment"), [
    ("0 10 * * 1", "America/New_York", "2026-12-07T10:00", "2026-12-07T15:00"),
    ("0 6 * * 1", "America/Los_Angeles", "2026-12-07T06:00", "2026-12-07T14:00"),
])
def test_an_upgrade_between_the_utc_moment_and_the_local_one_sends_that_weeks_broadcast_once(
        monkeypatch, cron, zone, old_moment, new_moment):
    # given a weekly schedule with a zone west of UTC, broadcast on Monday by the previous release at its UTC moment
    version = version_publish(version=build(cron=cron, timezone=zone), reason="t")
    monday = datetime(2026, 12, 7, tzinfo=UTC)
    upgrade = datetime.fromisoformat(old_moment + "+00:00") + timedelta(hours=1)
    # when the new code runs from an hour later until past that zone's moment, and again the next Monday
    keys = upgraded_on(monkeypatch, version, old_ticks=(monday, upgrade),
                       new_ticks=(upgrade + timedelta(minutes=15), monday + timedelta(days=7, hours=23)))
    # then that Monday's broadcast went out once (the old moment); the next Monday's at the zone's moment
    next_monday = (datetime.fromisoformat(new_moment + "+00:00") + timedelta(days=7)).isoformat()
    assert keys == [f"schedule:{old_moment}:00+00:00", f"schedule:{next_monday}"]
    assert JourneyRun.objects.filter(version=version).count() == 2


def test_an_hourly_schedule_with_a_zone_is_not_held_back_by_its_own_earlier_hours():
    # given an hourly schedule in New York: every UTC hour is also one of its own moments
    version = version_publish(version=build(cron="0 * * * *", timezone="America/New_York"), reason="t")
    # when it ticks for five hours
    keys = fires(version, datetime(2026, 12, 7, 9, 50, tzinfo=UTC), datetime(2026, 12, 7, 14, 10, tzinfo=UTC))
    # then each hour goes out
    assert len(keys) == 5


def test_an_upgrade_of_an_hourly_schedule_with_a_zone_holds_back_no_hour(monkeypatch):
    # given an hourly schedule in New York broadcast every UTC hour by the previous release until 12:00 UTC
    version = version_publish(version=build(cron="0 * * * *", timezone="America/New_York"), reason="t")
    monday = datetime(2026, 12, 7, tzinfo=UTC)
    # when the new code runs from 12:15 to 16:10 UTC
    keys = upgraded_on(monkeypatch, version, old_ticks=(monday, monday + timedelta(hours=12)),
                       new_ticks=(monday + timedelta(hours=12, minutes=15), monday + timedelta(hours=16, minutes=10)))
    # then every hour went out once: 00:00 to 12:00 by the old release, 13:00 to 16:00 by the new code
    assert keys == [f"schedule:{(monday + timedelta(hours=h)).isoformat()}" for h in range(17)]


def test_a_canary_with_a_zone_beside_a_utc_live_version_sends_its_own_broadcast():
    # given a live daily 10:00 UTC schedule and a canary of it at 10:00 New York time on half the customers
    live = version_publish(version=build(cron="0 10 * * *"), reason="t")
    canary = version_build(workflow=live.workflow, definition=definition(cron="0 10 * * *", timezone="America/New_York"))
    version_canary_start(version=canary, percent=50)
    for n in range(40):
        Customer.objects.create(external_id=f"c{n}")
    # when both tick through the day
    live_keys = fires(live, datetime(2026, 12, 7, 9, 50, tzinfo=UTC), datetime(2026, 12, 7, 15, 10, tzinfo=UTC))
    canary_keys = sorted(set(JourneyRun.objects.filter(version=canary).values_list("trigger_key", flat=True)))
    # then the live version went out at 10:00 UTC and the canary at 15:00 UTC: the live one's runs are not its own
    assert live_keys == ["schedule:2026-12-07T10:00:00+00:00"]
    assert canary_keys == ["schedule:2026-12-07T15:00:00+00:00"]


def test_a_utc_schedule_republished_with_a_zone_the_same_day_sends_at_the_zones_moment():
    # given a daily 10:00 UTC schedule that went out this morning
    first = version_publish(version=build(cron="0 10 * * *"), reason="t")
    assert fires(first, datetime(2026, 12, 7, 9, 50, tzinfo=UTC), datetime(2026, 12, 7, 10, 10, tzinfo=UTC)) == [
        "schedule:2026-12-07T10:00:00+00:00"]
    # when it is republished at noon with the New York zone and ticks until the afternoon
    second = version_publish(version=version_build(workflow=first.workflow, definition=definition(
        cron="0 10 * * *", timezone="America/New_York")), reason="t")
    keys = fires(second, datetime(2026, 12, 7, 12, 0, tzinfo=UTC), datetime(2026, 12, 7, 15, 10, tzinfo=UTC))
    # then the new version sends its own 10:00 New York broadcast (the new schedule was asked for today)
    assert keys == ["schedule:2026-12-07T15:00:00+00:00"]


@pytest.mark.parametrize(("upgrade_hour", "expected"), [
    # upgraded at 16:00 UTC: the previous release sent both of Monday's (10:00 and 15:00 UTC)
    (16, ["2026-12-07T10:00", "2026-12-07T15:00", "2026-12-08T15:00", "2026-12-08T20:00"]),
    # upgraded at 08:00 UTC: the new code sends both of Monday's, at 10:00 and 15:00 New York time
    (8, ["2026-12-07T15:00", "2026-12-07T20:00", "2026-12-08T15:00", "2026-12-08T20:00"]),
])
def test_an_upgrade_of_a_schedule_firing_on_both_clocks_sends_each_occurrence_once(monkeypatch, upgrade_hour, expected):
    # given "0 10,15 * * 1-5" in New York: 15:00 UTC is 15:00 on the old clock and 10:00 on the new one
    version = version_publish(version=build(cron="0 10,15 * * 1-5", timezone="America/New_York"), reason="t")
    upgrade = datetime(2026, 12, 7, upgrade_hour, tzinfo=UTC)
    # when the previous release runs Monday until the upgrade, then the new code until Tuesday night
    keys = upgraded_on(monkeypatch, version, old_ticks=(datetime(2026, 12, 7, tzinfo=UTC), upgrade),
                       new_ticks=(upgrade + timedelta(minutes=15), datetime(2026, 12, 8, 22, tzinfo=UTC)))
    # then Monday had two broadcasts, as Tuesday
    assert keys == [f"schedule:{moment}:00+00:00" for moment in expected]


def test_an_upgrade_on_the_spring_change_day_sends_a_skipped_time_once(monkeypatch):
    # given "0 2 * * *" in New York, sent at 02:00 UTC by the previous release on the day 02:00 local is skipped
    version = version_publish(version=build(cron="0 2 * * *", timezone="America/New_York"), reason="t")
    # when the new code runs from 03:15 UTC (its moment that day is 07:00 UTC, the jump) to the next day
    keys = upgraded_on(monkeypatch, version,
                       old_ticks=(datetime(2027, 3, 14, 1, 50, tzinfo=UTC), datetime(2027, 3, 14, 3, 0, tzinfo=UTC)),
                       new_ticks=(datetime(2027, 3, 14, 3, 15, tzinfo=UTC), datetime(2027, 3, 15, 8, 10, tzinfo=UTC)))
    # then that day's broadcast went out once, and the next day's at 02:00 EDT
    assert keys == ["schedule:2027-03-14T02:00:00+00:00", "schedule:2027-03-15T06:00:00+00:00"]


def test_the_upgrade_guard_reads_a_bounded_number_of_runs_whatever_the_history(monkeypatch):
    # given a weekly New York schedule broadcast at 10:00 UTC by the previous release
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from journeys.engine import scheduler

    version = version_publish(version=build(cron="0 10 * * 1", timezone="America/New_York"), reason="t")
    monday = datetime(2026, 12, 7, tzinfo=UTC)
    upgraded_on(monkeypatch, version, old_ticks=(monday + timedelta(hours=9, minutes=50), monday + timedelta(hours=10, minutes=5)),
                new_ticks=(monday + timedelta(hours=14), monday + timedelta(hours=14)))
    # when the new code claims 15:00 UTC (10:00 in New York)
    with CaptureQueriesContext(connection) as queries:
        schedules_run(now=monday + timedelta(hours=15))
    # then it passes the moment over, having read the version's first runs in created_at order, LIMITed:
    # no query filters runs by trigger_key (which would walk every run of the version since the moment)
    probes = [q["sql"] for q in queries if '"trigger_key"' in q["sql"] and "journeys_journeyrun" in q["sql"]
              and q["sql"].lstrip().upper().startswith("SELECT")]
    assert probes, [q["sql"] for q in queries]
    for sql in probes:
        assert f"LIMIT {scheduler.GUARD_PROBE}" in sql
        assert '"created_at" ASC' in sql
        assert '"trigger_key" =' not in sql and '"workflow_id"' not in sql
    assert JourneyRun.objects.filter(version=version).count() == 1
