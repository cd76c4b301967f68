"""Event sources in the admin and through `source_create`: who created one and why is on its
creation history row, a person must give a reason, and the key is shown once."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.admin.base import REASON_MISSING
from journeys.errors import PermissionDenied
from journeys.models import Source
from journeys.services.sources import source_authenticate, source_create, source_rotate_key, source_set_enabled
from tests.factories import UserFactory, make_source

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:journeys_source_add")


def _new_source(**changes) -> dict:
    return {"name": "mobile-app", "description": "iOS and Android", "enabled": "on", "rate_limit": "",
            "schema_policy": "reject", **changes}


def test_a_source_created_in_the_admin_records_who_and_why(admin_client, admin_user):
    # when ops creates a source, saying why
    response = admin_client.post(ADD_URL, _new_source(change_reason="the mobile team starts sending events"),
                                 follow=True)

    # then its creation history row names the user and the reason, the page shows the key once,
    # and every field of the form was kept (the schema policy too)
    assert response.status_code == 200
    source = Source.objects.get(name="mobile-app")
    row = source.history.get()
    assert (row.history_type, row.history_user, row.history_change_reason) == (
        "+", admin_user, "the mobile team starts sending events")
    assert (source.description, source.schema_policy, source.enabled) == ("iOS and Android", "reject", True)
    shown = [str(m) for m in response.context["messages"]]
    key = next(m for m in shown if "Write key for mobile-app" in m).split("<code>")[1].split("</code>")[0]
    assert source_authenticate(write_key=key) == source
    history = admin_client.get(reverse("admin:journeys_source_history", args=[source.pk])).content.decode()
    assert "the mobile team starts sending events" in history and admin_user.get_username() in history


def test_the_admin_refuses_a_source_without_a_reason(admin_client):
    response = admin_client.post(ADD_URL, _new_source(change_reason="  "))

    assert response.status_code == 200
    assert REASON_MISSING in response.content.decode()
    assert not Source.objects.filter(name="mobile-app").exists()


def test_the_service_refuses_a_person_without_a_reason_naming_the_field():
    ops = UserFactory(username="ops", is_superuser=True, is_staff=True)

    with pytest.raises(ValidationError) as refused:
        source_create(name="crm", actor=ops, reason="")

    assert refused.value.message_dict == {"reason": ["a reason is required for every change made by a person"]}
    assert not Source.objects.filter(name="crm").exists()


def test_only_people_allowed_to_add_sources_may_create_one():
    clerk = UserFactory(username="clerk", is_staff=True)
    with pytest.raises(PermissionDenied, match="may not create event sources"):
        source_create(name="crm", actor=clerk, reason="want one")

    clerk.user_permissions.add(Permission.objects.get(codename="add_source"))
    clerk = type(clerk).objects.get(pk=clerk.pk)  # permissions are cached per user object
    source, _ = source_create(name="crm", actor=clerk, reason="CRM sync")
    assert source.history.get().history_user == clerk


def test_the_system_may_create_a_source_without_a_reason():
    source, _ = make_source("batch")
    assert source.history.get().history_change_reason == "source created"


def test_disabling_in_the_admin_records_the_user(admin_client, admin_user):
    source, _ = make_source("legacy")

    admin_client.post(reverse("admin:journeys_source_changelist"),
                      {"action": "disable_sources", "_selected_action": [source.pk]})

    row = source.history.latest("history_date")
    assert (row.enabled, row.history_user, row.history_change_reason) == (False, admin_user, "disabled in the admin")


def test_disabling_by_a_person_needs_a_reason():
    source, _ = make_source("legacy")
    ops = UserFactory(username="ops", is_superuser=True, is_staff=True)
    with pytest.raises(ValidationError, match="reason"):
        source_set_enabled(source=source, enabled=False, actor=ops, reason="")
    assert Source.objects.get(pk=source.pk).enabled


def test_rotating_or_disabling_needs_the_change_permission():
    source, _ = make_source("legacy")
    clerk = UserFactory(username="clerk", is_staff=True)
    with pytest.raises(PermissionDenied, match="may not rotate write keys"):
        source_rotate_key(source=source, actor=clerk)
    with pytest.raises(PermissionDenied, match="may not enable or disable event sources"):
        source_set_enabled(source=source, enabled=False, actor=clerk, reason="cleanup")
    assert Source.objects.get(pk=source.pk).enabled


def test_the_create_source_command_sets_strict_retention_and_merges(capsys):
    from django.core.management import CommandError, call_command

    call_command("create_source", "backend", "--strict", "--retention-days", "30", "--allow-known-merges")

    key = capsys.readouterr().out.strip().splitlines()[-1]
    source = Source.objects.get(name="backend")
    assert (source.strict, source.retention_days, source.allow_known_merges) == (True, 30, True)
    assert key.startswith("wk_")
    with pytest.raises(CommandError, match="retention_days"):
        call_command("create_source", "bad", "--retention-days", "-1")
    assert not Source.objects.filter(name="bad").exists()
