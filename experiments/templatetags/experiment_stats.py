"""How the report page writes its statistics."""

from __future__ import annotations

from django import template

register = template.Library()

SMALLEST_SHOWN = 1e-4


@register.filter
def pvalue(value: float | None) -> str:
    """A p-value with 4 decimals, and "< 0.0001" below that: a tiny p is not 0.0000."""
    if value is None:
        return "-"
    if value < SMALLEST_SHOWN:
        return f"< {SMALLEST_SHOWN:.4f}"
    return f"{value:.4f}"
