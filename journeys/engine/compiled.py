"""Versions compiled for the engine, and the trigger index (event name -> live versions).

A frozen version never changes, so its compiled form is cached per process
forever. The index is rebuilt only when `EngineGeneration` moves (a publish or
a retirement), so the cost of an event depends on the versions it matches,
not on how many workflows exist.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import models

from journeys.choices import TriggerKind, VersionState
from journeys.engine.registry import StepKind, get_kind
from journeys.models import EngineGeneration, Workflow, WorkflowVersion
from journeys.rules import compile_rule


@dataclass(slots=True)
class CompiledStep:
    key: str
    name: str
    kind: StepKind
    config: dict
    edges: dict[str, str]


@dataclass(slots=True)
class CompiledVersion:
    id: int
    workflow_id: int
    number: int
    trigger_kind: str
    trigger_event: str
    trigger_config: dict
    entry_rule: str
    reentry_policy: str
    reentry_cooldown_s: int
    allow_concurrent_runs: bool
    goal_event: str
    goal_filter: str
    entry_step: str
    steps: dict[str, CompiledStep] = field(default_factory=dict)
    business_hours: dict = field(default_factory=dict)  # when time-driven entries may start (business_hours.py)
    moves: bool = False  # a run of it may end or start other runs of its customer (a start_workflow step)


def compile_version(version: WorkflowVersion) -> CompiledVersion:
    """Load the graph and compile every rule once (a bad rule raises here, not mid-run)."""
    steps = {s.pk: s for s in version.steps.all()}
    edges: dict[int, dict[str, str]] = defaultdict(dict)
    for edge in version.edges.all():
        edges[edge.source_id][edge.outcome] = steps[edge.target_id].key
    compiled = CompiledVersion(
        id=version.pk,
        workflow_id=version.workflow_id,
        number=version.number,
        trigger_kind=version.trigger_kind,
        trigger_event=version.trigger_event,
        trigger_config=version.trigger_settings,
        entry_rule=version.entry_rule,
        reentry_policy=version.reentry_policy,
        reentry_cooldown_s=version.reentry_cooldown_s,
        allow_concurrent_runs=version.allow_concurrent_runs,
        goal_event=version.goal_event,
        goal_filter=version.goal_filter,
        entry_step=version.entry_step,
        business_hours=version.business_hours or {},
    )
    for pk, step in steps.items():
        kind = get_kind(step.kind)
        for text in kind.rules(step.config):
            compile_rule(text)
        compiled.steps[step.key] = CompiledStep(step.key, step.name, kind, step.config, edges.get(pk, {}))
    compiled.moves = any(step.kind.kind == "start_workflow" for step in compiled.steps.values())
    for text in (version.entry_rule, version.goal_filter, version.trigger_settings.get("filter", "")):
        if text:
            compile_rule(text)
    return compiled


_cache: dict[int, CompiledVersion] = {}
_lock = threading.Lock()


def load_version(version_id: int) -> CompiledVersion:
    """Compiled form of a version; frozen versions are cached for the life of the process."""
    cached = _cache.get(version_id)
    if cached is not None:
        return cached
    version = WorkflowVersion.objects.get(pk=version_id)
    compiled = compile_version(version)
    if version.is_frozen:
        with _lock:
            _cache[version_id] = compiled
    return compiled


@dataclass
class TriggerIndex:
    generation: int = -1
    by_event: dict[str, list[int]] = field(default_factory=dict)
    inactivity_start: dict[str, list[int]] = field(default_factory=dict)
    inactivity_stop: dict[str, list[int]] = field(default_factory=dict)
    profile_triggers: list[int] = field(default_factory=list)  # attribute change + segment entry
    # Rules of the segment-entry versions taking entries or whose members are kept (a paused one,
    # until a refresh forgets them): what they count is heard, and marks its customers.
    segment_rules: tuple[str, ...] = ()
    goal_events: frozenset[str] = frozenset()
    # Event names a trigger, an inactivity window or the goal of any version that may still have
    # runs (every one past review) reacts to; runs waiting for an event are read from the runs.
    heard: frozenset[str] = frozenset()
    # Canary routing: version id -> (workflow id, percent, is_canary) for workflows with a canary.
    canary: dict[int, tuple[int, int, bool]] = field(default_factory=dict)
    checked_at: float = 0.0

    def admits(self, version_id: int, customer_id: int) -> bool:
        """Whether a NEW entry of this customer may go to this version (canary share routing)."""
        return canary_admits(self.canary.get(version_id), customer_id)


def canary_admits(routing: tuple[int, int, bool] | None, customer_id: int) -> bool:
    """Canary share routing of a new entry: `routing` is (workflow id, percent, is the canary)
    for a workflow with a canary, None otherwise (everyone enters the live version)."""
    if routing is None:
        return True
    workflow_id, percent, is_canary = routing
    return (canary_bucket(workflow_id, customer_id) < percent * 100) == is_canary


def canary_bucket(workflow_id: int, customer_id: int) -> int:
    """A stable bucket 0..9999 per (workflow, customer): the same customer always lands on the same side."""
    digest = hashlib.blake2b(f"canary:{workflow_id}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10000


_index = TriggerIndex()
CHECK_EVERY_S = 1.0


def routable_versions():
    """Versions that take new entries: the live version of every active workflow and, beside
    it, its canary (whatever the trigger kind: the scheduler routes date, inactivity and cron
    entries by the same share as the event path)."""
    live = models.Q(state=VersionState.LIVE)
    canary = models.Q(workflow__canary_version=models.F("pk"), workflow__live_version__isnull=False)
    return WorkflowVersion.objects.filter(live | canary, workflow__status="active")


def current_generation() -> int:
    row = EngineGeneration.objects.order_by("pk").values_list("value", flat=True).first()
    return row or 0


def bump_generation() -> None:
    """Tell every worker to reload its trigger index (call inside the publishing transaction)."""
    from django.db.models import F

    if not EngineGeneration.objects.update(value=F("value") + 1):
        EngineGeneration.objects.create(value=1)
    _index.checked_at = 0.0  # this process re-checks at once


def trigger_index(*, force: bool = False) -> TriggerIndex:
    """The index for live versions, reloaded when the generation changed (checked at most once a second)."""
    global _index
    now = time.monotonic()
    if not force and now - _index.checked_at < CHECK_EVERY_S:
        return _index
    generation = current_generation()
    if not force and generation == _index.generation:
        _index.checked_at = now
        return _index
    fresh = TriggerIndex(generation=generation, checked_at=now)
    by_event: dict[str, list[int]] = defaultdict(list)
    start: dict[str, list[int]] = defaultdict(list)
    stop: dict[str, list[int]] = defaultdict(list)
    goals = set()
    rows = routable_versions().order_by("pk").values_list(  # one event's workflows act in version order
        "id", "trigger_kind", "trigger_event", "trigger_config", "goal_event"
    )
    for wid, live_id, canary_id, percent in Workflow.objects.filter(
        status="active", canary_version__isnull=False, live_version__isnull=False
    ).values_list("id", "live_version_id", "canary_version_id", "canary_percent"):
        fresh.canary[live_id] = (wid, percent, False)
        fresh.canary[canary_id] = (wid, percent, True)
    for vid, kind, event, config, goal in rows:
        if goal:
            goals.add(goal)
        if kind == TriggerKind.EVENT:
            by_event[event].append(vid)
        elif kind == TriggerKind.INACTIVITY:
            start[event].append(vid)
            stop[(config or {}).get("followed_by", "")].append(vid)
        elif kind in (TriggerKind.ATTRIBUTE_CHANGE, TriggerKind.SEGMENT_ENTRY):
            fresh.profile_triggers.append(vid)
            if kind == TriggerKind.SEGMENT_ENTRY:
                fresh.segment_rules += ((config or {}).get("rule", ""),)
    kept = WorkflowVersion.objects.filter(trigger_kind=TriggerKind.SEGMENT_ENTRY, trigger_state__prepared_at__isnull=False
                                          ).exclude(pk__in=fresh.profile_triggers).values_list("trigger_config", flat=True)
    fresh.segment_rules += tuple((config or {}).get("rule", "") for config in kept)
    fresh.by_event, fresh.inactivity_start, fresh.inactivity_stop = dict(by_event), dict(start), dict(stop)
    fresh.goal_events = frozenset(goals)
    old_goals = WorkflowVersion.objects.exclude(state__in=[VersionState.DRAFT, VersionState.IN_REVIEW]).exclude(
        goal_event="").values_list("goal_event", flat=True).distinct()
    fresh.heard = frozenset({*by_event, *start, *stop, *goals, *old_goals} - {""})
    _index = fresh
    return fresh


def reset_caches() -> None:
    """For tests: forget compiled versions and the index."""
    global _index
    _cache.clear()
    _index = TriggerIndex()
