"""A namespace created while a profile's new version is on trial gets that version at once.

Seen in the bench: while a rollout ran, one new namespace in a few hundred waited 3 s (N = 1,000),
15 s (5,000) or 60 s (20,000) for the new version's policies. A namespace that arrives while the
version is still being rendered is planned at once with the version in force (it is covered);
when the trial ends, every scope is re-planned in bulk, in no particular order, and the new
namespace waited its turn behind thousands of others for the new version.
"""

from __future__ import annotations

import asyncio
from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.core.render import RenderResult, RenderTask
from default_policy_operator.core.world import World
from tests.inline_render import render_now


class GatedPool:
    """Renders in this process, once ``gate`` is open: a trial that takes its time."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def render(self, tasks: list[RenderTask], urgent: bool = False) -> list[RenderResult]:
        await self.gate.wait()
        return render_now(tasks)


def namespace(name: str) -> Namespace:
    return Namespace(name, {NAMESPACE_NAME_LABEL: name}, {})


def body(generation: int, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "base", "uid": "u", "generation": generation}, "spec": spec}


def test_a_namespace_created_during_a_trial_is_planned_first_when_it_ends() -> None:
    asyncio.run(scenario())


async def scenario() -> None:
    pool = GatedPool()
    world = World(frozenset())
    for name in ("team-a", "team-b"):
        world.set_namespace(namespace(name))
    reconciler = Reconciler(world, None, Settings(), pool)  # type: ignore[arg-type]
    pool.gate.set()
    reconciler.profile_event("ADDED", body(1))
    await asyncio.sleep(0.01)  # its trial: in force
    assert world.profiles["base"].profile is not None
    reconciler._dirty.clear(), reconciler._bulk.clear()  # everything planned and written

    pool.gate.clear()
    reconciler.profile_event("MODIFIED", body(2, policies={"allowDNS": {"enabled": False}}))
    reconciler._namespace_seen(namespace("new-team"))  # arrives while version 2 renders
    reconciler._dirty.clear()  # planned at once, with version 1 (covered meanwhile)
    pool.gate.set()
    await asyncio.sleep(0.01)  # version 2 comes into force: every scope re-planned
    assert world.profiles["base"].profile.generation == 2  # type: ignore[union-attr]
    assert "new-team" in reconciler._dirty  # before the bulk, not somewhere in it
    assert "team-a" not in reconciler._dirty  # the others wait in the bulk, as before
    assert {"team-a", "team-b", "new-team"} <= reconciler._bulk


def test_a_profile_deleted_during_its_trial_leaves_nothing_waiting() -> None:
    async def deleted() -> None:
        pool = GatedPool()
        reconciler = Reconciler(World(frozenset()), None, Settings(), pool)  # type: ignore[arg-type]
        reconciler.profile_event("ADDED", body(1))
        reconciler._namespace_seen(namespace("new-team"))
        reconciler.profile_event("DELETED", body(1))
        reconciler._dirty.clear()
        pool.gate.set()
        await asyncio.sleep(0.01)  # the trial's renders come back for a profile that is gone
        assert (reconciler._trials, reconciler._seen_during_trial) == ({}, set())
        assert "new-team" in reconciler._dirty

    asyncio.run(deleted())
