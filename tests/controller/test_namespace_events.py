"""The namespace record the reconciler keeps follows the namespace's deletionTimestamp."""

from __future__ import annotations

from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.world import World


def namespace(version: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "team-a", "resourceVersion": version, "labels": {}, **meta}}


def test_a_deletion_timestamp_makes_the_namespace_terminating() -> None:
    world = World(frozenset())
    reconciler = Reconciler(world, None, Settings())  # type: ignore[arg-type]  # no API call
    reconciler.namespace_event("ADDED", namespace("1"))
    assert world.namespaces["team-a"].terminating is False
    reconciler.namespace_event("MODIFIED", namespace("2", deletionTimestamp="2026-01-01T00:00:00Z"))
    assert world.namespaces["team-a"].terminating is True
