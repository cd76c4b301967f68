"""Reads limited to what a user may see, and the permission rules they follow.

Who may do what to a workflow:

- view:    global `journeys.view_workflow` (ops, approvers, analysts) or an edit scope below
- edit:    global `journeys.change_workflow` (ops admins), or, through django-guardian,
           `journeys.edit_unit_workflows` on the workflow's BusinessUnit together with the
           Business-unit editors role (business-unit editors), or `journeys.change_workflow` on
           the workflow itself
- propose: global `journeys.propose_workflow`, or the edit scope (editors propose their own changes)
- review:  global `journeys.review_workflow` (approvers)
- publish: global `journeys.publish_workflow` (approvers, ops admins): publish, canary, roll back
- operate: global `journeys.operate_workflow` (ops admins): pauses and safe mode

Superusers may do everything. Services re-check these rules; the admin only uses them to
hide what a user may not touch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.functions import Lower
from guardian.shortcuts import get_objects_for_user

from journeys.choices import ROLE_EDITORS, IdentityKind
from journeys.models import (
    AuditEntry,
    BusinessUnit,
    ChangeRequest,
    Customer,
    Event,
    Identity,
    JourneyRun,
    Workflow,
    WorkflowVersion,
)

VIEW, EDIT, PROPOSE, REVIEW, PUBLISH, OPERATE = "view", "edit", "propose", "review", "publish", "operate"
ACTIONS = (VIEW, EDIT, PROPOSE, REVIEW, PUBLISH, OPERATE)
GLOBAL_PERM = {
    VIEW: "journeys.view_workflow",
    EDIT: "journeys.change_workflow",
    PROPOSE: "journeys.propose_workflow",
    REVIEW: "journeys.review_workflow",
    PUBLISH: "journeys.publish_workflow",
    OPERATE: "journeys.operate_workflow",
}
UNIT_PERM = "journeys.edit_unit_workflows"
# Actions that an edit scope on the owning unit (or the workflow) grants.
SCOPED_ACTIONS = (VIEW, EDIT, PROPOSE)


def _active(user: Any) -> bool:
    return user is not None and getattr(user, "is_active", False) and getattr(user, "is_authenticated", False)


def user_has_global(user: Any, action: str) -> bool:
    if not _active(user):
        return False
    return user.is_superuser or user.has_perm(GLOBAL_PERM[action]) or (
        action == VIEW and user.has_perm(GLOBAL_PERM[EDIT])
    )


# --------------------------------------------------------------------------- a user's grants, read once a request

# user id -> Scope, and a few answers about everyone ("any workflow"), for the current request.
_REQUEST_SCOPES: ContextVar[dict[int | str, Any] | None] = ContextVar("journeys_request_scopes", default=None)


@dataclass
class Scope:
    """What a user reaches through grants rather than roles: the units whose workflows they edit
    (a guardian permission on the unit, and the Business-unit editors role: a unit grant left
    behind by a role taken away reaches nothing) and the workflows granted to them one by one."""

    unit_ids: frozenset[int]
    workflow_ids: frozenset[int]
    _any_workflow: bool | None = field(default=None, repr=False)

    def workflows(self) -> QuerySet[Workflow]:
        if not self.unit_ids and not self.workflow_ids:
            return Workflow.objects.none()
        return Workflow.objects.filter(Q(business_unit_id__in=self.unit_ids) | Q(pk__in=self.workflow_ids))

    def reaches(self, workflow: Workflow) -> bool:
        return workflow.business_unit_id in self.unit_ids or workflow.pk in self.workflow_ids

    def any_workflow(self) -> bool:
        if self._any_workflow is None:
            self._any_workflow = self.workflows().exists()
        return self._any_workflow


@contextmanager
def scopes_cached() -> Iterator[None]:
    """Inside the block (one web request: `journeys.middleware.PermissionScopeMiddleware`) a user's
    grants are read once: an admin page asks "may they see / change this?" for every row, inline
    and menu entry, and each answer used to read the guardian tables again. Outside it (tasks,
    commands, tests calling services) they are read on every question."""
    token = _REQUEST_SCOPES.set({})
    try:
        yield
    finally:
        _REQUEST_SCOPES.reset(token)


def scope_forget(user: Any) -> None:
    """The user's grants changed (granted, revoked, a role taken away): read them again."""
    cache = _REQUEST_SCOPES.get()
    if cache is not None:
        cache.pop(getattr(user, "pk", None), None)


def user_scope(user: Any) -> Scope:
    """The user's grants (see Scope); an inactive or anonymous user has none."""
    if not _active(user):
        return Scope(frozenset(), frozenset())
    cache = _REQUEST_SCOPES.get()
    if cache is not None and user.pk in cache:
        return cache[user.pk]
    units: frozenset[int] = frozenset()
    if user.groups.filter(name=ROLE_EDITORS).exists():
        units = frozenset(get_objects_for_user(user, UNIT_PERM, BusinessUnit, accept_global_perms=True)
                          .values_list("pk", flat=True))
    direct = frozenset(get_objects_for_user(user, "journeys.change_workflow", Workflow, accept_global_perms=False)
                       .values_list("pk", flat=True))
    scope = Scope(units, direct)
    if cache is not None:
        cache[user.pk] = scope
    return scope


