"""A cap or quiet hours changed while a claim that read the old rule is in flight (PostgreSQL, real
commits and threads): the claim's holds under the old rule commit before the save, so the release
after the save finds them (review 27 caps, finding 1; the pause has the same guard)."""

from __future__ import annotations

import threading
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from channels_app.models import Delivery
from channels_app.services import caps as caps_mod
from channels_app.services import channels as channels_mod
from channels_app.services import claim as claim_mod
from channels_app.services import policy
from channels_app.services.claim import deliveries_claim
from channels_app.services.dispatch import deliveries_release_held
from tests.channels_app.factories import CapFactory, ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.factories import in_a_thread
from tests.marks import on_postgres

pytestmark = on_postgres("row locks between two connections")


def _pause_after(module, name: str, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make the claim stop right after `module.name()` returned (it has read the rule): (read, go_on)."""
    read, go_on = threading.Event(), threading.Event()
    real = getattr(module, name)

    def paused(*args, **kwargs):
        result = real(*args, **kwargs)
        read.set()
        go_on.wait(10)
        return result

    monkeypatch.setattr(module, name, paused)
    return read, go_on


def _claim_while_saving(delivery: Delivery, read: threading.Event, go_on: threading.Event, save) -> None:
    """The claim reads the old rule and stops; the operator's save starts meanwhile (on the old code it
    commits and releases at once); then the claim goes on and commits its hold."""
    claim, claimed = in_a_thread(lambda: deliveries_claim(ids=[delivery.pk], now=timezone.now()))
    assert read.wait(10)
    saving, saved = in_a_thread(save)
    saving.join(0.5)  # fixed: the save waits for the claim here
    go_on.set()
    claim.join(20)
    saving.join(20)
    assert not [a for a in [*claimed, *saved] if isinstance(a, Exception)]


def _release_now(module, monkeypatch) -> None:
    """The release runs synchronously after the save's commit (in production: a q2 task on commit)."""
    monkeypatch.setattr(module, "deliveries_release_on_resume",
                        lambda scope, key: deliveries_release_held(scope, key))


def _held_under_old_rule(delivery: Delivery) -> bool:
    delivery.refresh_from_db()
    return delivery.status == "deferred" and delivery.next_attempt_at > timezone.now() + timedelta(minutes=30)


def test_a_cap_raised_while_a_claim_holds_under_the_old_limit_releases_that_hold(monkeypatch):
    """Given a cap of 1 email a day already used and a second email being claimed (the claim has read
    the cap), when an operator raises the cap to 5 meanwhile, the second email is not left held for a day."""
    mail = ChannelFactory(name="mail", kind="email", provider="console")
    ada = CustomerFactory(external_id="ada", email="ada@example.com")
    cap = CapFactory(name="mail-1-day", channel=mail, limit=1, window_s=86400, action="defer")
    template = TemplateFactory(topic=topic("product_updates"))
    common = dict(customer=ada, channel=mail, template=template, topic=template.topic, to=ada.email)
    Delivery.objects.create(idempotency_key="1", status="sent", sent_at=timezone.now() - timedelta(minutes=5), **common)
    second = Delivery.objects.create(idempotency_key="2", status="queued", **common)
    _release_now(caps_mod, monkeypatch)
    read, go_on = _pause_after(policy, "enabled_caps", monkeypatch)

    def raise_cap():
        cap.limit = 5
        caps_mod.frequency_cap_save(cap=cap, actor=None, reason="campaign week")

    _claim_while_saving(second, read, go_on, raise_cap)

    assert not _held_under_old_rule(second), (second.status, second.error, second.next_attempt_at)


def test_quiet_hours_removed_while_a_claim_holds_for_them_releases_that_hold(monkeypatch):
    """Given quiet hours that hold an email for two more hours and a claim that has read them, when an
    operator removes the quiet hours meanwhile, the email is not left held until they would have ended."""
    now = timezone.now()  # ada's clock is UTC
    mail = ChannelFactory(name="mail", kind="email", provider="console",
                          quiet_start=(now - timedelta(hours=1)).time(), quiet_end=(now + timedelta(hours=2)).time())
    ada = CustomerFactory(external_id="ada", email="ada@example.com", timezone="UTC")
    template = TemplateFactory(topic=topic("product_updates"))
    queued = Delivery.objects.create(idempotency_key="1", status="queued", customer=ada, channel=mail,
                                     template=template, topic=template.topic, to=ada.email)
    _release_now(channels_mod, monkeypatch)
    read, go_on = _pause_after(claim_mod, "_channels", monkeypatch)

    def remove_quiet_hours():
        with transaction.atomic():
            mail.quiet_start = mail.quiet_end = None
            channels_mod.channel_save(channel=mail, actor=None, reason="no quiet hours for mail")

    _claim_while_saving(queued, read, go_on, remove_quiet_hours)

    assert not _held_under_old_rule(queued), (queued.status, queued.reason, queued.next_attempt_at)
