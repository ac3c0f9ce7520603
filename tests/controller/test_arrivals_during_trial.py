"""A namespace created after a profile change gets the new version at once, not with the bulk.

Seen in the bench: while a rollout ran, one new namespace in a few hundred waited 3 s (N = 1,000),
15 s (5,000) or 60 s (20,000) for the new version's policies. A namespace that arrives while the
version is still being rendered is planned at once with the version in force (it is covered);
when the trial ends, every scope is re-planned in bulk, in no particular order, and the new
namespace waited its turn behind thousands of others for the new version. The same when its
event came before the profile change's own (two watches, no order between them).
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


def namespace(name: str, version: str) -> Namespace:
    return Namespace(name, {NAMESPACE_NAME_LABEL: name}, {}, resource_version=version)


def body(generation: int, version: str, **spec: Any) -> dict[str, Any]:
    meta = {"name": "base", "uid": "u", "generation": generation, "resourceVersion": version}
    return {"metadata": meta, "spec": spec}


async def running(pool: GatedPool) -> Reconciler:
    """A reconciler with version 1 of a profile in force over two namespaces, all planned."""
    world = World(frozenset())
    for name, version in (("team-a", "5"), ("team-b", "6")):
        world.set_namespace(namespace(name, version))
    reconciler = Reconciler(world, None, Settings(), pool)  # type: ignore[arg-type]
    pool.gate.set()
    reconciler.profile_event("ADDED", body(1, "10"))
    await asyncio.sleep(0.01)  # its trial: in force
    assert world.profiles["base"].profile is not None
    reconciler.synced.set()
    reconciler._dirty.clear(), reconciler._bulk.clear()  # everything planned and written
    return reconciler


def test_namespaces_created_after_a_profile_change_are_planned_first_when_it_is_in_force() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        reconciler = await running(pool)
        pool.gate.clear()
        reconciler._namespace_seen(namespace("racer", "22"))  # created after the change, seen first
        reconciler.profile_event(
            "MODIFIED", body(2, "20", policies={"allowDNS": {"enabled": False}})
        )
        reconciler._namespace_seen(namespace("new-team", "21"))  # arrives while version 2 renders
        reconciler._namespace_seen(namespace("old-team", "19"))  # seen late, but from before
        reconciler._dirty.clear()  # planned at once, with version 1 (covered meanwhile)
        pool.gate.set()
        await asyncio.sleep(0.01)  # version 2 comes into force: every scope re-planned
        assert reconciler.world.profiles["base"].generation == 2
        assert reconciler._dirty == {"racer", "new-team"}  # before the bulk, not somewhere in it
        assert {"team-a", "team-b", "old-team", "racer", "new-team"} <= reconciler._bulk

    asyncio.run(scenario())


def test_a_profile_deleted_during_its_trial_leaves_nothing_waiting() -> None:
    async def scenario() -> None:
        pool = GatedPool()
        reconciler = await running(pool)
        pool.gate.clear()
        reconciler.profile_event(
            "MODIFIED", body(2, "20", policies={"allowDNS": {"enabled": False}})
        )
        reconciler._namespace_seen(namespace("new-team", "21"))
        reconciler.profile_event("DELETED", body(2, "23"))
        reconciler._dirty.clear()
        pool.gate.set()
        await asyncio.sleep(0.01)  # the trial's renders come back for a profile that is gone
        assert (reconciler._trials, reconciler._trial_since) == ({}, "")
        assert reconciler._dirty == {"new-team"}

    asyncio.run(scenario())


def test_at_start_the_bulk_paces_everything() -> None:
    """Before the first full pass every namespace may be newer than the profile: planning them
    all at once, unpaced, would queue every write of the cluster together."""

    async def scenario() -> None:
        pool = GatedPool()
        world = World(frozenset())
        world.set_namespace(namespace("team-a", "50"))
        reconciler = Reconciler(world, None, Settings(), pool)  # type: ignore[arg-type]
        reconciler.profile_event("ADDED", body(1, "10"))
        reconciler._dirty.clear()
        pool.gate.set()
        await asyncio.sleep(0.01)
        assert reconciler._dirty == set()
        assert "team-a" in reconciler._bulk

    asyncio.run(scenario())
