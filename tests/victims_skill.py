"""Objects of the victim organization for the route walk (tests/test_route_isolation.py):
one real id per path parameter name the skill routes use."""

from __future__ import annotations

from tests.factories import Org


def skill_victim_ids(victim: Org) -> dict[str, str]:
    return {}
