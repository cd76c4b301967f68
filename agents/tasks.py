"""django-q2 tasks: thin wrappers that take ids and call the services."""

from __future__ import annotations

from agents.services import routing


def case_route(case_id: int) -> str:
    return routing.case_route(case_id=case_id).status


def cases_route_waiting() -> int:
    return routing.cases_route_waiting()


def sla_tick() -> dict:
    """Every minute: SLA breaches first (re-route / raise priority), then the queues."""
    stats = routing.cases_sla_check()
    stats["routed"] = routing.cases_route_waiting()
    return stats
