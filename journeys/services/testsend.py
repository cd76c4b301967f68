"""Sending a version's message once as a test, before (or after) it goes live.

The message steps of a version (kinds with `sends_tests`: send_message, send_best_channel) can
each send their message to an address a person types, through the step's channel, rendered
with sample data. The kind does the sending (the channels app: straight to the provider, no
delivery, no profile, no quiet hours or caps); here is who may (those who may edit the
workflow) and the audit log entry, whatever the provider answered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from journeys.engine.registry import STEP_KINDS
from journeys.models import Step, WorkflowVersion
from journeys.selectors import EDIT
from journeys.services.governance import audit_record, require


def version_message_steps(*, version: WorkflowVersion) -> list[Step]:
    """The version's steps that can send a test, in key order."""
    kinds = [name for name, kind in STEP_KINDS.items() if kind.sends_tests]
    return list(version.steps.filter(kind__in=kinds).order_by("key"))


def step_test_send(*, version: WorkflowVersion, step_key: str, to: str, actor: Any, locale: str = "",
                   now: datetime | None = None) -> dict:
    """Send the message of step `step_key` once to `to`, as a test; returns what the step's kind
    said ({"sent", "channel", "to", "subject", "error", "missing", "locale", ...}). `locale`: the
    message customers with that locale get (its template's variant), else the template itself. Refused (PermissionDenied)
    to people who may not edit the workflow; a ValidationError says what to fix. Every attempt that
    reached the provider is in the audit log (`test_sent`), with where it went and the answer."""
    require(actor, EDIT, version.workflow)
    step = version.steps.filter(key=step_key).first()
    kind = STEP_KINDS.get(step.kind) if step is not None else None
    if kind is None or not kind.sends_tests:
        raise ValidationError({"step": f"v{version.number} has no message step {step_key!r} to test"})
    result = kind.test_send(config=step.config or {}, to=to, now=now or timezone.now(), locale=locale)
    with transaction.atomic():
        audit_record(action="test_sent", actor=actor, version=version,
                     reason=f"test of {step.key} to {result['to']}: "
                            + ("sent" if result["sent"] else f"not sent ({result['error']})"),
                     data={"step": step.key, **{k: result.get(k) for k in (
                         "channel", "template", "to", "subject", "sent", "error", "provider_message_id", "locale")}})
    return result
