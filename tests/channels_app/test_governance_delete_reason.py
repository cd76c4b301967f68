"""Deleting configuration is a change too: the admin asks why, refuses without a reason, and the
history row of the deleted object carries who and why (single delete view and the bulk action)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from channels_app.models import ContentBlock

pytestmark = pytest.mark.django_db


@pytest.fixture
def block():
    return ContentBlock.objects.create(name="promo", variants=[])


def _last_history(block):
    return ContentBlock.history.filter(id=block.pk).order_by("-history_id").first()


def test_delete_page_asks_for_a_reason_and_refuses_without_one(admin_client, block):
    url = reverse("admin:channels_app_contentblock_delete", args=[block.pk])
    assert b'name="change_reason"' in admin_client.get(url).content

    refused = admin_client.post(url, {"post": "yes"})

    assert refused.status_code == 200
    assert b"say why you are making this change" in refused.content
    assert ContentBlock.objects.filter(pk=block.pk).exists()


def test_delete_with_a_reason_records_who_and_why(admin_client, admin_user, block):
    url = reverse("admin:channels_app_contentblock_delete", args=[block.pk])

    done = admin_client.post(url, {"post": "yes", "change_reason": "promo ended"})

    assert done.status_code == 302 and not ContentBlock.objects.filter(pk=block.pk).exists()
    row = _last_history(block)
    assert (row.history_type, row.history_change_reason, row.history_user) == ("-", "promo ended", admin_user)


def test_bulk_delete_action_needs_a_reason_too(admin_client, admin_user, block):
    other = ContentBlock.objects.create(name="footer", variants=[])
    changelist = reverse("admin:channels_app_contentblock_changelist")
    selected = {"action": "delete_selected", "_selected_action": [block.pk, other.pk], "post": "yes"}

    refused = admin_client.post(changelist, selected)
    assert refused.status_code == 200 and b"say why you are making this change" in refused.content
    assert ContentBlock.objects.count() == 2

    done = admin_client.post(changelist, {**selected, "change_reason": "old blocks"})
    assert done.status_code == 302 and not ContentBlock.objects.exists()
    assert {(_last_history(b).history_change_reason, _last_history(b).history_user) for b in (block, other)} == {
        ("old blocks", admin_user)}
