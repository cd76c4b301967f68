"""Granting and revoking roles: the only way a person who is not a superuser changes who may
do what. A role is one of the groups `roles_setup` maintains; this service adds people to
them and takes them out, and never edits a permission, `is_superuser` or another account's
password (superusers are made with `createsuperuser` only). Business-unit editors are granted
per unit by `business_unit_grant_editor`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction

from journeys.errors import JourneyError, PermissionDenied
from journeys.models import BusinessUnit
from journeys.selectors import scope_forget
from journeys.services.governance import (
    ROLE_AGENTS, ROLE_EDITORS, ROLES, audit_record, business_unit_grants_revoke_all, require_reason, roles_can_manage,
    roles_setup,
)

# Roles whose work is in the Django admin (agents work in /agents/ and need no admin login).
ADMIN_ROLES = tuple(role for role in ROLES if role != ROLE_AGENTS)


@dataclass
class RolesChange:
    granted: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    staff_granted: bool = False
    staff_revoked: bool = False
    units_revoked: list[BusinessUnit] = field(default_factory=list)


def user_roles(*, user: Any) -> list[str]:
    """The roles `user` holds, in ROLES order (from the user's groups as prefetched, when a list
    prefetched them: one query for the page, not one per person)."""
    held = {group.name for group in user.groups.all()}
    return [role for role in ROLES if role in held]


@transaction.atomic
def user_roles_set(*, user: Any, roles: Iterable[str], actor: Any = None, reason: str = "") -> RolesChange:
    """Make `user` hold exactly `roles` (names from ROLES), recording each grant and revocation
    with who and why. A role worked in the admin also lets the person log into it (is_staff); taking
    away the last such role takes the admin login away too (a superuser keeps theirs).

    Taking away Business-unit editors takes away the units the person edited too (each recorded):
    a grant left behind would come back with the role, unseen on this page.

    Refused: an actor without journeys.manage_roles; a non-superuser changing a superuser's
    roles; an unknown role name."""
    if actor is not None and not roles_can_manage(user=actor):
        raise PermissionDenied(f"{actor} may not grant or revoke roles")
    if actor is not None and user.is_superuser and not actor.is_superuser:
        raise PermissionDenied(f"only a superuser may change the roles of superuser {user}")
    wanted = list(dict.fromkeys(roles))
    if unknown := [role for role in wanted if role not in ROLES]:
        raise JourneyError(f"unknown role {unknown[0]!r}; roles: {', '.join(ROLES)}", field="roles",
                           code="invalid")
    reason = require_reason(actor, reason)
    if not Group.objects.filter(name__in=ROLES).count() == len(ROLES):
        roles_setup()
    held = set(user_roles(user=user))
    change = RolesChange(granted=[r for r in wanted if r not in held],
                         revoked=[r for r in ROLES if r in held and r not in wanted])
    if change.granted:
        user.groups.add(*Group.objects.filter(name__in=change.granted))
    if change.revoked:
        user.groups.remove(*Group.objects.filter(name__in=change.revoked))
    if ROLE_EDITORS not in wanted:
        change.units_revoked = business_unit_grants_revoke_all(user=user, actor=actor, reason=reason)
    scope_forget(user)
    if not user.is_staff and any(role in ADMIN_ROLES for role in wanted):
        user.is_staff = change.staff_granted = True
        user.save(update_fields=["is_staff"])
    elif user.is_staff and not user.is_superuser and not any(role in ADMIN_ROLES for role in wanted):
        user.is_staff = False  # no role worked in the admin left (agents work in their console): no admin login
        change.staff_revoked = True
        user.save(update_fields=["is_staff"])
    for role in change.granted:
        audit_record(action="role_granted", actor=actor, reason=reason,
                     data={"user": user.get_username(), "role": role, "admin_login": change.staff_granted})
    for role in change.revoked:
        audit_record(action="role_revoked", actor=actor, reason=reason, data={"user": user.get_username(), "role": role})
    if change.staff_revoked:
        audit_record(action="admin_login_revoked", actor=actor, reason=reason, data={"user": user.get_username()})
    return change
