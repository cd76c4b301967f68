"""Who may see and act on a case, kept in django-guardian object permissions.

An assigned case belongs to its agent (view + change); an unassigned case in a
team's queue is visible to the team's group, which may take it. Supervisors get
the model-wide permissions instead and see everything.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from guardian.shortcuts import remove_perm

from agents.errors import CaseForbidden
from agents.models import Case, CaseGroupObjectPermission, CaseUserObjectPermission

AGENT_PERMS = ("agents.view_case", "agents.change_case")
QUEUE_PERMS = ("agents.view_case", "agents.take_case")


def _permissions(perms: tuple[str, ...]) -> list[Permission]:
    return list(Permission.objects.filter(content_type__app_label="agents",
                                          codename__in=[p.split(".")[1] for p in perms]))


def case_grant_agent(*, case: Case, user) -> None:
    # guardian's assign_perm costs three queries per permission; routing is hot, so the
    # same rows are written in one statement.
    CaseUserObjectPermission.objects.bulk_create(
        [CaseUserObjectPermission(permission=p, user=user, content_object=case) for p in _permissions(AGENT_PERMS)],
        ignore_conflicts=True,
    )


def case_revoke_agent(*, case: Case, user) -> None:
    for perm in AGENT_PERMS:
        remove_perm(perm, user, case)


def case_grant_queue(*, case: Case, group: Group) -> None:
    CaseGroupObjectPermission.objects.bulk_create(
        [CaseGroupObjectPermission(permission=p, group=group, content_object=case) for p in _permissions(QUEUE_PERMS)],
        ignore_conflicts=True,
    )


def case_revoke_queues(*, case: Case) -> None:
    """The case left every queue (it was assigned): no team may see or take it any more."""
    CaseGroupObjectPermission.objects.filter(content_object=case).delete()


def cases_queues_set(*, case_ids: list[int], grants: list[tuple[Case, int]]) -> None:
    """Set-based, for many cases at once: their queue permissions become exactly `grants`
    ((case, group id) pairs; the cases in `case_ids` without one are in no queue)."""
    CaseGroupObjectPermission.objects.filter(content_object_id__in=case_ids).delete()
    pairs = {(case.pk, group_id): case for case, group_id in grants}
    perms = _permissions(QUEUE_PERMS) if pairs else []
    CaseGroupObjectPermission.objects.bulk_create(
        [CaseGroupObjectPermission(permission=p, group_id=group_id, content_object=case)
         for (_, group_id), case in pairs.items() for p in perms],
        ignore_conflicts=True,
    )


def case_revoke_all_agents(*, case: Case, keep_user_id: int | None = None) -> None:
    CaseUserObjectPermission.objects.filter(content_object=case).exclude(user_id=keep_user_id).delete()


def case_check(*, user, case: Case, perm: str) -> None:
    """Raise CaseForbidden unless the user holds `perm` on this case (or model-wide)."""
    if user is None or not user.is_authenticated:
        raise CaseForbidden("log in first")
    # Model-wide permission (supervisors) counts; Django's ModelBackend ignores it for object checks.
    if not (user.has_perm(perm) or user.has_perm(perm, case)):
        raise CaseForbidden(f"you may not {perm.split('.')[-1].replace('_', ' ')} #{case.pk}")
