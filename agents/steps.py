"""The escalate_to_agent step kind: hand the customer to a person when automation should stop."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.utils.text import slugify

from agents import step_forms as forms
from agents.choices import Priority
from journeys.engine.durations import parse_duration
from journeys.engine.registry import Palette, StepKind, StepResult, register
from journeys.engine.runtime import StepContext, event_dict

TEXT_PROPERTIES = ("text", "message", "body", "content")
_NUMBERS = {
    "sentiment_below": (-1.0, 1.0),
    "complexity_above": (0.0, 1.0),
    "value_at_least": (0.0, None),
}


def _number(config: dict, key: str, low: float | None, high: float | None) -> float | None:
    value = config.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError({key: "must be a number"})
    try:
        value = float(value)
    except ValueError:
        raise ValidationError({key: "must be a number"}) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValidationError({key: f"must be between {low} and {high}" if high is not None else f"must be >= {low}"})
    return value


@register
class EscalateToAgent(StepKind):
    kind = "escalate_to_agent"
    label = "Escalate to an agent"
    help = (
        "Opens a case for a support agent when the customer's message is negative or complex, the customer "
        "is valuable, or automation failed N times (any threshold crossed). Follows 'escalated' or 'automated'."
    )
    side_effects = True
    fields = {
        "sentiment_below": "escalate when the message's sentiment is at or below this (-1 angry .. 1 happy), e.g. -0.3",
        "complexity_above": "escalate when complexity is at or above this (0 .. 1), e.g. 0.5",
        "value_at_least": "escalate when profile.ltv is at least this, e.g. 1000",
        "failed_attempts_at_least": "escalate after this many failed automated attempts, e.g. 2",
        "failed_event": "event counted as a failed attempt (with failed_window), e.g. Bot Fallback",
        "failed_window": "how far back failed_event counts, e.g. 24h (default)",
        "always": "true: escalate every customer who reaches this step",
        "category": "product category of the case (default: event.properties.category, else 'general')",
        "team": "team slug to route to (default: by category)",
        "priority": "base priority: low, normal, high, urgent (default normal)",
        "text_property": "event property holding the customer's words (default: text, message, body)",
        "sentiment_property": "event property with an upstream sentiment score -1..1 that wins over "
                              "the built-in scorer (default: sentiment)",
    }

    form = forms.EscalateToAgentForm
    palette = Palette(group="People", colour="#fce4ec", order=40)

    def outcomes(self, config):
        return ["escalated", "automated"]

    def summary(self, config):
        if config.get("always"):
            return "always"
        said = {"sentiment_below": "sentiment ≤ {}", "complexity_above": "complexity ≥ {}",
                "value_at_least": "ltv ≥ {}", "failed_attempts_at_least": "{} failures"}
        return ", ".join(text.format(config[key]) for key, text in said.items() if config.get(key) is not None)

    def clean(self, config):
        cleaned: dict = {}
        for key, (low, high) in _NUMBERS.items():
            value = _number(config, key, low, high)
            if value is not None:
                cleaned[key] = value
        attempts = config.get("failed_attempts_at_least")
        if attempts not in (None, ""):
            if isinstance(attempts, bool) or not str(attempts).isdigit() or int(attempts) < 1:
                raise ValidationError({"failed_attempts_at_least": "must be a whole number >= 1"})
            cleaned["failed_attempts_at_least"] = int(attempts)
            if config.get("failed_event"):
                cleaned["failed_event"] = str(config["failed_event"])
                try:
                    window = parse_duration(config.get("failed_window") or "24h", field="failed_window")
                except ValueError as exc:
                    raise ValidationError({"failed_window": str(exc).split(": ", 1)[-1]}) from None
                cleaned["failed_window"] = int(window.total_seconds())
        if config.get("always") in (True, "true", "yes", 1):
            cleaned["always"] = True
        if not cleaned:
            raise ValidationError({"sentiment_below": "set at least one threshold (or always: true)"})
        priority = str(config.get("priority") or "normal").lower()
        names = {p.label.lower(): p.value for p in Priority}
        if priority not in names:
            raise ValidationError({"priority": f"must be one of {', '.join(names)}"})
        cleaned["priority"] = priority
        for key in ("category", "team", "text_property", "sentiment_property"):
            if config.get(key):
                cleaned[key] = str(config[key])
        if "team" in cleaned:
            from agents.models import Team

            if not Team.objects.filter(slug=cleaned["team"]).exists():
                raise ValidationError({"team": f"no team with slug {cleaned['team']!r}"})
        return cleaned

    # -- what the step looks at ------------------------------------------------------------------

    def _text(self, ctx: StepContext) -> str:
        props = event_dict(ctx.event).get("properties") or {}
        keys = (ctx.config["text_property"],) if ctx.config.get("text_property") else TEXT_PROPERTIES
        return next((str(props[k]) for k in keys if props.get(k)), "")

    def _failed_attempts(self, ctx: StepContext) -> int:
        props = event_dict(ctx.event).get("properties") or {}
        counts = [_int(props.get("failed_attempts")), _int((ctx.run.variables or {}).get("failed_attempts"))]
        if ctx.config.get("failed_event") and ctx.events_in_last is not None:
            since = ctx.now - timedelta(seconds=ctx.config["failed_window"])
            counts.append(ctx.events_in_last(ctx.config["failed_event"], since))
        return max(counts)

    def _open_case_id(self, ctx: StepContext, category: str) -> int | None:
        from agents.models import Case

        if getattr(ctx.customer, "pk", None) is None:
            return None
        return (
            Case.objects.filter(customer_id=ctx.customer.pk, category=category)
            .exclude(status__in=["resolved", "closed"]).values_list("pk", flat=True).first()
        )

    def assess(self, ctx: StepContext) -> dict:
        """Scores, the thresholds crossed, and the case's category and priority. Shared by dry runs."""
        from agents.scoring import get_scorer

        config = ctx.config
        text = self._text(ctx)
        scores = get_scorer().score(text)
        props = event_dict(ctx.event).get("properties") or {}
        # A chat platform may already have scored the message; its number wins (and says so).
        upstream = props.get(config.get("sentiment_property", "sentiment"))
        sentiment: float | None = scores.sentiment if text else None
        source = "lexicon" if text else "none"
        if isinstance(upstream, int | float) and not isinstance(upstream, bool) and -1 <= upstream <= 1:
            sentiment, source = float(upstream), "event"
        ltv = _float(ctx.profile.get("ltv"))
        attempts = self._failed_attempts(ctx)
        reasons = []
        if config.get("always"):
            reasons.append("always escalate")
        if "sentiment_below" in config and sentiment is not None and sentiment <= config["sentiment_below"]:
            reasons.append(f"sentiment {sentiment:+.2f} <= {config['sentiment_below']:+.2f}")
        if "complexity_above" in config and text and scores.complexity >= config["complexity_above"]:
            reasons.append(f"complexity {scores.complexity:.2f} >= {config['complexity_above']:.2f}")
        if "value_at_least" in config and ltv >= config["value_at_least"]:
            reasons.append(f"lifetime value {ltv:g} >= {config['value_at_least']:g}")
        if "failed_attempts_at_least" in config and attempts >= config["failed_attempts_at_least"]:
            reasons.append(f"{attempts} failed automated attempts >= {config['failed_attempts_at_least']}")
        category = slugify(config.get("category") or str(props.get("category") or "")) or "general"
        # A customer already talking to a person stays with that person, whatever the scores say.
        open_case = self._open_case_id(ctx, category)
        if open_case:
            reasons.append(f"open case #{open_case}")
        priority = {p.label.lower(): p.value for p in Priority}[config["priority"]]
        # Strong emotion and valuable customers jump the queue (visible in the reasons).
        if sentiment is not None and sentiment <= -0.6:
            priority += 1
        if "value_at_least" in config and ltv >= config["value_at_least"]:
            priority += 1
        return {
            "escalate": bool(reasons),
            "reasons": reasons,
            "text": text,
            "sentiment": sentiment,
            "sentiment_source": source,
            "complexity": scores.complexity if text else None,
            "intent": scores.intent,
            "features": scores.features,
            "failed_attempts": attempts,
            "category": category,
            "language": str(props.get("language") or (ctx.customer.locale or "")[:2] or "en")[:8],
            "priority": min(priority, Priority.URGENT),
        }

    def execute(self, ctx: StepContext) -> StepResult:
        a = self.assess(ctx)
        summary = {k: a[k] for k in ("reasons", "sentiment", "sentiment_source", "complexity", "intent", "category",
                                     "priority")}
        if not a["escalate"]:
            return StepResult(outcome="automated", detail=summary)
        if ctx.dry_run:
            return StepResult(outcome="escalated", detail={"would_open_case": True, **summary})
        from agents.models import Team
        from agents.services.cases import CaseDraft, case_open

        event = ctx.event if ctx.event is not None and not isinstance(ctx.event, dict) else None
        name = event.name if event is not None else "Escalation"
        draft = CaseDraft(
            customer=ctx.customer,
            subject=f"{name}: {a['text'][:80]}" if a["text"] else name,
            text=a["text"], category=a["category"][:64], intent=str(a["intent"])[:20], language=a["language"],
            priority=a["priority"], sentiment=a["sentiment"], complexity=a["complexity"], reasons=a["reasons"],
            team=Team.objects.filter(slug=ctx.config["team"]).first() if ctx.config.get("team") else None,
            run=ctx.run, event_id=event.pk if event is not None else None, workflow_id=ctx.workflow_id,
        )
        case, created = case_open(draft=draft, idempotency_key=ctx.idempotency_key, now=ctx.now)
        ctx.run.variables = {**ctx.run.variables, "case_id": case.pk}
        return StepResult(outcome="escalated", detail={"case": case.pk, "new_case": created, **summary})


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
