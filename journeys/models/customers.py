from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower

from journeys.choices import IdentityKind
from journeys.models.base import Timestamped
from journeys.models.fields import ClientJSONField


class Customer(Timestamped):
    """The canonical profile of one person, whatever ids they arrived under.

    A profile absorbed by an identity merge is kept (its id may be referenced
    elsewhere) with `merged_into` pointing at the survivor; it owns nothing.
    """

    external_id = models.CharField("user id", max_length=255, blank=True, db_index=True)
    email = models.EmailField(max_length=320, blank=True, db_index=True)
    phone = models.CharField(max_length=64, blank=True)
    timezone = models.CharField(max_length=64, blank=True, default="UTC")
    locale = models.CharField(max_length=32, blank=True)
    traits = ClientJSONField(default=dict, blank=True)
    first_seen = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    last_engaged_at = models.DateTimeField(null=True, blank=True)
    stage = models.CharField(max_length=40, blank=True, db_index=True, help_text="lifecycle stage key")
    merged_into = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="absorbed"
    )
    erased_at = models.DateTimeField(null=True, blank=True, editable=False,
                                     help_text="erased (right to erasure): a tombstone that takes no new data")

    class Meta:
        ordering = ["-last_seen", "-id"]
        indexes = [  # who holds an address (journeys.selectors.customers_holding): SMS STOP, refusals, holds
            models.Index(fields=["phone"], name="customer_phone_idx"),
            models.Index(Lower("email"), name="customer_email_lower_idx"),
        ]

    def __str__(self) -> str:
        return self.external_id or self.email or f"anonymous #{self.pk}"

    @property
    def display_name(self) -> str:
        name = " ".join(
            str(self.traits.get(k, "")) for k in ("first_name", "last_name") if self.traits.get(k)
        )
        return name or self.traits.get("name") or str(self)


class Identity(models.Model):
    """One (kind, value) pair that points at exactly one customer."""

    kind = models.CharField(max_length=20, choices=IdentityKind.choices)
    value = models.CharField(max_length=255)
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="identities")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "value"], name="identity_kind_value_unique")
        ]
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class CustomerMerge(models.Model):
    """Audit row of an identity merge: who asked, when, and what moved."""

    target = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="merges")
    merged = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="merged_away"
    )
    reason = models.CharField(max_length=255)
    actor = models.CharField(max_length=255, help_text="source or user that caused the merge")
    details = models.JSONField(default=dict)
    merged_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-merged_at"]

    def __str__(self) -> str:
        return f"#{self.merged_id} -> #{self.target_id}"


class MergeRefusal(models.Model):
    """An identity merge an event asked for and did not get (an alias that would fold one known
    user into another), kept so that ops can see it (admin, Customer 360) and decide. Known-to-known
    merges need the source's `allow_known_merges`; an anonymous id that already belongs to another
    known user never merges two known users."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="merge_refusals",
                                 help_text="the profile the event went to")
    other = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="merge_refusals_as_other",
                              help_text="the profile it would have absorbed")
    source = models.ForeignKey("journeys.Source", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message_id = models.CharField(max_length=255, blank=True)
    user_id = models.CharField(max_length=255, blank=True)
    previous_id = models.CharField(max_length=255, blank=True)
    reason = models.CharField(max_length=255)
    refused_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-refused_at", "-id"]

    def __str__(self) -> str:
        return f"{self.previous_id} -> {self.user_id}: {self.reason}"


class ProfileCheck(models.Model):
    """A customer who may have been left with nothing (their events or runs were deleted by
    retention): the history housekeeping looks at these, a batch at a time, and deletes the
    anonymous profiles among them that hold nothing any more (journeys.services.history_retention).
    Only the ids to look at, so the housekeeping never reads every customer."""

    customer_id = models.BigIntegerField(primary_key=True)


class ProfileCheckBackfill(models.Model):
    """How far the history housekeeping has walked the profiles made before it queued profiles
    itself (by id), queueing the anonymous ones in ProfileCheck: one row, advanced a batch at a
    time, so profiles earlier event retention left empty are found without a migration reading
    the whole customer table. `done` once it reached the end: later profiles are queued as their
    events, runs or cases go."""

    last_id = models.BigIntegerField(default=0)
    done = models.BooleanField(default=False)
