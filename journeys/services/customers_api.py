"""Customer operations behind the management API: look-ups, profile reads, trait updates
(through ingestion, like an identify call), merges (through the identity service) and erasure
or export as background jobs."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.apps import apps
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from journeys.choices import EventType, IdentityKind
from journeys.errors import JourneyError
from journeys.models import ApiToken, Customer, CustomerMerge, Identity, Job, JobKind
from journeys.services.api_jobs import api_job_start
from journeys.timezones import traits_zone_checked


class CustomerNotFound(JourneyError):
    code = "not_found"


class CustomerErased(JourneyError):
    code = "erased"


def customer_writable(*, customer: Customer, field: str = "id") -> Customer:
    """The customer, unless it was erased: a tombstone takes no traits, merges, runs or messages
    (its user id is gone, so anything written would land on a new, unrelated profile)."""
    if customer.erased_at is not None:
        raise CustomerErased(f"customer {customer.pk} was erased on {customer.erased_at:%Y-%m-%d}; "
                             "it takes no new data", field=field)
    return customer


def customers_lookup(*, user_id: str = "", email: str = "", phone: str = "", anonymous_id: str = "") -> QuerySet:
    """Profiles (never absorbed ones) having every identity given; all profiles when none is.

    An email address finds every profile with it: the one its identity points at and any other
    whose profile holds it (a visitor who typed a known customer's address into a form gets a
    profile of their own, never merged by an address anyone can type), by the indexed email
    column in any capitalisation (`journeys.selectors.customers_holding`)."""
    from journeys.selectors import customers_holding
    from journeys.services.identity import phone_lookup_values

    queryset = Customer.objects.filter(merged_into__isnull=True)
    address = email.strip()
    for kind, values in ((IdentityKind.USER_ID, [user_id]), (IdentityKind.EMAIL, [address.lower()]),
                         (IdentityKind.PHONE, phone_lookup_values(phone)), (IdentityKind.ANONYMOUS_ID, [anonymous_id])):
        if values := [v for v in values if v]:
            owners = Identity.objects.filter(kind=kind, value__in=values).values_list("customer_id", flat=True)
            if kind == IdentityKind.EMAIL:
                queryset = queryset.filter(pk__in=set(customers_holding(emails=values, live=False)))
            else:
                queryset = queryset.filter(pk__in=owners)
    return queryset


def customer_get(*, pk: int) -> Customer:
    """A profile by id; the id of a profile merged away leads to its survivor."""
    customer = Customer.objects.filter(pk=pk).first()
    seen: set[int] = set()
    while customer is not None and customer.merged_into_id and customer.pk not in seen:
        seen.add(customer.pk)
        customer = Customer.objects.filter(pk=customer.merged_into_id).first()
    if customer is None:
        raise CustomerNotFound(f"no customer with id {pk}")
    return customer


def customer_profile(*, customer: Customer) -> dict:
    """What the API shows of a profile: ids, identities, stage, traits and consents.

    Consents belong to the channels app: read through the app registry (journeys imports none
    of the other apps)."""
    consents = []
    if apps.is_installed("channels_app"):
        Consent = apps.get_model("channels_app", "Consent")
        consents = [
            {"channel_kind": c.channel_kind, "topic": c.topic.slug if c.topic_id else None, "status": c.status,
             "source": c.source, "updated_at": c.updated_at}
            for c in Consent.objects.filter(customer=customer).select_related("topic").order_by("id")
        ]
    return {
        "id": customer.pk, "user_id": customer.external_id, "email": customer.email, "phone": customer.phone,
        "timezone": customer.timezone, "locale": customer.locale, "stage": customer.stage,
        "traits": customer.traits or {}, "first_seen": customer.first_seen, "last_seen": customer.last_seen,
        "identities": [{"kind": k, "value": v} for k, v in
                       Identity.objects.filter(customer=customer).order_by("kind", "value").values_list("kind", "value")],
        "consents": consents,
        "merged_ids": list(Customer.objects.filter(merged_into=customer).order_by("id").values_list("id", flat=True)),
    }


def customer_traits_set(*, customer: Customer, traits: dict, actor: str, now: datetime | None = None) -> dict:
    """Set traits as an identify call would: ingestion applies them (typed columns, email and
    phone identities) and stores the event, so attribute-change and segment triggers fire.
    Returns {trait: [old, new]} for the traits that changed."""
    from journeys.models import Event
    from journeys.services.ingest import event_ingest, events_parse
    from journeys.services.internal_events import internal_source
    from journeys.services.profiles import customer_update_traits

    now = now or timezone.now()
    # every door checks a zone it is given as the tracking API does (the one stored is left as it is)
    traits = traits_zone_checked(traits, stored=customer.traits)
    anonymous_id = "" if customer.external_id else (
        Identity.objects.filter(customer=customer, kind=IdentityKind.ANONYMOUS_ID).values_list("value", flat=True)
        .order_by("id").first() or "")
    if not customer.external_id and not anonymous_id:  # a profile known only by an address
        return customer_update_traits(customer=customer, traits=traits, reason=f"API: {actor}")
    payload = {"type": EventType.IDENTIFY, "traits": traits, "messageId": f"api-{uuid.uuid4()}",
               "context": {"library": {"name": "journeys-api"}, "actor": actor}}
    if customer.external_id:
        payload["userId"] = customer.external_id
    else:
        payload["anonymousId"] = anonymous_id
    result = event_ingest(source=internal_source(), events=events_parse(payloads=[payload], received_at=now))
    changes = Event.objects.filter(pk__in=result.event_ids).values_list("changes", flat=True).first()
    customer.refresh_from_db()
    return changes or {}


@transaction.atomic
def customer_edit(*, customer: Customer, changed: list[str], actor: str) -> dict:
    """Save an edit of a profile made in the console as the API's trait updates are saved:
    `customer` holds the values typed, `changed` names the fields changed. Traits, and an email,
    phone, timezone or locale typed, go through customer_traits_set (an identify: attribute-change
    and segment triggers fire, identities follow, the stored event names `actor`); a trait removed
    is set to null, as an identify clears one. What an identify leaves alone (the user id, a column
    emptied, the columns of a profile known only by an address) is then written as typed.
    Returns {trait: [old, new]} for the traits that changed."""
    from journeys.services.identity import PROFILE_TRAIT_FIELDS

    stored = customer_writable(customer=Customer.objects.select_for_update().get(pk=customer.pk))
    traits = {}
    if "traits" in changed:
        traits = {k: v for k, v in customer.traits.items() if k not in stored.traits or stored.traits[k] != v}
        traits.update({k: None for k, v in stored.traits.items() if k not in customer.traits and v is not None})
    for trait, column in PROFILE_TRAIT_FIELDS.items():
        if column in changed and getattr(customer, column):
            traits[trait] = getattr(customer, column)
    changes = customer_traits_set(customer=stored, traits=traits, actor=actor) if traits else {}
    typed = [name for name in changed if name != "traits" and getattr(stored, name) != getattr(customer, name)]
    for name in typed:
        setattr(stored, name, getattr(customer, name))
    if typed:
        stored.save(update_fields=[*typed, "updated_at"])
    customer.refresh_from_db()
    return changes


@transaction.atomic
def customers_merge(*, target: Customer, merged: Customer, actor: str, reason: str = "") -> CustomerMerge:
    """Fold `merged` into `target` through the identity service (recorded with `actor`)."""
    from journeys.services.identity import customer_merge

    if target.pk == merged.pk:
        raise JourneyError("is the customer itself; name another customer", field="merge")
    rows = {c.pk: c for c in Customer.objects.select_for_update().filter(pk__in=[target.pk, merged.pk]).order_by("pk")}
    target, merged = rows[target.pk], rows[merged.pk]
    for name, row in (("id", target), ("merge", merged)):
        if row.merged_into_id:
            raise JourneyError(f"customer {row.pk} was already merged into {row.merged_into_id}", field=name)
    return customer_merge(target=target, merged=merged, reason=(reason or "merged through the API")[:255],
                          actor=actor[:255])


def customer_erase_request(*, customer: Customer, token: ApiToken, key: str, reason: str) -> tuple[Job, bool]:
    """Erase a customer in the background (the same erasure as `manage.py erase_customer`)."""
    params = {"customer_id": customer.pk, "actor": token.actor, "reason": reason[:255]}
    # The customer is what the request is about: a retry with another reason finds the first job.
    return api_job_start(kind=JobKind.ERASE, token=token, params=params, key=f"erase:{key}",
                         request={"customer_id": customer.pk})


def customer_export_request(*, customer: Customer, token: ApiToken, key: str) -> tuple[Job, bool]:
    """Export everything held about a customer in the background (kept 24 h, like console exports)."""
    params = {"customer_id": customer.pk}
    return api_job_start(kind=JobKind.EXPORT, token=token, params=params, key=f"export:{key}", request=params)


def customer_for_address(*, kind: str, value: str, now: datetime | None = None) -> Customer:
    """The customer an email address or phone number belongs to; a new profile known only by
    that address when nobody has it yet (so consent and erasure apply to it like to anyone).
    A phone number is stored normalised and matched as `phone_owner` does."""
    from journeys.services.identity import IdentityMap, phone_normalize, phone_owner

    if kind == IdentityKind.EMAIL:
        value = value.strip().lower()
        owner = Identity.objects.filter(kind=kind, value=value).values_list("customer_id", flat=True).first()
    else:
        owner, value = phone_owner(value), phone_normalize(value)
    if owner is not None:
        return customer_get(pk=owner)
    now = now or timezone.now()
    with transaction.atomic():
        created = Customer.objects.create(email=value if kind == IdentityKind.EMAIL else "",
                                          phone=value if kind == IdentityKind.PHONE else "",
                                          first_seen=now, last_seen=now)
        owner = IdentityMap(set()).claim(kind, value, created)
        if owner.pk != created.pk:  # a concurrent request claimed the address first: theirs wins
            Customer.objects.filter(pk=created.pk).delete()
    return customer_get(pk=owner.pk)
