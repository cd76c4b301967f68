from __future__ import annotations

import itertools

import pytest

from agents.services.cases import CaseDraft, case_open
from journeys.engine.compiled import reset_caches
from tests.factories import CustomerFactory

_keys = itertools.count()


@pytest.fixture(autouse=True)
def _engine_caches():
    reset_caches()
    yield
    reset_caches()


@pytest.fixture
def email_channel(db):
    from channels_app.models import Channel

    return Channel.objects.get_or_create(name="email", defaults={"kind": "email"})[0]


def open_case(*, customer=None, category="billing", language="en", priority=2, text="My invoice is wrong",
              intent="billing", team=None, capture=None):
    """Open a case the way an escalation does (routing runs on commit: pass django_capture_on_commit_callbacks)."""
    customer = customer or CustomerFactory()
    draft = CaseDraft(customer=customer, subject=text[:40], text=text, category=category, intent=intent,
                      language=language, priority=priority, sentiment=-0.5, complexity=0.2, reasons=["test"], team=team)
    if capture is None:
        case, _ = case_open(draft=draft, idempotency_key=f"test:{next(_keys)}")
    else:
        with capture(execute=True):
            case, _ = case_open(draft=draft, idempotency_key=f"test:{next(_keys)}")
    case.refresh_from_db()
    return case
