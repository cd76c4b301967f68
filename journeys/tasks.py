"""django-q2 tasks: thin wrappers that take ids and call the engine."""

from __future__ import annotations

from journeys.engine import processor, scheduler


def events_process(event_ids: list[int]) -> int:
    return processor.events_process(event_ids=event_ids)


def engine_tick() -> dict:
    return scheduler.engine_tick()
