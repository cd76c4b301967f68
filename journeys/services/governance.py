"""Governance: roles, the audit log, diffs between versions, dry-run replays for review,
outage switches (safe mode, channel and workflow pauses) and the scheduled audit.

Lifecycle operations (propose, approve, publish, canary, rollback) live in
`journeys.services.workflows`; they use the permission check and audit log from here.

One module (about 800 lines) because the lifecycle and the admin use it as one surface
(`gov.`): the permission check, history stamp and audit record every governed change shares.
Its sections (roles, audit log, diffs, replay, outage switches, the scheduled audit) depend on
that core and not on each other; they are where it splits when one of them grows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import assign_perm

from journeys.choices import (  # noqa: F401 (the role names are read as gov.ROLE_*)
    ROLE_AGENTS,
    ROLE_ANALYSTS,
    ROLE_APPROVERS,
    ROLE_EDITORS,
    ROLE_OPS,
    ROLES,
    TriggerKind,
    VersionState,
    WorkflowStatus,
)
from journeys.engine.compiled import bump_generation, compile_version
from journeys.engine.registry import get_kind
from journeys.errors import PermissionDenied
from journeys.models import (
    AuditEntry,
    AuditReport,
    BusinessUnit,
    ChangeRequest,
    Event,
    JourneyRun,
    OperationsSwitch,
    StepExecution,
    SwitchScope,
    Workflow,
    WorkflowVersion,
)
from journeys.selectors import (
    UNIT_PERM,
    VIEW,
    runs_for_user,
    scope_forget,
    user_can,
    user_has_workflows,
)
from journeys.services.definitions import VERSION_FIELDS, version_definition

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- permissions, audit log


def require(actor: Any, action: str, workflow: Workflow) -> None:
    """Raise PermissionDenied unless `actor` may do `action` on `workflow`. actor=None is the system."""
    if actor is None:
        return
    if not user_can(actor, action, workflow):
        raise PermissionDenied(f"{actor} may not {action} workflow {workflow.name!r}", code="permission_denied")


def require_model_perm(actor: Any, codename: str, what: str) -> None:
    """A person needs the journeys model permission `codename` to `what`; the system (no
    actor) may always act."""
    if actor is not None and not actor.has_perm(f"journeys.{codename}"):
        raise PermissionDenied(f"{actor} may not {what}")


def require_reason(actor: Any, reason: str, what: str = "reason") -> str:
    """People must say why they change configuration; the system may stay silent."""
    reason = (reason or "").strip()
    if actor is not None and not reason:
        raise ValidationError({what: "a reason is required for every change made by a person"})
    return reason


def history_stamp(obj: Any, *, actor: Any, reason: str) -> Any:
    """Put who and why on a configuration object about to be saved or deleted: simple-history
    writes both on the history row (`history_user`, `history_change_reason`)."""
    obj._change_reason = reason
    if actor is not None and getattr(actor, "pk", None):
        obj._history_user = actor
    return obj


def audit_record(
    *,
    action: str,
    actor: Any = None,
    workflow: Workflow | None = None,
    version: WorkflowVersion | None = None,
    change_request: ChangeRequest | None = None,
    reason: str = "",
    data: dict | None = None,
) -> AuditEntry:
    """One row in the audit log; call it inside the transaction of the change it records."""
    return AuditEntry.objects.create(
        action=action, actor=actor if actor is not None and actor.pk else None,
        workflow=workflow or (version.workflow if version is not None else None),
        version=version, change_request=change_request, reason=reason or "", data=data or {},
    )


# --------------------------------------------------------------------------- runs


def runs_visible_to(*, user: Any) -> QuerySet[JourneyRun]:
    """The runs (with their step executions) a user may watch: those of the workflows they may view.
    Business-unit editors see the runs of their unit's workflows and no other unit's."""
    return runs_for_user(user)


def run_user_can_view(*, user: Any, run: JourneyRun | None = None) -> bool:
    """Whether the user may open this run (run=None: whether they may see any run at all)."""
    if run is None:
        return user_has_workflows(user, VIEW)
    return user_can(user, VIEW, run.workflow)


# --------------------------------------------------------------------------- roles

CONFIG_APPS = ("journeys", "channels_app", "agents", "experiments")


def _perms(q: Q) -> list[Permission]:
    return list(Permission.objects.filter(q).select_related("content_type"))


# Configuration everyone who builds or reviews a step needs to read (no personal data: consent records,
# deliveries, data subjects and erasures stay with ops). Experiments are scoped per unit for editors by
# `experiments.services.experiments.experiment_user_can`, so they are not in this global list.
CHANNEL_CONFIG_MODELS = ("channel", "messagetemplate", "templatevariant", "contentblock", "topic", "frequencycap")
EXPERIMENT_CONFIG_MODELS = ("experiment", "arm")
Q2_OPS_PERMS = ("view_schedule", "view_task", "view_success", "view_failure", "view_ormq",
                "delete_success", "delete_failure")


def _view(app_label: str, models: tuple[str, ...]) -> Q:
    return Q(content_type__app_label=app_label, codename__in=[f"view_{m}" for m in models])


def _role_permissions() -> dict[str, list[Permission]]:
    app = lambda label: Q(content_type__app_label=label)  # noqa: E731
    view = Q(codename__startswith="view_")
    channel_config = _view("channels_app", CHANNEL_CONFIG_MODELS)
    journeys_config_view = app("journeys") & Q(codename__in=[
        "view_workflow", "view_workflowversion", "view_step", "view_edge", "view_businessunit",
        "view_journeyrun", "view_stepexecution", "view_changerequest", "view_auditentry", "view_auditreport",
        "view_ops_dashboard", "view_operationsswitch",
    ])
    return {
        # Ops may see who is who, and grant roles only through journeys.manage_roles (user_roles_set,
        # business_unit_grant_editor): never a raw auth permission, with which a group edit makes a superuser.
        # The task queue they may watch and clean up, not write: a q2 schedule or task names any Python
        # callable with any arguments (os.system), which the workers run.
        ROLE_OPS: _perms(Q(content_type__app_label__in=CONFIG_APPS) | Q(content_type__app_label="django_q")
                         & Q(codename__in=Q2_OPS_PERMS)
                         | (app("auth") & Q(codename__in=["view_user", "view_group"]))),
        # Editors get their reach per unit through guardian (business_unit_grant_editor); globally they
        # only read the channel configuration they need to fill in a step.
        ROLE_EDITORS: _perms(channel_config),
        ROLE_APPROVERS: _perms(
            journeys_config_view
            | (app("journeys") & Q(codename__in=["review_workflow", "publish_workflow", "change_changerequest"]))
            | channel_config | _view("experiments", EXPERIMENT_CONFIG_MODELS)
        ),
        # Cases only, and only their own: routing grants each agent object permissions on the cases
        # assigned to them and on their team's queue (agents.services.permissions). A model-wide case
        # permission here would make every agent a supervisor who sees and works every case.
        ROLE_AGENTS: [],
        ROLE_ANALYSTS: _perms(
            (app("journeys") & Q(codename__in=[
                "view_workflow", "view_workflowversion", "view_step", "view_edge", "view_journeyrun",
                "view_stepexecution", "view_auditreport", "view_ops_dashboard",
            ]))
            | (app("experiments") & view)
        ),
    }


@transaction.atomic
def roles_setup() -> dict[str, int]:
    """Create the role groups and (re)set their model permissions. Idempotent; run after migrations
    of new apps so that their permissions join the roles (`manage.py setup_roles`)."""
    counts = {}
    for name, perms in _role_permissions().items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(perms)
        counts[name] = len(perms)
    return counts


def roles_can_manage(*, user: Any) -> bool:
    """Who may grant and revoke roles: superusers and holders of journeys.manage_roles (ops)."""
    return bool(user.is_active and (user.is_superuser or user.has_perm("journeys.manage_roles")))


UNIT_CODENAME = UNIT_PERM.split(".", 1)[1]


def _editors_group_name(unit: BusinessUnit) -> str:
    """"Editors: <slug>", for people reading group lists; the rights never depend on it."""
    name = f"Editors: {unit.slug}"
    if Group.objects.filter(name=name).exclude(editing_unit__pk=unit.pk).exists():  # a group left by hand
        name = f"Editors: {unit.slug} (unit {unit.pk})"
    return name


def _unit_group(unit: BusinessUnit, *, create: bool) -> Group | None:
    """The group of the unit's editors, found through the unit's key (`BusinessUnit.editors_group`),
    never by a name made from the slug, which a rename changes and another unit may take later.
    Made at the first grant, under the unit's row lock (two first grants at once make one group)."""
    locked = BusinessUnit.objects.select_for_update(of=("self",)).select_related("editors_group").get(pk=unit.pk)
    if locked.editors_group is not None or not create:
        return locked.editors_group
    group = Group.objects.create(name=_editors_group_name(locked))
    assign_perm(UNIT_PERM, group, locked)
    BusinessUnit.objects.filter(pk=locked.pk).update(editors_group=group)
    unit.editors_group = group
    return group


