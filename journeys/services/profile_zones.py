"""Set the profile zone from a stored `timezone` trait the previous release could not read.

Release 0921fe7 and earlier read a trait zone only in its exact spelling: a profile identified
with `asia/kolkata` or `America/New_York ` kept the trait as sent and stayed on UTC, and
nothing reads stored traits again. The current code reads those spellings (journeys.timezones);
`timezones_normalise` gives such profiles the zone their trait names, as an identify of theirs
would now.

Set-based and bounded, as `journeys.services.phones`: the customer table is read in key ranges
of `chunk` ids, only the rows whose trait differs from their zone come back, and each range's
changes are a handful of UPDATEs (one per spelling met in it) in one transaction. Rows already
on their zone are not written, so running it again writes nothing. A trait that names no zone
(`+05:30`, `GMT+5`) is left alone and counted: those customers keep their zone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F, Max, Min
from django.db.models.fields.json import KT
from django.utils import timezone

from journeys.timezones import zone_canonical

CHUNK = 5000  # customer ids per range: one read and a few UPDATEs, committed together


@dataclass
class ZonesReport:
    dry_run: bool = False
    changed: int = 0  # profiles whose zone was (or, in a dry run, would be) set
    moved: Counter = field(default_factory=Counter)  # (trait as stored, zone) -> profiles
    unreadable: Counter = field(default_factory=Counter)  # trait that names no zone -> profiles

    def lines(self, limit: int = 20) -> list[str]:
        """The spellings met, most frequent first: what was set, and what names no zone."""
        out = [f"{spelling!r} -> {zone}: {count}" for (spelling, zone), count in self.moved.most_common(limit)]
        out += [f"{spelling!r} names no zone (left as it is): {count}"
                for spelling, count in self.unreadable.most_common(limit)]
        return out

    def summary(self) -> str:
        verb = "would be set" if self.dry_run else "set"
        text = f"{self.changed} profile zones {verb} from their timezone trait"
        if self.unreadable:
            text += (f"; {sum(self.unreadable.values())} profiles hold a timezone trait that names no zone "
                     f"({len(self.unreadable)} spellings, e.g. {self.unreadable.most_common(1)[0][0]!r}): "
                     "they keep their zone until an identify sends one")
        return text


def timezones_normalise(*, chunk: int = CHUNK, dry_run: bool = False) -> ZonesReport:
    """Give every live profile the zone its `timezone` trait names (see the module's docstring)
    where its zone column does not already hold it. Idempotent; each key range is its own
    transaction. With `dry_run`, counts what it would set and writes nothing."""
    from journeys.models import Customer

    report = ZonesReport(dry_run=dry_run)
    live = Customer.objects.filter(merged_into__isnull=True, erased_at__isnull=True)
    bounds = Customer.objects.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return report
    for low in range(bounds["low"], bounds["high"] + 1, chunk):
        in_range = live.filter(pk__gte=low, pk__lt=low + chunk, traits__has_key="timezone")
        differing = (in_range.annotate(zone_trait=KT("traits__timezone")).exclude(zone_trait=F("timezone"))
                     .values_list("pk", "zone_trait", "timezone"))
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for pk, spelling, column in differing:
            if spelling is None or spelling == "":
                continue
            zone = zone_canonical(spelling)
            if zone is None:
                report.unreadable[spelling] += 1
            elif zone != column:
                groups[(spelling, zone)].append(pk)
        if not groups:
            continue
        with transaction.atomic():
            for (spelling, zone), pks in groups.items():
                if dry_run:
                    done = len(pks)
                else:  # the trait is checked again: a profile an identify changed meanwhile is left to it
                    done = in_range.filter(pk__in=pks, traits__timezone=spelling).exclude(timezone=zone) \
                        .update(timezone=zone, updated_at=timezone.now())
                report.changed += done
                report.moved[(spelling, zone)] += done
    return report