def business_units_for_user(user: Any, action: str = EDIT) -> QuerySet[BusinessUnit]:
    """Units whose workflows the user may edit (a global right covers every unit)."""
    if not _active(user):
        return BusinessUnit.objects.none()
    if user_has_global(user, EDIT if action in SCOPED_ACTIONS else action):
        return BusinessUnit.objects.all()
    if action not in SCOPED_ACTIONS:
        return BusinessUnit.objects.none()
    return BusinessUnit.objects.filter(pk__in=user_scope(user).unit_ids)


def business_units_visible_to(user: Any) -> QuerySet[BusinessUnit]:
    """Units whose names the user may read: all for those who view every workflow, else the units
    of the workflows in their reach (an editor never learns other units' names from a filter)."""
    if user_has_global(user, VIEW):
        return BusinessUnit.objects.all()
    return BusinessUnit.objects.filter(pk__in=workflows_for_user(user, VIEW).values("business_unit_id"))


def workflows_for_user(user: Any, action: str = VIEW) -> QuerySet[Workflow]:
    """The workflows on which the user may perform `action`."""
    if not _active(user):
        return Workflow.objects.none()
    if user_has_global(user, action):
        return Workflow.objects.all()
    if action not in SCOPED_ACTIONS:
        return Workflow.objects.none()
    return user_scope(user).workflows()


def user_can(user: Any, action: str, workflow: Workflow) -> bool:
    """Whether the user may perform `action` on this workflow."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if not _active(user):
        return False
    if user_has_global(user, action):
        return True
    if action not in SCOPED_ACTIONS:
        return False
    return user_scope(user).reaches(workflow)


def user_has_any_scope(user: Any) -> bool:
    """Whether the user sees the workflow part of the admin at all."""
    if not _active(user):
        return False
    return any(user_has_global(user, a) for a in ACTIONS) or user_scope(user).any_workflow()


def _request_memo(key: str, read: Callable[[], bool]) -> bool:
    cache = _REQUEST_SCOPES.get()
    if cache is None:
        return read()
    if key not in cache:
        cache[key] = read()
    return cache[key]


def user_has_workflows(user: Any, action: str = VIEW) -> bool:
    """Whether `action` reaches any workflow at all (`workflows_for_user(...).exists()`), as the
    admin's menu and model-level checks ask again and again within one page: read once a request."""
    if not _active(user):
        return False
    if user_has_global(user, action):
        return _request_memo("any workflow", Workflow.objects.exists)
    return action in SCOPED_ACTIONS and user_scope(user).any_workflow()


def user_has_units(user: Any, action: str = EDIT) -> bool:
    """Whether the user may create workflows in some unit (`business_units_for_user(...).exists()`)."""
    if not _active(user):
        return False
    if user_has_global(user, EDIT if action in SCOPED_ACTIONS else action):
        return _request_memo("any unit", BusinessUnit.objects.exists)
    return action in SCOPED_ACTIONS and bool(user_scope(user).unit_ids)


def versions_for_user(user: Any, action: str = VIEW) -> QuerySet[WorkflowVersion]:
    return WorkflowVersion.objects.filter(workflow__in=workflows_for_user(user, action))


def runs_for_user(user: Any) -> QuerySet[JourneyRun]:
    return JourneyRun.objects.filter(workflow__in=workflows_for_user(user, VIEW))


def change_requests_for_user(user: Any) -> QuerySet[ChangeRequest]:
    """Editors see the requests on their workflows; reviewers and publishers see all."""
    if user_has_global(user, REVIEW) or user_has_global(user, PUBLISH):
        return ChangeRequest.objects.all()
    return ChangeRequest.objects.filter(workflow__in=workflows_for_user(user, VIEW))


def audit_entries_for_user(user: Any) -> QuerySet[AuditEntry]:
    if user_has_global(user, VIEW):
        return AuditEntry.objects.all()
    return AuditEntry.objects.filter(workflow__in=workflows_for_user(user, VIEW))


def user_can_view_dashboard(user: Any) -> bool:
    return _active(user) and (user.is_superuser or user.has_perm("journeys.view_ops_dashboard"))


def user_can_view_customers(user: Any) -> bool:
    """The one rule for showing a customer's profile (Customer 360, template previews with a real
    customer...): superusers and holders of journeys.view_customer (ops). Editors and approvers
    read configuration, not people."""
    return _active(user) and (user.is_superuser or user.has_perm("journeys.view_customer"))


