"""The registry of step kinds. Each app registers the kinds it owns in AppConfig.ready().

A kind brings everything the console needs with its executor: its form (`form`), its place
in the canvas's palette (`palette`) and a one-line `summary` of a config for the graph, so a
new kind in any app shows up in the palette, the side panel and the step pages with nothing
changed in journeys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from django.core.exceptions import ValidationError

if TYPE_CHECKING:
    from journeys.engine.runtime import StepContext


@dataclass(slots=True)
class StepResult:
    """What a step decided. Exactly one of: an outcome to follow, a wait, or an end."""

    outcome: str | None = None
    wait_until: datetime | None = None
    wait_event: str = ""
    end_status: str | None = None  # "completed" or "exited"
    detail: dict = field(default_factory=dict)
    error: str = ""
    # With outcome "event": the stored event that answered a wait as it began (wait_for_event); the
    # steps after it read that event as event.*, as they read the event that resumes a wait.
    event: Any = None


@dataclass(frozen=True, slots=True)
class Palette:
    """Where a kind sits in the canvas's palette and how its box is drawn."""

    group: str = "Other"  # the palette's section, e.g. Messages, Flow, Profile, End
    colour: str = "#ffffff"  # fill of the step's box on the graph
    order: int = 90  # sections are sorted by their lowest order, kinds by order then label


class StepKind:
    """Base for a step kind: validates its config and executes a visit.

    `side_effects` kinds must act idempotently using `ctx.idempotency_key` and
    must only describe (not perform) their action when `ctx.dry_run` is true.
    """

    kind: ClassVar[str]
    label: ClassVar[str]
    help: ClassVar[str] = ""
    side_effects: ClassVar[bool] = False
    # A side-effect kind whose execute() writes nothing until the engine batch flushes (it
    # keeps its rows in a batch extension when `journeys.engine.batch.current_batch()` is
    # set): it needs no savepoint, and the batch is not flushed before it runs.
    batch_safe: ClassVar[bool] = False
    fields: ClassVar[dict[str, str]] = {}  # config key -> help text (a generated form uses them)
    # Its form: a `journeys.forms.steps.StepConfigForm` subclass (None: generated from `fields`).
    form: ClassVar[type | None] = None
    palette: ClassVar[Palette] = Palette()
    # A kind that sends a message can send it once as a test (`test_send`): the version page's
    # "Send a test" lists the steps of such kinds (journeys.services.testsend).
    sends_tests: ClassVar[bool] = False

    def outcomes(self, config: dict) -> list[str]:
        return ["next"]

    def clean(self, config: dict) -> dict:
        """Return the normalised config or raise ValidationError({key: message})."""
        return config

    def summary(self, config: dict) -> str:
        """One line saying what a step of this kind does with `config`, drawn in its box."""
        return ", ".join(f"{k}: {v}" for k, v in config.items() if v not in (None, "", [], {}))

    def rules(self, config: dict) -> list[str]:
        """Rule expressions in the config (compiled once with the version)."""
        return []

    def references(self, config: dict) -> dict[str, set[str]]:
        """Shared configuration the config names, by what it is: {"template": {...}, "channel": {...},
        "workflow": {...}} (what may not be deleted or renamed while a version in use names it,
        journeys.services.references)."""
        return {}

    def execute(self, ctx: StepContext) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def test_send(self, *, config: dict, to: str, now: datetime, locale: str = "") -> dict:  # pragma: no cover
        """Send a step's message once to `to` (typed by a person), outside any run, and say what
        happened: {"sent", "channel", "to", "subject", "error", "locale", ...}; `locale` (a language
        tag) is the customers' locale whose message is shown. Raise ValidationError (or
        JourneyError) for what the person can fix. Only kinds with `sends_tests`."""
        raise NotImplementedError


STEP_KINDS: dict[str, StepKind] = {}


def register(kind_class: type[StepKind]) -> type[StepKind]:
    """Class decorator: make a step kind available to versions, the admin and the engine."""
    STEP_KINDS[kind_class.kind] = kind_class()
    return kind_class


def get_kind(name: str) -> StepKind:
    try:
        return STEP_KINDS[name]
    except KeyError:
        raise ValidationError(
            {"kind": f"unknown step kind {name!r}; known kinds: {', '.join(sorted(STEP_KINDS))}"}
        ) from None


def require(config: dict, key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    value = config.get(key)
    if value is None or value == "":
        raise ValidationError({key: f"is required ({what})"})
    if not isinstance(value, kinds):
        raise ValidationError({key: f"must be {what}"})
    return value
