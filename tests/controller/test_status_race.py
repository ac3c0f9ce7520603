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
from default_policy_operator.kube.client import ApiError, Resource


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


class RefusingApi:
    """Refuses the first status write with 503 and a Retry-After, then accepts."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self.attempts: list[float] = []

    async def patch(self, resource: Resource, name: str, body: Any, **_: Any) -> dict[str, Any]:
        self.attempts.append(asyncio.get_running_loop().time())
        if len(self.attempts) == 1:
            raise ApiError(503, "ServiceUnavailable", "busy", retry_after=self.retry_after)
        return {}


def test_a_refused_status_write_is_tried_again_and_not_before_retry_after() -> None:
    """Seen in CI: a status write that ran out of retries was written again by the next round,
    one status interval (1 s) later, although the server had asked for 2 s. And had nothing else
    moved, it would not have been written again at all."""
    world = World(frozenset())
    world.update_profile(profile("a"))
    api = RefusingApi(retry_after=0.4)
    reconciler = Reconciler(world, api, Settings(status_interval=0.05))  # type: ignore[arg-type]

    async def run() -> None:
        reconciler.synced.set()
        reconciler._status_dirty.set()
        loop = asyncio.ensure_future(reconciler._status_loop())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(api.attempts) >= 2:
                break
        loop.cancel()

    asyncio.run(run())
    assert len(api.attempts) == 2, "the refused status was never written again"
    assert api.attempts[1] - api.attempts[0] >= 0.4
