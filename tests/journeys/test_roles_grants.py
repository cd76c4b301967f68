"""Ops manage people through roles (journeys.services.roles and the admin's Roles page), never
through Django's user and group pages, so nobody but a superuser can make a superuser."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from journeys.errors import PermissionDenied
from journeys.models import AuditEntry
from journeys.services import governance as gov
from journeys.services.roles import user_roles, user_roles_set
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import PASSWORD, login

pytestmark = pytest.mark.django_db


def as_(user) -> Client:
    return login(Client(), user)


def fresh(user):
    return type(user).objects.get(pk=user.pk)  # forget cached permissions


def test_the_ops_role_holds_no_permission_that_edits_accounts_groups_or_permissions(people):
    auth_perms = set(Permission.objects.filter(group__name=gov.ROLE_OPS, content_type__app_label="auth")
                     .values_list("codename", flat=True))
    assert auth_perms == {"view_user", "view_group"}
    assert fresh(people["ops"]).has_perm("journeys.manage_roles")
    for role in gov.ROLES:
        if role != gov.ROLE_OPS:
            assert not Permission.objects.filter(group__name=role, codename="manage_roles").exists()


def test_ops_grants_and_revokes_roles_with_a_reason_on_the_roles_page(people):
    # given ops and a new colleague without any role or admin login
    colleague = UserFactory(username="newbie", is_staff=False)
    client = as_(people["ops"])
    url = f"/admin/journeys/rolemember/{colleague.pk}/change/"

    # when ops ticks Approvers and Analysts and says why
    page = client.get(url)
    saved = client.post(url, {"roles": [gov.ROLE_APPROVERS, gov.ROLE_ANALYSTS], "change_reason": "joins review"})

    # then the colleague holds them, may log into the admin, and the audit log says who and why
    assert page.status_code == 200 and saved.status_code == 302
    colleague = fresh(colleague)
    assert user_roles(user=colleague) == [gov.ROLE_APPROVERS, gov.ROLE_ANALYSTS] and colleague.is_staff
    grants = AuditEntry.objects.filter(action="role_granted", actor=people["ops"])
    assert sorted(e.data["role"] for e in grants) == sorted([gov.ROLE_APPROVERS, gov.ROLE_ANALYSTS])
    assert {e.reason for e in grants} == {"joins review"}

    # and taking a role away is recorded as well; no reason, no change
    assert b"This field is required" in client.post(url, {"roles": [gov.ROLE_ANALYSTS]}).content
    client.post(url, {"roles": [gov.ROLE_ANALYSTS], "change_reason": "left review"})
    assert user_roles(user=fresh(colleague)) == [gov.ROLE_ANALYSTS]
    assert AuditEntry.objects.get(action="role_revoked").data == {"user": "newbie", "role": gov.ROLE_APPROVERS}


def test_forged_fields_on_the_roles_page_change_nothing_but_roles(people):
    client = as_(people["ops"])
    me = people["ops"]
    response = client.post(f"/admin/journeys/rolemember/{me.pk}/change/", {
        "roles": [gov.ROLE_OPS], "change_reason": "x", "is_superuser": "on", "is_staff": "on",
        "user_permissions": [p.pk for p in Permission.objects.filter(content_type__app_label="auth")],
        "groups": [g.pk for g in Group.objects.all()], "username": "root", "password": "x"})
    assert response.status_code == 302
    me = fresh(me)
    assert not me.is_superuser and me.username == "ops" and not me.user_permissions.exists()
    assert user_roles(user=me) == [gov.ROLE_OPS] and not me.has_perm("auth.change_user")


def test_only_role_managers_grant_and_nobody_but_a_superuser_touches_a_superuser(people):
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    for name in ("approver", "editor", "analyst", "agent"):
        with pytest.raises(PermissionDenied):
            user_roles_set(user=people["nobody"], roles=[gov.ROLE_OPS], actor=fresh(people[name]), reason="me too")
        assert as_(people[name]).post(f"/admin/journeys/rolemember/{people['nobody'].pk}/change/",
                                        {"roles": [gov.ROLE_OPS], "change_reason": "x"}).status_code == 403
    with pytest.raises(PermissionDenied, match="superuser"):
        user_roles_set(user=root, roles=[], actor=fresh(people["ops"]), reason="demote the boss")
    assert as_(people["ops"]).post(f"/admin/journeys/rolemember/{root.pk}/change/",
                                     {"roles": [], "change_reason": "x"}).status_code == 403
    assert user_roles_set(user=people["nobody"], roles=[gov.ROLE_ANALYSTS], actor=root, reason="ok").granted


@pytest.mark.parametrize("grant", [[], ["change_group"], ["change_group", "change_user", "add_user", "change_permission"]])
def test_django_user_and_group_pages_refuse_every_forged_escalation_by_a_non_superuser(people, grant):
    # given the ops user, even one whose group was given raw auth permissions by mistake
    ops = people["ops"]
    ops_group = Group.objects.get(name=gov.ROLE_OPS)
    ops_group.permissions.add(*Permission.objects.filter(content_type__app_label="auth", codename__in=grant))
    client = as_(ops)
    change_user = Permission.objects.get(codename="change_user")

    # when it posts what the attack posted: change_user into its own group, then is_superuser on itself
    group_post = client.post(f"/admin/auth/group/{ops_group.pk}/change/", {
        "name": gov.ROLE_OPS, "permissions": [p.pk for p in ops_group.permissions.all()] + [change_user.pk]})
    user_post = client.post(f"/admin/auth/user/{ops.pk}/change/", {
        "username": "ops", "is_active": "on", "is_staff": "on", "is_superuser": "on",
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00"})
    add_post = client.post("/admin/auth/user/add/", {"username": "mole", "password1": "Xq9!vLr2#pTz",
                                                   "password2": "Xq9!vLr2#pTz", "usable_password": "true"})
    password_post = client.post(f"/admin/auth/user/{people['approver'].pk}/password/",
                                {"password1": "Xq9!vLr2#pTz", "password2": "Xq9!vLr2#pTz"})

    # then every one is refused and nothing changed
    assert [r.status_code for r in (group_post, user_post, add_post, password_post)] == [403, 403, 403, 403]
    ops = fresh(ops)
    assert not ops.is_superuser and not ops_group.permissions.filter(codename="change_user").exists() or \
        "change_user" in grant
    assert not type(ops).objects.filter(username="mole").exists()
    assert fresh(people["approver"]).check_password(PASSWORD)


def test_ops_may_still_look_at_users_and_groups(people):
    client = as_(people["ops"])
    assert client.get("/admin/auth/user/").status_code == 200
    assert client.get(f"/admin/auth/user/{people['approver'].pk}/change/").status_code == 200  # read-only view
    assert client.get("/admin/journeys/rolemember/").status_code == 200


def test_a_superuser_still_manages_accounts(people):
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(root)
    response = client.post(f"/admin/auth/user/{people['nobody'].pk}/change/", {
        "username": "nobody", "is_active": "on", "is_staff": "on",
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00", "initial-date_joined_0": "2026-01-01",
        "initial-date_joined_1": "00:00:00"})
    assert response.status_code == 302


def test_ops_watch_the_task_queue_but_cannot_schedule_code_on_the_workers(people):
    q2 = set(Permission.objects.filter(group__name=gov.ROLE_OPS, content_type__app_label="django_q")
             .values_list("codename", flat=True))
    assert "view_schedule" in q2 and "view_failure" in q2
    assert not {p for p in q2 if p.startswith(("add_", "change_"))}
    client = as_(people["ops"])
    assert client.get("/admin/django_q/schedule/").status_code == 200
    response = client.post("/admin/django_q/schedule/add/", {
        "name": "probe", "func": "os.system", "args": "'id'", "schedule_type": "O", "repeats": "-1"})
    assert response.status_code == 403
    from django_q.models import Schedule

    assert not Schedule.objects.filter(name="probe").exists()


def test_losing_the_ops_role_takes_the_admin_login_and_the_data_jobs_it_started(people):
    from journeys.models import Job
    from journeys.services.jobs import job_start
    from tests.factories import CustomerFactory

    ops = people["ops"]
    job = job_start(kind="export", actor=ops, params={"customer_id": CustomerFactory().pk})
    Job.objects.filter(pk=job.pk).update(status="succeeded", result={"export": {"email": "x@example.com"}})
    client = as_(ops)
    assert client.get(f"/console/jobs/{job.pk}/download/").status_code == 200
    root = type(ops).objects.create_superuser("root", "root@example.com", "pw")

    # still an analyst (an admin role): logs in, but the export went with the ops role
    user_roles_set(user=fresh(ops), roles=[gov.ROLE_ANALYSTS], actor=root, reason="moved to analytics")
    assert fresh(ops).is_staff
    assert client.get(f"/console/jobs/{job.pk}/download/").status_code in (403, 404)

    # only an agent now (who works in the agent console): no admin login, and the audit says so
    user_roles_set(user=fresh(ops), roles=[gov.ROLE_AGENTS], actor=root, reason="moved to support")
    assert not fresh(ops).is_staff
    assert AuditEntry.objects.filter(action="admin_login_revoked", data__user="ops").count() == 1
