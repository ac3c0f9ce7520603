"""A profile that goes away while the status loop is awaiting a write must not abort the round.

Found by the kill -9 test (issue #7, part 1): a deleted profile's finalizer finished while
``publish_status`` awaited another profile's status patch; the loop then looked the removed
profile up (``KeyError`` in ``status_for``), logged a traceback and skipped every later profile's
status for that round.
"""

from __future__ import annotations

import asyncio
from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import Resource


class VanishingApi:
    """Answers status patches; the first one lets the watch deliver a profile's deletion."""

    def __init__(self, world: World, vanishing: str) -> None:
        self.world = world
        self.vanishing = vanishing
        self.patched: list[str] = []

    async def patch(self, resource: Resource, name: str, body: Any, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.world.remove_profile(self.vanishing)  # its DELETED event arrives meanwhile
        self.patched.append(name)
        return {}


def profile(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {"namespaceSelector": {"matchLabels": {"team": name}}},
    }


def test_a_profile_removed_during_a_status_write_is_skipped() -> None:
    world = World(frozenset())
    for name in ("a", "b", "c"):
        world.update_profile(profile(name))
    api = VanishingApi(world, "b")
    reconciler = Reconciler(world, api, Settings())  # type: ignore[arg-type]
    asyncio.run(reconciler.status.publish())
    assert api.patched == ["a", "c"]