@transaction.atomic
def business_unit_save(*, unit: BusinessUnit, actor: Any = None, reason: str = "") -> BusinessUnit:
    """Save a unit's name and slug as edited on its admin page. Its editors keep their rights
    whatever the slug becomes (the group is the unit's by key); the group's name follows the slug,
    so that group lists read right and the old slug is free for a new unit."""
    reason = require_reason(actor, reason) or "saved"
    history_stamp(unit, actor=actor, reason=reason).save()
    if unit.editors_group_id is not None:
        Group.objects.filter(pk=unit.editors_group_id).update(name=_editors_group_name(unit))
    audit_record(action="business_unit_saved", actor=actor, reason=reason, data={"unit": unit.slug})
    return unit


@transaction.atomic
def business_unit_delete(*, unit: BusinessUnit, actor: Any = None, reason: str = "") -> None:
    """Delete a unit (one that owns no workflow) and its editors group: the group's permission
    names the unit's id, which must not reach a unit made later under the same id."""
    reason = require_reason(actor, reason) or "deleted"
    group_id = unit.editors_group_id
    history_stamp(unit, actor=actor, reason=reason).delete()
    if group_id is not None:
        Group.objects.filter(pk=group_id).delete()
    audit_record(action="business_unit_deleted", actor=actor, reason=reason, data={"unit": unit.slug})


