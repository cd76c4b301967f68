"""What the engine listens to: the rule-defined lifecycle stages (cached for a few seconds) and
which event names nothing would react to (`events_unheard`). A leaf of the engine: services that
record events ask it without importing the processor."""

from __future__ import annotations

import time

from journeys.choices import RunStatus
from journeys.engine.compiled import trigger_index
from journeys.models import JourneyRun
from journeys.models.catalog import LifecycleStage
from journeys.rules.counted import counted_event_names

STAGE_EVENTS = ("Stage Entered", "Stage Left")  # they never re-evaluate the stage they report

_stages: dict = {"at": 0.0, "rows": []}


def rule_stages() -> list[tuple[str, str]]:
    """(key, rule) of the stages that have a rule, in order; re-read at most every 5 seconds."""
    if time.monotonic() - _stages["at"] > 5.0:
        _stages["rows"] = list(LifecycleStage.objects.exclude(rule="").order_by("order", "key").values_list("key", "rule"))
        _stages["at"] = time.monotonic()
    return _stages["rows"]


def stages_reset() -> None:
    _stages["at"] = 0.0


def events_unheard(names: set[str]) -> set[str]:
    """Of these event names, the ones nothing would react to now: no live trigger or inactivity
    window starts or stops on them, no version that may still have runs has them as its goal,
    no run waits for them (an indexed read of the waiting runs), no rule-defined lifecycle
    stage would be re-evaluated and no segment-entry rule counts events. Product-made events with such a name are stored processed
    (journeys.services.internal_events): the engine would lock, load and mark them for nothing."""
    index = trigger_index()
    if any("events_in_last" in rule for rule in index.segment_rules):
        counted = counted_event_names(index.segment_rules)  # the processor marks their customers for its refresh
        if None in counted:
            return set()
        names = set(names) - counted
    if rule_stages():
        names = {n for n in names if n in STAGE_EVENTS}
    names = set(names) - index.heard
    if names:
        names -= set(JourneyRun.objects.filter(status=RunStatus.WAITING, wait_event__in=names)
                     .exclude(wait_event="").values_list("wait_event", flat=True).distinct())
    return names
