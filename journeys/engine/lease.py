"""A lease that keeps a periodic job from overlapping itself (the engine's minute tick).

Taken with one conditional UPDATE of a `SchedulerLease` row (the same on PostgreSQL and
SQLite, and with PgBouncer in transaction mode, unlike a session advisory lock): whoever
finds it expired takes it. The holder renews it between batches of work; a holder that
dies (SIGKILL, a lost machine) simply stops renewing and the lease expires after `ttl`.
A tick that finds the lease held returns at once: the running tick is doing the work.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from journeys.models import SchedulerLease


class LeaseLost(Exception):
    """The lease expired and someone else took it: stop, they carry on."""


class Lease:
    def __init__(self, name: str, *, ttl: timedelta) -> None:
        self.name, self.ttl = name, ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._renewed = 0.0

    def acquire(self) -> bool:
        """Take the lease if it is free or expired; False when someone holds it."""
        now = timezone.now()
        with transaction.atomic():
            SchedulerLease.objects.bulk_create(
                [SchedulerLease(name=self.name, holder="", expires_at=now - timedelta(seconds=1))], ignore_conflicts=True
            )
            taken = SchedulerLease.objects.filter(name=self.name, expires_at__lte=now).update(
                holder=self.holder, expires_at=now + self.ttl
            )
        self.held = bool(taken)
        self._renewed = time.monotonic()
        return self.held

    def renew(self) -> None:
        """Extend the lease (at most every ttl/5: a cheap call between batches); LeaseLost if it
        is no longer ours."""
        if time.monotonic() - self._renewed < self.ttl.total_seconds() / 5:
            return
        self._renewed = time.monotonic()
        if not SchedulerLease.objects.filter(name=self.name, holder=self.holder).update(expires_at=timezone.now() + self.ttl):
            self.held = False
            raise LeaseLost(self.name)

    def release(self) -> None:
        if self.held:
            SchedulerLease.objects.filter(name=self.name, holder=self.holder).update(expires_at=timezone.now())
            self.held = False

    def held_until(self) -> datetime | None:
        return SchedulerLease.objects.filter(name=self.name).values_list("expires_at", flat=True).first()
