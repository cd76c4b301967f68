"""A case's admin page with a long timeline (QA pages #8): a chat of thousands of entries took
11-19 s and one user query per entry. It shows the newest entries, with their authors read in the
same query, says how many there are and links to the console page that pages through them all."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agents.admin import CaseEntryInline
from agents.choices import EntryKind
from agents.models import CaseEntry
from tests.agents.conftest import open_case
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def notes(case, count: int, start: int) -> None:
    CaseEntry.objects.bulk_create(
        CaseEntry(case=case, kind=EntryKind.NOTE, body=f"note-{start + i}-", author=UserFactory())
        for i in range(count))


def test_a_long_case_page_shows_the_newest_entries_in_the_same_queries_however_many(client, monkeypatch):
    # given a case page that shows 5 entries, opened with 6 entries by 6 people, then with 18
    monkeypatch.setattr(CaseEntryInline, "shown", 5)
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    case = open_case()
    url = reverse("admin:agents_case_change", args=[case.pk])
    notes(case, 6, 0)
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    notes(case, 12, 6)
    total = case.entries.count()
    # when it is opened again
    with CaptureQueriesContext(connection) as many:
        page = client.get(url)
    # then it costs no more queries, shows the newest 5 and links to all of them
    assert len(many) <= len(few), (len(few), len(many))
    assert "note-17-" in page.text and "note-13-" in page.text and "note-12-" not in page.text
    assert f"Only the newest 5 of {total} are shown" in page.text
    assert reverse("agents:case", args=[case.pk]) in page.text
