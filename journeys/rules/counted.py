"""Which event names rules count with events_in_last: the refreshes that read only the customers
due mark the customers of such events (journeys.services.rechecks), and the engine hears them
(journeys.engine.listeners)."""

from __future__ import annotations

import functools


def counted_event_names(rules, among=None) -> set[str | None]:
    """The event names these rules count with events_in_last (None: a name read from the data,
    which may be any), limited to `among` when given."""
    names: set[str | None] = set().union(*(_counted_in(rule) for rule in rules))
    if among is not None and None not in names:
        names &= set(among)
    return names


@functools.lru_cache(maxsize=256)
def _counted_in(rule: str) -> frozenset[str | None]:
    """One rule's counted names, parsed once (the event processor asks on every batch)."""
    from journeys.rules import RuleSyntaxError
    from journeys.rules.nodes import Call, Const, children
    from journeys.rules.parser import parse

    if "events_in_last" not in rule:
        return frozenset()
    try:
        stack = [parse(rule).tree]
    except RuleSyntaxError:
        return frozenset({None})  # it may count anything; the refresh says what is wrong with it
    names: set[str | None] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, Call) and node.name == "events_in_last":
            first = node.args[0] if node.args else None
            names.add(first.value if isinstance(first, Const) and isinstance(first.value, str) else None)
        stack.extend(children(node))
    return frozenset(names)