@transaction.atomic
def business_unit_grant_editor(*, unit: BusinessUnit, user: Any, actor: Any = None, reason: str = "") -> None:
    """Make `user` an editor of `unit`'s workflows: the Business-unit editors role and the unit's
    editors group (which holds the guardian object permission on the unit)."""
    if actor is not None and not roles_can_manage(user=actor):
        raise PermissionDenied(f"{actor} may not grant roles")
    reason = require_reason(actor, reason)
    roles_group, _ = Group.objects.get_or_create(name=ROLE_EDITORS)
    user.groups.add(roles_group, _unit_group(unit, create=True))
    scope_forget(user)
    audit_record(action="role_granted", actor=actor, reason=reason,
                 data={"user": user.get_username(), "role": "editor", "unit": unit.slug})


def business_unit_editors(*, unit: BusinessUnit) -> list:
    """The users who may edit this unit's workflows through the unit (not the global editors):
    holders of its permission (through its group or given directly) who hold the role."""
    from django.contrib.auth import get_user_model
    from guardian.shortcuts import get_users_with_perms

    users = get_users_with_perms(unit, only_with_perms_in=[UNIT_CODENAME], with_group_users=True,
                                 with_superusers=False)
    return list(get_user_model().objects.filter(pk__in=[u.pk for u in users], groups__name=ROLE_EDITORS)
                .order_by("username"))


def business_units_granted(*, user: Any) -> list[BusinessUnit]:
    """The units whose editors group the user is in, or whose permission was given to them directly
    (what the Roles page shows beside the Business-unit editors role)."""
    from guardian.shortcuts import get_objects_for_user

    direct = get_objects_for_user(user, UNIT_PERM, BusinessUnit, use_groups=False, with_superuser=False,
                                  accept_global_perms=False)
    return list(BusinessUnit.objects.filter(Q(editors_group__user=user) | Q(pk__in=direct.values("pk")))
                .distinct().order_by("name"))


def _unit_revoke(unit: BusinessUnit, user: Any) -> bool:
    """Take the user out of the unit's editors group and drop a permission on the unit given to
    them directly; whether there was anything to take away."""
    from guardian.utils import get_user_obj_perms_model

    group = _unit_group(unit, create=False)
    in_group = group is not None and user.groups.filter(pk=group.pk).exists()
    if in_group:
        user.groups.remove(group)
    direct, _ = get_user_obj_perms_model(unit).objects.remove_perm(UNIT_CODENAME, user, unit)
    scope_forget(user)
    return in_group or bool(direct)


@transaction.atomic
def business_unit_revoke_editor(*, unit: BusinessUnit, user: Any, actor: Any = None, reason: str = "") -> None:
    """Stop `user` editing `unit`'s workflows. Refused, nothing changed, when they were no editor
    of it, or would still be one through another group (made by hand on Django's group page, which
    only a superuser changes): the editors page never says "revoked" when nothing was."""
    from guardian.shortcuts import get_groups_with_perms

    if actor is not None and not roles_can_manage(user=actor):
        raise PermissionDenied(f"{actor} may not revoke roles")
    reason = require_reason(actor, reason)
    if not _unit_revoke(unit, user):
        raise ValidationError(f"{user} is not an editor of {unit}: nothing was revoked")
    held = get_groups_with_perms(unit, attach_perms=True)
    still = sorted(g.name for g, perms in held.items() if UNIT_CODENAME in perms and user.groups.filter(pk=g.pk).exists())
    if still:
        raise ValidationError(f"{user} also edits {unit} through the group {', '.join(still)}, which only a "
                              "superuser changes (on Django's group page): nothing was revoked")
    audit_record(action="role_revoked", actor=actor, reason=reason,
                 data={"user": user.get_username(), "role": "editor", "unit": unit.slug})


@transaction.atomic
def business_unit_grants_revoke_all(*, user: Any, actor: Any = None, reason: str = "") -> list[BusinessUnit]:
    """Every unit grant of the user, taken away with the Business-unit editors role (`user_roles_set`):
    the units they edited, each recorded in the audit log."""
    units = business_units_granted(user=user)
    for unit in units:
        _unit_revoke(unit, user)
        audit_record(action="role_revoked", actor=actor, reason=reason,
                     data={"user": user.get_username(), "role": "editor", "unit": unit.slug,
                           "with_role": ROLE_EDITORS})
    return units


# --------------------------------------------------------------------------- diffs

_UNREVIEWED_FIELDS = ("notes",)


