"""The core step kinds owned by journeys: condition, split, delay, wait_for_event,
update_profile, goal, exit. Other apps register theirs in their AppConfig.ready()."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError

from journeys.engine.durations import duration_text, parse_duration
from journeys.engine.registry import Palette, StepKind, StepResult, register, require
from journeys.forms import kinds as forms
from journeys.engine.runtime import StepContext, add_local, add_wait
from journeys.models.fields import MAX_DEPTH
from journeys.rules import RuleEvaluationError, compile_rule, validate_rule

FLOW = Palette(group="Flow", colour="#fff8e1", order=20)
WAITS = Palette(group="Flow", colour="#f3e5f5", order=22)
PROFILE = Palette(group="Profile", colour="#e0f2f1", order=50)

_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_SLUG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_rule(config: dict, key: str, *, required: bool = True) -> str:
    text = config.get(key, "")
    if not text:
        if required:
            raise ValidationError({key: "is required (a rule such as profile.ltv >= 500)"})
        return ""
    if not isinstance(text, str):
        raise ValidationError({key: "must be a rule written as text"})
    if problems := validate_rule(text):
        raise ValidationError({key: f"rule error: {problems[0]}"})
    return text


def check_duration(config: dict, key: str) -> timedelta:
    try:
        return parse_duration(config.get(key), field=key)
    except ValueError as exc:
        raise ValidationError({key: str(exc).split(": ", 1)[-1]}) from None


@register
class Condition(StepKind):
    kind = "condition"
    label = "Condition (yes/no)"
    help = "Follows 'yes' when the rule is true, else 'no'. A rule that fails with a type error counts as false."
    fields = {"rule": "e.g. event.properties.total >= 100 and profile.tenure_days > 30"}
    form = forms.ConditionForm
    palette = FLOW

    def outcomes(self, config):
        return ["yes", "no"]

    def summary(self, config):
        return config.get("rule") or ""

    def clean(self, config):
        return {"rule": check_rule(config, "rule")}

    def rules(self, config):
        return [config["rule"]]

    def execute(self, ctx: StepContext) -> StepResult:
        result = ctx.evaluate(ctx.config["rule"])
        return StepResult(outcome="yes" if result.value else "no", error=result.error or "")


@register
class Split(StepKind):
    kind = "split"
    label = "Multi-way split"
    help = "Follows the first branch whose rule is true, else 'default'."
    fields = {"branches": 'list of {"name": "vip", "rule": "profile.ltv >= 1000"}'}
    form = forms.SplitForm
    palette = Palette(group="Flow", colour="#fff8e1", order=21)

    def outcomes(self, config):
        return [b["name"] for b in config.get("branches", [])] + ["default"]

    def summary(self, config):
        return " | ".join(b.get("name", "?") for b in config.get("branches") or [])

    def clean(self, config):
        branches = require(config, "branches", list, "a list of {name, rule} branches")
        cleaned, names = [], set()
        for i, branch in enumerate(branches):
            if not isinstance(branch, dict):
                raise ValidationError({"branches": f"branch {i + 1} must be an object with name and rule"})
            name = branch.get("name", "")
            if not isinstance(name, str) or not _SLUG.match(name) or name == "default":
                raise ValidationError({"branches": f"branch {i + 1}: name must be letters, digits, - or _ (not 'default')"})
            if name in names:
                raise ValidationError({"branches": f"branch name {name!r} is used twice"})
            names.add(name)
            try:
                rule = check_rule(branch, "rule")
            except ValidationError as exc:
                raise ValidationError({"branches": f"branch {name}: {exc.message_dict['rule'][0]}"}) from None
            cleaned.append({"name": name, "rule": rule})
        return {"branches": cleaned}

    def rules(self, config):
        return [b["rule"] for b in config["branches"]]

    def execute(self, ctx):
        errors = []
        for branch in ctx.config["branches"]:
            result = ctx.evaluate(branch["rule"])
            if result.error:
                errors.append(f"{branch['name']}: {result.error}")
            if result.value:
                return StepResult(outcome=branch["name"], error="; ".join(errors))
        return StepResult(outcome="default", error="; ".join(errors))


@register
class Delay(StepKind):
    kind = "delay"
    label = "Delay"
    help = "Waits a duration, until a local time of day in the customer's timezone, or until a date attribute."
    fields = {
        "duration": "e.g. 1h, 30m, 2d",
        "until_local_time": "HH:MM in the customer's timezone",
        "until_attribute": "profile date attribute, e.g. renewal_date",
        "offset": "with until_attribute: e.g. -3d sends three days before",
    }
    form = forms.DelayForm
    palette = WAITS

    def summary(self, config):
        if config.get("duration"):
            return f"for {duration_text(config['duration'])}"
        if config.get("until_local_time"):
            return f"until {config['until_local_time']} local time"
        if config.get("until_attribute"):
            offset = config.get("offset") or 0
            shift = f" {'-' if offset < 0 else '+'}{duration_text(abs(offset))}" if isinstance(offset, int) and offset else ""
            return f"until profile.{config['until_attribute']}{shift}"
        return ""

    def clean(self, config):
        modes = [k for k in ("duration", "until_local_time", "until_attribute") if config.get(k) not in (None, "")]
        if len(modes) != 1:
            raise ValidationError({"duration": "set exactly one of duration, until_local_time, until_attribute"})
        mode = modes[0]
        if mode == "duration":
            return {"duration": int(check_duration(config, "duration").total_seconds())}
        if mode == "until_local_time":
            value = config["until_local_time"]
            if not isinstance(value, str) or not _TIME.match(value):
                raise ValidationError({"until_local_time": "must be HH:MM (24-hour), e.g. 09:00"})
            return {"until_local_time": value}
        offset = config.get("offset") or "0"
        negative = isinstance(offset, str) and offset.strip().startswith("-")
        seconds = parse_duration(offset.strip().lstrip("-") if isinstance(offset, str) else offset, field="offset")
        return {"until_attribute": str(config["until_attribute"]), "offset": int(seconds.total_seconds()) * (-1 if negative else 1)}

    def execute(self, ctx):
        config = ctx.config
        if "duration" in config:
            until = add_wait(ctx.now, ctx.zone(), seconds=config["duration"])
        elif "until_local_time" in config:
            until = add_local(ctx.now, ctx.zone(), at=config["until_local_time"])
        else:
            raw = ctx.profile.get(config["until_attribute"])
            moment = _as_datetime(raw, ctx)
            if moment is None:
                return StepResult(outcome="next", error=f"profile.{config['until_attribute']} is not a date; not waiting")
            until = moment + timedelta(seconds=config["offset"])
        if until <= ctx.now:
            return StepResult(outcome="next", detail={"waited_until": until.isoformat()})
        return StepResult(wait_until=until, detail={"until": until.isoformat()})


def _as_datetime(raw, ctx) -> datetime | None:
    if isinstance(raw, datetime):
        return raw
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=ctx.zone())
    return None


@register
class WaitForEvent(StepKind):
    kind = "wait_for_event"
    label = "Wait for an event"
    help = "Waits until the customer sends the event (follows 'event') or the timeout passes ('timeout')."
    fields = {"event": "event name, e.g. Order Completed", "filter": "optional rule over event.*", "timeout": "e.g. 24h"}
    form = forms.WaitForEventForm
    palette = Palette(group="Flow", colour="#f3e5f5", order=23)

    def outcomes(self, config):
        return ["event", "timeout"]

    def summary(self, config):
        timeout = config.get("timeout")
        return f"{config.get('event') or '?'}" + (f", up to {duration_text(timeout)}" if timeout else "")

    def clean(self, config):
        event = require(config, "event", str, "an event name")
        timeout = check_duration(config, "timeout")
        return {"event": event, "filter": check_rule(config, "filter", required=False), "timeout": int(timeout.total_seconds())}

    def rules(self, config):
        return [config["filter"]] if config.get("filter") else []

    def execute(self, ctx):
        from journeys.engine.waits import wait_begun

        until = add_wait(ctx.now, ctx.zone(), seconds=ctx.config["timeout"])
        since = min(ctx.since or ctx.now, ctx.now)  # the wait's span, in the customer's own time
        span = {"since": since.isoformat(), "until": until.isoformat()}
        answer = wait_begun(ctx, since=since, until=until)  # an answer stored before it began (waits.py)
        if answer is not None:
            return StepResult(outcome="event", event=answer, detail={**span, "answered_by": answer.pk})
        return StepResult(wait_until=until, wait_event=ctx.config["event"], detail=span)


@register
class UpdateProfile(StepKind):
    kind = "update_profile"
    label = "Update profile"
    help = ("Sets profile traits and journey variables. Values are literals, or rules when written as "
            "{\"rule\": \"...\"}, also inside an object or a list ({\"address\": {\"city\": {\"rule\": "
            "\"event.properties.city\"}}}). null sets the trait to null, as an identify does (rules read it as "
            "a missing value; messages render it empty). A rule that fails (a type error) leaves its trait or "
            "variable as it was; the error is recorded on the step and the run goes on.")
    side_effects = True
    batch_safe = True  # in an engine batch the profiles are written at its flush (ProfileBatch)
    fields = {"traits": '{"stage": "onboarding"}', "variables": '{"discount": 10}'}
    form = forms.UpdateProfileForm
    palette = PROFILE

    def summary(self, config):
        names = [*(config.get("traits") or {}), *(f"journey.{n}" for n in config.get("variables") or {})]
        return "sets " + ", ".join(names) if names else ""

    def clean(self, config):
        cleaned = {}
        for key in ("traits", "variables"):
            value = config.get(key) or {}
            if not isinstance(value, dict):
                raise ValidationError({key: "must be an object of name -> value"})
            for name, item in value.items():
                try:
                    _with_rules(item, _rule_checked, name)
                except ValidationError as exc:
                    raise ValidationError({key: exc.messages[0]}) from None
            cleaned[key] = value
        if not cleaned["traits"] and not cleaned["variables"]:
            raise ValidationError({"traits": "set at least one trait or variable"})
        return cleaned

    def _values(self, ctx, mapping, key: str, skipped: dict) -> dict:
        """The values to set; one whose rule fails is left out (in `skipped`, and recorded on the
        step as a condition's rule error is)."""
        def evaluated(where: str, text: str):
            try:
                return _jsonable(compile_rule(text).value(ctx.rule_context()))
            except RuleEvaluationError as exc:
                raise _RuleFailed(where, text, exc.error) from None

        out = {}
        for name, item in mapping.items():
            try:
                out[name] = _with_rules(item, evaluated, f"{key}.{name}")
            except _RuleFailed as exc:
                skipped[exc.where] = exc.error
                ctx.notes.setdefault("rule_errors", []).append(f"{exc.where}: {exc.text}: {exc.error}")
        return out

    def execute(self, ctx):
        from journeys.engine.runtime import profile_dict
        from journeys.services.profiles import ProfileBatch, customer_update_traits

        batch = None if ctx.dry_run else ProfileBatch.current()
        if ctx.config["traits"] and not ctx.dry_run:
            # Rules may read the traits they change (a counter: coalesce(profile.n, 0) + 1): lock
            # the profile row and read it fresh, or a concurrent worker's update would be lost.
            if batch is not None:
                batch.lock(ctx.customer)
            else:
                from journeys.models import Customer

                ctx.customer.traits = Customer.objects.select_for_update().get(pk=ctx.customer.pk).traits
            ctx.profile.update(profile_dict(ctx.customer, ctx.now))
        skipped: dict = {}
        traits = self._values(ctx, ctx.config["traits"], "traits", skipped)
        variables = self._values(ctx, ctx.config["variables"], "journey", skipped)
        ctx.run.variables = {**ctx.run.variables, **variables}
        ctx.profile.update(traits)
        if traits and not ctx.dry_run:
            reason = f"workflow step {ctx.step_key}"
            if batch is not None:
                batch.update(customer=ctx.customer, traits=traits, reason=reason)
            else:
                customer_update_traits(customer=ctx.customer, traits=traits, reason=reason)
        detail = {"traits": traits, "variables": variables}
        return StepResult(outcome="next", detail={**detail, "skipped": skipped} if skipped else detail)


def _is_rule(item) -> bool:
    return isinstance(item, dict) and "rule" in item


def _with_rules(item, on_rule, where: str, depth: int = 0):
    """`item` with every {"rule": ...} in it, in objects and lists at any depth, replaced by
    on_rule(path, rule), the path naming where it sits (e.g. address.city)."""
    if _is_rule(item):
        return on_rule(where, item["rule"])
    if depth >= MAX_DEPTH or not isinstance(item, dict | list):
        return item
    if isinstance(item, dict):
        return {k: _with_rules(v, on_rule, f"{where}.{k}", depth + 1) for k, v in item.items()}
    return [_with_rules(v, on_rule, f"{where}[{i}]", depth + 1) for i, v in enumerate(item)]


def _rule_checked(where: str, text) -> None:
    if not isinstance(text, str):
        raise ValidationError(f'{where}: a rule is written as text, e.g. {{"rule": "coalesce(profile.orders, 0) + 1"}}')
    if problems := validate_rule(text):
        raise ValidationError(f"{where}: rule error: {problems[0]}")


class _RuleFailed(Exception):
    def __init__(self, where: str, text: str, error: str) -> None:
        super().__init__(error)
        self.where, self.text, self.error = where, text, error


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@register
class Goal(StepKind):
    kind = "goal"
    label = "Goal (conversion)"
    help = "Counts a conversion for this run and continues."
    fields = {"name": "what was achieved, e.g. purchased"}
    form = forms.GoalForm
    palette = Palette(group="End", colour="#e8f5e9", order=60)

    def summary(self, config):
        return config.get("name") or ""

    def clean(self, config):
        return {"name": str(config.get("name") or "goal")}

    def execute(self, ctx):
        if ctx.run.converted_at is None:
            ctx.run.converted_at = ctx.now
        return StepResult(outcome="next", detail={"goal": ctx.config["name"]})


@register
class Exit(StepKind):
    kind = "exit"
    label = "Exit"
    help = "Ends the run."
    fields = {"reason": "shown in the run log"}
    form = forms.ExitForm
    palette = Palette(group="End", colour="#eceff1", order=61)

    def summary(self, config):
        return config.get("reason") or ""

    def outcomes(self, config):
        return []

    def clean(self, config):
        return {"reason": str(config.get("reason") or "")}

    def execute(self, ctx):
        return StepResult(end_status="exited", detail={"reason": ctx.config["reason"]})