def identities_matching(term: str) -> QuerySet[Identity]:
    """The identities a search term names: any id as written (or lower-cased, as emails are
    stored), or a phone number in any spelling the identity may hold (`phone_lookup_values`:
    normalised, 00 or +, or as typed before numbers were normalised), as STOP matching finds it."""
    from journeys.services.identity import phone_lookup_values

    term = (term or "").strip()
    return Identity.objects.filter(Q(value__in=[term, term.lower()])
                                   | Q(kind=IdentityKind.PHONE, value__in=phone_lookup_values(term)))


def customers_named(term: str) -> set[int]:
    """The ids of the customers a search term names exactly, through indexes only: any of their
    ids (`identities_matching`: user id, anonymous id, email, phone in any spelling), their
    profile's user id or email (as written or lower-cased, as emails are stored) or `#<number>`
    (a customer's row id). Admin searches over big tables resolve the customer first and then
    read that customer's rows, instead of a LIKE over every row."""
    term = (term or "").strip()
    if not term:
        return set()
    ids = set(identities_matching(term).order_by().values_list("customer_id", flat=True))
    ids.update(Customer.objects.filter(Q(external_id=term) | Q(email__in={term, term.lower()}))
               .order_by().values_list("pk", flat=True))
    if term.startswith("#") and term[1:].isdigit() and len(term) < 20:
        ids.add(int(term[1:]))
    return ids


def runs_searched(term: str) -> Q:
    """The admin search over runs, exact and through indexes: that customer's runs (resolved first,
    then read from run_customer_status_idx), the run of that number, or of an event's trigger key
    (a substring search joined every run to its customer)."""
    named = Q(customer_id__in=customers_named(term))
    if term.isdigit() and len(term) < 19:
        named |= Q(pk=int(term))
    triggered = runs_with_trigger_key(term)
    return named | triggered if triggered is not None else named


def runs_with_trigger_key(term: str) -> Q | None:
    """The runs an event's trigger key names (`event:<id>`, `inactivity:<id>`), as a filter served
    by run_customer_status_idx: the event's customer (a primary-key read) and that key. Other keys
    (`date:`, `moved:`) lead no index without their workflow, so they are not searched."""
    kind, _, number = (term or "").strip().partition(":")
    if kind not in ("event", "inactivity") or not number.isdigit() or len(number) >= 19:
        return None
    customer_id = Event.objects.filter(pk=int(number)).values_list("customer_id", flat=True).first()
    return None if customer_id is None else Q(customer_id=customer_id, trigger_key=f"{kind}:{int(number)}")


def customer_find(*, value: str) -> Customer | None:
    """A customer by any of their ids (user id, anonymous id, email, phone), their external id,
    their profile email, or `#<number>` / a number (the customer's row id)."""
    value = (value or "").strip()
    if not value:
        return None
    identity = identities_matching(value).select_related("customer").order_by("pk").first()
    if identity is not None:
        return identity.customer
    found = (Customer.objects.filter(external_id=value).first()
             or Customer.objects.filter(email__iexact=value).order_by("pk").first())
    digits = value.removeprefix("#")
    if found is None and digits.isdigit() and len(digits) < 19:
        found = Customer.objects.filter(pk=int(digits)).first()
    return found


def customers_holding(*, emails: Iterable[str] = (), phones: Iterable[str] = (), live: bool = True,
                      fields: tuple[str, ...] = ("pk",)) -> QuerySet:
    """The `fields` (`values_list`, flat for one; one query) of the profiles holding one of these email addresses
    or phone numbers now or first: the profile an address's identity points at, and every profile
    whose own column holds it, an email address in any capitalisation (`customer_email_lower_idx`),
    a phone number in the spellings given (`customer_phone_idx`; pass `phone_lookup_values`).
    Never merged-away profiles; with `live` not erased ones either. Every "who has this address"
    look-up (the customers API, consent's address holds, SMS STOP, email vendors' reports) is this
    one, so an address is spelled the same way everywhere."""
    emails = {e.strip().lower() for e in emails if e and e.strip()}
    phones = {p for p in phones if p}
    profiles = Customer.objects.filter(merged_into__isnull=True).order_by()
    if live:
        profiles = profiles.filter(erased_at__isnull=True)
    owned = Q()
    for kind, values in ((IdentityKind.EMAIL, emails), (IdentityKind.PHONE, phones)):
        if values:
            owned |= Q(kind=kind, value__in=values)
    flat = len(fields) == 1
    if not owned:
        return profiles.none().values_list(*fields, flat=flat)
    found = profiles.filter(pk__in=Identity.objects.filter(owned).values("customer_id")).values_list(*fields, flat=flat)
    # each column on its own indexed look-up (a UNION), not an OR the planner reads the table for
    if emails:
        found = found.union(profiles.annotate(email_lower=Lower("email")).filter(email_lower__in=emails)
                            .values_list(*fields, flat=flat))
    if phones:
        found = found.union(profiles.filter(phone__in=phones).values_list(*fields, flat=flat))
    return found