def version_fingerprint(*, version: WorkflowVersion) -> str:
    """Hash of what a version does (not of its notes or drawing positions): approval is bound to it."""
    definition = version_definition(version=version)
    for name in _UNREVIEWED_FIELDS:
        definition.pop(name, None)
    definition["steps"] = sorted(
        ({k: v for k, v in s.items() if k not in ("x", "y")} for s in definition["steps"]), key=lambda s: s["key"]
    )
    definition["edges"] = sorted(definition["edges"], key=lambda e: (e["from"], e["outcome"], e["to"]))
    blob = json.dumps(definition, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _rules_of(definition: dict) -> dict[str, str]:
    rules = {}
    for name in ("entry_rule", "goal_filter"):
        if definition.get(name):
            rules[name.replace("_", " ")] = definition[name]
    trigger_config = definition.get("trigger_config")
    for name in ("filter", "rule", "segment"):
        if isinstance(trigger_config, dict) and isinstance(trigger_config.get(name), str) and trigger_config[name]:
            rules[f"trigger {name}"] = trigger_config[name]
    for step in definition["steps"]:
        try:
            texts = get_kind(step["kind"]).rules(step["config"])
        except Exception:  # an invalid step is reported by validation, not here
            texts = []
        for i, text in enumerate(texts):
            rules[f"step {step['key']} rule {i + 1}" if len(texts) > 1 else f"step {step['key']}"] = text
    return rules


def _templates_of(definition: dict) -> set[str]:
    return {str(s["config"]["template"]) for s in definition["steps"] if isinstance(s.get("config"), dict)
            and s["config"].get("template")}


def version_diff(*, old: WorkflowVersion | None, new: WorkflowVersion) -> dict:
    """A readable difference between two versions: trigger and settings, steps, edges, rules, templates.

    `old=None` compares against an empty workflow (everything is added).
    """
    empty = {**{f: "" for f in VERSION_FIELDS}, "trigger_config": {}, "steps": [], "edges": []}
    a = version_definition(version=old) if old is not None else empty
    b = version_definition(version=new)
    settings_changed = []
    for name in VERSION_FIELDS:
        if name == "trigger_config":
            fa, fb = _flatten(a.get(name) or {}), _flatten(b.get(name) or {})
            for key in sorted(set(fa) | set(fb)):
                if fa.get(key) != fb.get(key):
                    settings_changed.append({"field": f"trigger_config.{key}", "old": fa.get(key), "new": fb.get(key)})
        elif a.get(name) != b.get(name):
            settings_changed.append({"field": name, "old": a.get(name), "new": b.get(name)})
    steps_a, steps_b = {s["key"]: s for s in a["steps"]}, {s["key"]: s for s in b["steps"]}
    added = [steps_b[k] for k in steps_b if k not in steps_a]
    removed = [steps_a[k] for k in steps_a if k not in steps_b]
    changed = []
    for key in steps_a.keys() & steps_b.keys():
        sa, sb = steps_a[key], steps_b[key]
        lines = [{"field": f, "old": sa[f], "new": sb[f]} for f in ("kind", "name") if sa[f] != sb[f]]
        ca, cb = _flatten(sa["config"] or {}), _flatten(sb["config"] or {})
        lines += [{"field": f"config.{k}", "old": ca.get(k), "new": cb.get(k)}
                  for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
        if lines:
            changed.append({"key": key, "kind": sb["kind"], "changes": lines})
    changed.sort(key=lambda c: c["key"])
    edge = lambda e: (e["from"], e["outcome"], e["to"])  # noqa: E731
    edges_a, edges_b = {edge(e) for e in a["edges"]}, {edge(e) for e in b["edges"]}
    rules_a, rules_b = _rules_of(a), _rules_of(b)
    rules = [{"where": w, "old": rules_a.get(w, ""), "new": rules_b.get(w, "")}
             for w in sorted(set(rules_a) | set(rules_b)) if rules_a.get(w) != rules_b.get(w)]
    templates_a, templates_b = _templates_of(a), _templates_of(b)
    diff = {
        "old": {"id": old.pk, "number": old.number} if old is not None else None,
        "new": {"id": new.pk, "number": new.number},
        "settings": settings_changed,
        "steps_added": added,
        "steps_removed": removed,
        "steps_changed": changed,
        "edges_added": [dict(zip(("from", "outcome", "to"), e)) for e in sorted(edges_b - edges_a)],
        "edges_removed": [dict(zip(("from", "outcome", "to"), e)) for e in sorted(edges_a - edges_b)],
        "rules": rules,
        "templates_added": sorted(templates_b - templates_a),
        "templates_removed": sorted(templates_a - templates_b),
    }
    diff["empty"] = not any(v for k, v in diff.items() if k not in ("old", "new"))
    return diff


# --------------------------------------------------------------------------- dry-run replay


def _replay_one(compiled, customer, event: Event, now: datetime) -> dict:
    from journeys.engine.runner import rule_true
    from journeys.engine.runtime import context_dict, event_dict, events_counter, profile_dict
    from journeys.rules import RuleContext
    from journeys.services.dry_run import version_dry_run

    payload = {"event": event.name, "type": event.type, "properties": event.properties or {},
               "context": event.context or {}, "traits": event.traits or {}}
    ctx = RuleContext(event=event_dict({**payload, "name": event.name}), profile=profile_dict(customer, now),
                      context=context_dict(payload, now), journey={}, now=now,
                      events_in_last=events_counter(customer.pk))
    ok, error = rule_true(compiled.entry_rule, ctx)
    if not ok:
        return {"entered": False, "reason": f"entry rule is false{f' ({error})' if error else ''}", "path": [],
                "actions": [], "end": ""}
    # Re-entry limits are left out on purpose: the customers replayed may already be in the live journey.
    return version_dry_run(version=compiled, customer=customer, event=payload, now=now, check_entry=False).as_dict()


def _replay_events(versions: list[WorkflowVersion], since: datetime, limit: int):
    names, profile_changes = set(), False
    for version in versions:
        if version.trigger_kind in (TriggerKind.EVENT, TriggerKind.INACTIVITY):
            names.add(version.trigger_event)
        elif version.trigger_kind in (TriggerKind.ATTRIBUTE_CHANGE, TriggerKind.SEGMENT_ENTRY):
            profile_changes = True
    query = Q(name__in=names)
    if profile_changes:
        query |= Q(type="identify")
    return list(
        Event.objects.filter(query, timestamp__gte=since, customer__isnull=False)
        .select_related("customer").order_by("-timestamp", "-id")[:limit]
    )


def version_replay(
    *, proposed: WorkflowVersion, baseline: WorkflowVersion | None, days: int = 7, limit: int = 200,
    now: datetime | None = None, on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Replay recent real events of matching customers through the proposed version and the live one.

    Uses the dry-run walker (no rows written, nothing sent): which steps each customer would reach
    and which messages would go out, side by side, and a summary of where the two differ.
    `on_progress(done, total)` is called every 25 events (background jobs show a progress bar).
    """
    now = now or timezone.now()
    compiled_new = compile_version(proposed)
    compiled_old = compile_version(baseline) if baseline is not None else None
    events = _replay_events([v for v in (proposed, baseline) if v is not None], now - timedelta(days=days), limit)
    rows = []
    reach = {"proposed": Counter(), "live": Counter()}
    messages = {"proposed": Counter(), "live": Counter()}
    entered = Counter()
    for index, event in enumerate(events):
        if on_progress is not None and index and index % 25 == 0:
            on_progress(index, len(events))
        customer = event.customer
        if customer.merged_into_id:
            continue
        row = {"event_id": event.pk, "event": event.name, "at": event.timestamp.isoformat(),
               "customer": customer.external_id or f"#{customer.pk}"}
        for label, compiled in (("proposed", compiled_new), ("live", compiled_old)):
            if compiled is None:
                row[label] = None
                continue
            result = _replay_one(compiled, customer, event, now)
            row[label] = {
                "entered": result["entered"], "reason": result.get("reason", ""),
                "steps": [p["step"] for p in result["path"]], "end": result["end"],
                "messages": [a.get("would_send") or a.get("kind") for a in result["actions"]
                             if a.get("kind") != "update_profile"],
                "actions": result["actions"],
            }
            if result["entered"]:
                entered[label] += 1
            reach[label].update(set(row[label]["steps"]))
            messages[label].update(row[label]["messages"])
        simple = lambda r: r and (r["entered"], r["steps"], r["messages"])  # noqa: E731
        row["differs"] = simple(row["proposed"]) != simple(row["live"])
        rows.append(row)
    if on_progress is not None:
        on_progress(len(events), len(events))
    return {
        "generated_at": now.isoformat(),
        "days": days,
        "events": len(rows),
        "customers": len({r["customer"] for r in rows}),
        "baseline": {"id": baseline.pk, "number": baseline.number} if baseline is not None else None,
        "proposed": {"id": proposed.pk, "number": proposed.number},
        "entered": dict(entered),
        "reach": {k: dict(sorted(v.items())) for k, v in reach.items()},
        "messages": {k: dict(sorted(v.items())) for k, v in messages.items()},
        "differs": sum(1 for r in rows if r["differs"]),
        "rows": rows,
    }


# --------------------------------------------------------------------------- unknown attributes

PROFILE_BUILTINS = {"user_id", "email", "phone", "timezone", "locale", "first_seen", "last_seen",
                    "last_engaged_at", "tenure_days", "days_since_last_seen", "ltv"}
JOURNEY_BUILTINS = {"holdout", "experiment", "experiment_arm"}


def _known_attributes(version: WorkflowVersion, sample: int = 500) -> dict[str, set[str]]:
    known = {"profile": set(PROFILE_BUILTINS), "journey": set(JOURNEY_BUILTINS), "event": set()}
    from journeys.models import Customer

    for traits in Customer.objects.order_by("-id").values_list("traits", flat=True)[:sample]:
        known["profile"].update((traits or {}).keys())
    names = {n for n in (version.trigger_event, version.goal_event, version.trigger_settings.get("followed_by"))
             if n}
    for step in version.steps.all():
        config = step.config or {}
        if step.kind == "wait_for_event" and config.get("event"):
            names.add(config["event"])
        for key in ("traits",):
            known["profile"].update((config.get(key) or {}).keys())
        known["journey"].update((config.get("variables") or {}).keys())
    for props in Event.objects.filter(name__in=names).order_by("-id").values_list("properties", flat=True)[:sample]:
        known["event"].update((props or {}).keys())
    known["event_names"] = names
    return known


def unknown_attribute_warnings(*, version: WorkflowVersion) -> list[str]:
    """Rules that read profile/event/journey attributes nobody has: likely typos (warnings, not errors)."""
    from journeys.rules import RuleSyntaxError, compile_rule
    from journeys.services.catalog import catalog_property_known

    known = _known_attributes(version)
    warnings = []
    catalog_events = [e for e in (version.trigger_event, version.goal_event) if e]
    for where, text in _rules_of(version_definition(version=version)).items():
        try:
            references = compile_rule(text).references
        except RuleSyntaxError:
            continue  # reported as an error elsewhere
        for ref in sorted(references):
            parts = ref.replace("[", ".").split(".")
            root = parts[0]
            if root == "profile" and len(parts) > 1 and parts[1] not in known["profile"]:
                warnings.append(f"{where}: {ref} is not an attribute of any customer (unknown attribute)")
            elif root == "journey" and len(parts) > 1 and parts[1] not in known["journey"]:
                warnings.append(f"{where}: {ref} is not set by any step (unknown attribute)")
            elif root == "event" and len(parts) > 2 and parts[1] == "properties" and any(
                catalog_property_known(event_name=name, path=parts[2]) is False for name in catalog_events
            ) and not any(catalog_property_known(event_name=name, path=parts[2]) for name in catalog_events):
                warnings.append(f"{where}: {ref} is not in the event catalog's schema for "
                                f"{', '.join(catalog_events)} (it never arrives)")
            elif (root == "event" and len(parts) > 2 and parts[1] == "properties" and known["event_names"]
                  and parts[2] not in known["event"]):
                warnings.append(f"{where}: {ref} was not seen in recent events (unknown attribute)")
    return warnings


# --------------------------------------------------------------------------- outage switches

# Callables `(scope: str, key: str) -> None` run after a hold is lifted (on commit): scope "global"
# (safe mode off) or "workflow" (key = workflow id). The channels app registers the one that releases
# its held deliveries, oldest first, through its normal send path (quiet hours and caps apply again).
HOLD_RELEASE_HOOKS: list[Callable[..., Any]] = []


def outbound_hold(*, workflow_id: int | None = None, run_id: int | None = None) -> str:
    """Why an outgoing message must be held now ('' = send it). The channels app asks this at send
    time, next to its own per-channel pause, and keeps a held message deferred (never dropped)."""
    if OperationsSwitch.objects.filter(scope=SwitchScope.GLOBAL, active=True).exists():
        return "safe mode"
    if workflow_id is None and run_id is not None:
        workflow_id = JourneyRun.objects.filter(pk=run_id).values_list("workflow_id", flat=True).first()
    if workflow_id and Workflow.objects.filter(pk=workflow_id, status=WorkflowStatus.PAUSED).exists():
        return "workflow paused"
    return ""


def outbound_holds(*, run_ids: Iterable[int | None]) -> Callable[[int | None], str]:
    """outbound_hold for a batch of messages with two queries: returns `hold(run_id)` ->
    why that run's message must be held now ('' = send it).

    On PostgreSQL the switch and paused workflow rows that hold a message are locked FOR SHARE
    until the caller's transaction ends (the dispatcher's claim): lifting the hold (an UPDATE of
    those rows) waits for the claim, so the release that follows its commit sees what the claim held."""
    ids = sorted({pk for pk in run_ids if pk is not None})
    if connection.vendor != "postgresql":
        if OperationsSwitch.objects.filter(scope=SwitchScope.GLOBAL, active=True).exists():
            return lambda run_id: "safe mode"
        paused = set(JourneyRun.objects.filter(pk__in=ids, workflow__status=WorkflowStatus.PAUSED)
                     .values_list("pk", flat=True)) if ids else set()
        return lambda run_id: "workflow paused" if run_id in paused else ""
    with connection.cursor() as cur:
        cur.execute(f"SELECT id FROM {OperationsSwitch._meta.db_table} WHERE scope = %s AND active FOR SHARE",
                    [SwitchScope.GLOBAL.value])
        if cur.fetchall():
            return lambda run_id: "safe mode"
        if not ids:
            return lambda run_id: ""
        cur.execute(f"SELECT r.id FROM {JourneyRun._meta.db_table} r JOIN {Workflow._meta.db_table} w ON w.id = r.workflow_id"
                    " WHERE r.id = ANY(%s) AND w.status = %s FOR SHARE OF w", [ids, WorkflowStatus.PAUSED.value])
        paused = {row[0] for row in cur.fetchall()}
    return lambda run_id: "workflow paused" if run_id in paused else ""


def safe_mode_active() -> bool:
    return OperationsSwitch.objects.filter(scope=SwitchScope.GLOBAL, active=True).exists()


def _require_operate(actor: Any) -> None:
    require_model_perm(actor, "operate_workflow", "switch pauses or safe mode")


def _release_on_commit(scope: str, key: str) -> None:
    def run() -> None:
        for hook in list(HOLD_RELEASE_HOOKS):
            try:
                hook(scope=scope, key=key)
            except Exception:  # one consumer failing must not keep the others held
                logger.exception("releasing held messages (%s %s) failed in %r", scope, key, hook)

    transaction.on_commit(run)


@transaction.atomic
def _switch_set(*, scope: str, key: str, active: bool, actor: Any, reason: str) -> OperationsSwitch:
    _require_operate(actor)
    reason = require_reason(actor, reason)
    switch = (OperationsSwitch.objects.select_for_update().filter(scope=scope, key=key).first()
              or OperationsSwitch(scope=scope, key=key))
    was = switch.active
    switch.active, switch.reason = active, reason
    switch.changed_by = actor if actor is not None else None
    switch._change_reason = reason or ("on" if active else "off")
    switch.save()
    audit_record(action=f"{scope}_{'on' if active else 'off'}", actor=actor, reason=reason,
                 data={"scope": scope, "key": key})
    if was and not active:
        _release_on_commit(str(scope), key)
    return switch


def safe_mode_set(*, active: bool, actor: Any = None, reason: str = "") -> OperationsSwitch:
    """Global safe mode: every outgoing message is held (kept queued); switching it off releases them."""
    return _switch_set(scope=SwitchScope.GLOBAL, key="", active=active, actor=actor, reason=reason)


@transaction.atomic
def workflow_pause_set(*, workflow: Workflow, paused: bool, actor: Any = None, reason: str = "") -> Workflow:
    """Pause a workflow: no new entries, and messages of its runs in flight are held until it resumes."""
    if actor is not None and not user_can(actor, "publish", workflow):
        _require_operate(actor)
    reason = require_reason(actor, reason)
    workflow = Workflow.objects.select_for_update().get(pk=workflow.pk)
    was_paused = workflow.status == WorkflowStatus.PAUSED
    workflow.status = WorkflowStatus.PAUSED if paused else WorkflowStatus.ACTIVE
    workflow._change_reason = reason or ("paused" if paused else "resumed")
    workflow.save(update_fields=["status", "updated_at"])
    audit_record(action="workflow_paused" if paused else "workflow_resumed", actor=actor, workflow=workflow,
                 reason=reason)
    bump_generation()
    if was_paused and not paused:
        _release_on_commit("workflow", str(workflow.pk))
    return workflow


# --------------------------------------------------------------------------- audits

# Callables `(since: datetime, now: datetime) -> dict[str, list[dict]]` adding sections to the audit
# (the channels app can add its own delivery-level channel health here).
AUDIT_SECTIONS: list[Callable[..., dict]] = []


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def _orphaned_paths(reached: set[tuple[int, str]], now: datetime, days: int) -> list[dict]:
    findings = []
    for version in WorkflowVersion.objects.filter(state=VersionState.LIVE).select_related("workflow"):
        live_for_days = (now - version.published_at).days if version.published_at else 0
        for step in version.steps.all():
            if (version.pk, step.key) not in reached:
                findings.append({"workflow": version.workflow.name, "version": version.number, "step": step.key,
                                 "kind": step.kind, "live_for_days": live_for_days,
                                 "note": f"no run reached this step in {days} days"})
    return findings


def _step_unchanged_since(version: WorkflowVersion, key: str) -> datetime | None:
    """When the step last changed: walk back through earlier published versions with the same step."""
    current = version.steps.filter(key=key).values_list("kind", "config").first()
    since = version.published_at
    earlier = (WorkflowVersion.objects.filter(workflow=version.workflow, number__lt=version.number,
                                              published_at__isnull=False).order_by("-number"))
    for older in earlier:
        if older.steps.filter(key=key).values_list("kind", "config").first() != current:
            break
        since = older.published_at
    return since


def _conversions(live: list[WorkflowVersion], since: datetime, previous_since: datetime) -> dict[int, tuple]:
    """workflow id -> (runs, converted) before `since` and after it, for the live workflows: one
    grouped statement over the runs of the two periods."""
    recent, before = Q(created_at__gte=since), Q(created_at__lt=since)
    converted = Q(converted_at__isnull=False)
    rows = (JourneyRun.objects.filter(workflow_id__in=[v.workflow_id for v in live], created_at__gte=previous_since)
            .values("workflow_id")
            .annotate(recent_n=Count("pk", filter=recent), recent_c=Count("pk", filter=recent & converted),
                      before_n=Count("pk", filter=before), before_c=Count("pk", filter=before & converted))
            .order_by())
    return {r["workflow_id"]: (r["recent_n"], r["recent_c"], r["before_n"], r["before_c"]) for r in rows}


def _stale_personalization(since: datetime, now: datetime, days: int, drop: float) -> list[dict]:
    findings = []
    live = list(WorkflowVersion.objects.filter(state=VersionState.LIVE).select_related("workflow"))
    conversions = _conversions(live, since, since - timedelta(days=days))
    for version in live:
        recent_n, recent_c, before_n, before_c = conversions.get(version.workflow_id, (0, 0, 0, 0))
        if not recent_n or not before_n or not before_c:
            continue
        recent_rate, before_rate = recent_c / recent_n, before_c / before_n
        if recent_rate > before_rate * (1 - drop):
            continue
        for step in version.steps.all():
            config = step.config or {}
            personalised = config.get("template") or get_kind(step.kind).rules(config) if step.kind != "exit" else None
            if not personalised:
                continue
            unchanged = _step_unchanged_since(version, step.key)
            if unchanged is None or unchanged > now - timedelta(days=days):
                continue
            findings.append({
                "workflow": version.workflow.name, "step": step.key, "kind": step.kind,
                "template": config.get("template", ""), "unchanged_days": (now - unchanged).days,
                "conversion_before": round(before_rate, 4), "conversion_now": round(recent_rate, 4),
                "runs_before": before_n, "runs_now": recent_n,
            })
    return findings


WAITING_KINDS = ("delay", "wait_for_event")  # their time is the wait, not the step's work


def _step_health(since: datetime) -> tuple[list[dict], list[dict], set[tuple[int, str]]]:
    """Executions, errors and latency per step and per channel of send_message over the window, and
    the (version, step) pairs some run reached."""
    window = StepExecution.objects.filter(started_at__gte=since)
    groups, reached = _window_steps_sql(since) if connection.vendor == "postgresql" else _window_steps(since)
    steps = []
    for ident, (n, errors, avg, p95) in sorted(groups.items()):
        steps.append({"workflow": ident[0], "step": ident[1], "kind": ident[2], "executions": n,
                      "errors": errors, "error_rate": round(errors / n, 4),
                      "latency_ms_avg": _ms(avg), "latency_ms_p95": _ms(p95)})
    sends = (window.filter(step_kind="send_message").values("detail__channel")
             .annotate(n=Count("pk"), errors=Count("pk", filter=Q(outcome="error") | Q(detail__status="failed")),
                       suppressed=Count("pk", filter=Q(detail__status="suppressed")))
             .order_by())
    channels: dict[str, Counter] = defaultdict(Counter)
    for r in sends:  # grouped by the JSON value: a channel written as false, 0 or null is "?"
        channel = r["detail__channel"]
        channels[str(channel) if channel else "?"].update(
            {"executions": r["n"], "errors": r["errors"], "suppressed": r["suppressed"]})
    channel_rows = [{"channel": name, "executions": c["executions"], "errors": c["errors"],
                     "suppressed": c["suppressed"], "error_rate": round(c["errors"] / c["executions"], 4)}
                    for name, c in sorted(channels.items())]
    return steps, channel_rows, reached


def _ms(value: float | None) -> float | None:
    """Milliseconds to one decimal; rounded to 6 places first, so that two ways of computing the
    same value (PostgreSQL's percentile_cont, Python's statistics) that differ in the last bits
    round alike (361.35 and 361.3499999999 are 361.4 both)."""
    return None if value is None else round(round(value, 6), 1)


Groups = dict[tuple[str, str, str], tuple[int, int, float | None, float | None]]


def _window_steps_sql(since: datetime) -> tuple[Groups, set[tuple[int, str]]]:
    """PostgreSQL, one pass over the window (BRIN on started_at): per (workflow, step, kind) the
    executions, errors, mean and 95th percentile of the finished ones' duration in ms (waits
    left out; `percentile_cont` interpolates as `statistics.quantiles(method="inclusive")`),
    and per (version, step) that it was reached. The runs are looked up by the window's distinct
    run ids (primary key), so the join reads the runs that moved in the window, not every run
    made since the oldest of them (a year-long journey would stretch that to most of the table)."""
    sql = f"""
        WITH w AS MATERIALIZED (
            SELECT s.run_id, s.step_key, s.step_kind, (s.outcome = 'error' OR s.error <> '') AS failed,
                   CASE WHEN s.finished_at IS NOT NULL AND s.step_kind <> ALL(%s)
                        THEN extract(epoch FROM s.finished_at - s.started_at)::float8 * 1000 END AS ms
            FROM {StepExecution._meta.db_table} AS s WHERE s.started_at >= %s)
        , r AS MATERIALIZED (
            SELECT id, version_id, workflow_id FROM {JourneyRun._meta.db_table}
            WHERE id = ANY(ARRAY(SELECT DISTINCT run_id FROM w)))
        SELECT GROUPING(r.version_id), wf.name, r.version_id, w.step_key, w.step_kind, count(*),
               count(*) FILTER (WHERE w.failed), avg(w.ms), percentile_cont(0.95) WITHIN GROUP (ORDER BY w.ms)
        FROM w JOIN r ON r.id = w.run_id
        JOIN {Workflow._meta.db_table} AS wf ON wf.id = r.workflow_id
        GROUP BY GROUPING SETS ((wf.name, w.step_key, w.step_kind), (r.version_id, w.step_key))"""
    groups: Groups = {}
    reached: set[tuple[int, str]] = set()
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(WAITING_KINDS), since])
        for by_step, name, version_id, key, kind, n, errors, avg, p95 in cursor.fetchall():
            if by_step:  # version_id is not a grouping column in this set
                groups[(name, key, kind)] = (n, errors, avg, p95)
            else:
                reached.add((version_id, key))
    return groups, reached


def _window_steps(since: datetime) -> tuple[Groups, set[tuple[int, str]]]:
    """The same in Python (SQLite is not the scale path)."""
    counts: Counter = Counter()
    errors: Counter = Counter()
    latency: dict[tuple, list[float]] = defaultdict(list)
    reached: set[tuple[int, str]] = set()
    rows = (StepExecution.objects.filter(started_at__gte=since)
            .values_list("run__workflow__name", "run__version_id", "step_key", "step_kind", "outcome", "error",
                         "started_at", "finished_at"))
    for name, version_id, key, kind, outcome, error, started, finished in rows.iterator(chunk_size=2000):
        ident = (name, key, kind)
        counts[ident] += 1
        errors[ident] += outcome == "error" or bool(error)
        reached.add((version_id, key))
        if finished and kind not in WAITING_KINDS:
            latency[ident].append((finished - started).total_seconds() * 1000)
    groups: Groups = {}
    for ident, n in counts.items():
        values = latency.get(ident)
        groups[ident] = (n, errors[ident], statistics.fmean(values) if values else None, _p95(values or []))
    return groups, reached


def audit_run(*, days: int = 14, now: datetime | None = None, trigger: str = "manual",
              conversion_drop: float = 0.2) -> AuditReport:
    """The governance audit: orphaned paths, stale personalization, step latency and error rates,
    channel error rates. Stored as an AuditReport for the ops dashboard."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    steps, channels, reached = _step_health(since)
    findings = {
        "orphaned_paths": _orphaned_paths(reached, now, days),
        "stale_personalization": _stale_personalization(since, now, days, conversion_drop),
        "step_health": steps,
        "channel_health": channels,
    }
    for section in AUDIT_SECTIONS:
        try:
            findings.update(section(since=since, now=now))
        except Exception:
            logger.exception("audit section %r failed", section)
    return AuditReport.objects.create(days=days, trigger=trigger, findings=findings)


def audit_scheduled() -> int:
    """q2 schedule entry point (daily): runs the audit over the default window."""
    return audit_run(trigger="schedule").pk
