"""kopf's delete handler, run late, must not touch a new profile of the same name.

Found by the bench (N = 5,000): its CalicoGlobalNetworkPolicy profile and then its
ClusterNetworkPolicy profile share a name. The reconciler cleaned up the first one and removed
its finalizer through its own informer; kopf's watch, which runs on its own, delivered the
deletion later and called the finalizer's clean-up by name. By then the name was the new
profile's: the clean-up marked it deleting, and it governed no namespace while reporting Ready.
The clean-up is now the deleted object's, by uid.
"""

from __future__ import annotations

import asyncio
from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import FINALIZER, NAMESPACE_NAME_LABEL
from default_policy_operator.kube.client import Resource
from tests.inline_render import InlineWorld


class RecordingApi:
    """Creates succeed; deletes and patches (the finalizer's release) are recorded."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, Any]] = []
        self.deleted: list[str] = []
        self.version = 0

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        return {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}

    async def delete(self, resource: Resource, name: str, **_: Any) -> None:
        self.deleted.append(name)

    async def patch(self, resource: Resource, name: str, body: Any, **_: Any) -> dict[str, Any]:
        self.patches.append((name, body))
        return {}

    async def post_event(self, *_: Any, **__: Any) -> None:
        return None


def new_profile(world: InlineWorld, uid: str = "uid-new") -> None:
    """Profile ``p`` (selecting every namespace) as the informer admits it, finalizer on."""
    world.update_profile(
        {"metadata": {"name": "p", "uid": uid, "generation": 1}, "spec": {"namespaceSelector": {}}}
    )
    world.profiles["p"].metadata["finalizers"] = [FINALIZER]


def start_loops(reconciler: Reconciler) -> list[asyncio.Task[None]]:
    """The planner and one writer, as the runtime starts them."""
    return [
        asyncio.create_task(reconciler._reconcile_loop()),
        asyncio.create_task(reconciler._writer()),
    ]


async def late_handler() -> tuple[InlineWorld, RecordingApi]:
    world = InlineWorld(frozenset())
    world.set_namespace(Namespace("team-a", {NAMESPACE_NAME_LABEL: "team-a"}, {}))
    new_profile(world)
    api = RecordingApi()
    reconciler = Reconciler(world, api, Settings(workers=1))  # type: ignore[arg-type]
    tasks = start_loops(reconciler)
    reconciler.synced.set()
    reconciler.mark(["team-a"])
    await asyncio.wait_for(reconciler.idle(), 5)
    # kopf's handler for the profile "p" that was deleted before this one was created
    await asyncio.wait_for(reconciler.finalizer.wait("p", "uid-old"), 5)
    await asyncio.wait_for(reconciler.idle(), 5)
    for task in tasks:
        task.cancel()
    return world, api


def assert_new_profile_untouched(world: InlineWorld, api: RecordingApi) -> None:
    assert not world.profiles["p"].deleting, "the new profile was taken for the deleted one"
    assert api.deleted == [], "the new profile's policies were deleted"
    assert api.patches == [], "the new profile's finalizer was removed"


def test_a_late_delete_handler_leaves_the_new_profile_of_that_name_alone() -> None:
    world, api = asyncio.run(late_handler())
    assert_new_profile_untouched(world, api)
    governor = world.governor(world.namespaces["team-a"])
    assert governor is not None
    assert governor.name == "p"


async def new_profile_while_cleaning() -> tuple[InlineWorld, RecordingApi]:
    """kopf's handler for the old ``p`` starts before the informer knows any ``p``; the new
    ``p`` arrives, and is written, while that clean-up waits for the reconciler."""
    world = InlineWorld(frozenset())
    world.set_namespace(Namespace("team-a", {NAMESPACE_NAME_LABEL: "team-a"}, {}))
    api = RecordingApi()
    reconciler = Reconciler(world, api, Settings(workers=1))  # type: ignore[arg-type]
    reconciler.synced.set()
    cleaning = asyncio.create_task(reconciler.finalizer.wait("p", "uid-old"))
    for _ in range(3):
        await asyncio.sleep(0)  # it passes its first check and waits for the reconciler
    new_profile(world)
    tasks = start_loops(reconciler)
    reconciler.mark(["team-a"])
    await asyncio.wait_for(cleaning, 5)
    await asyncio.wait_for(reconciler.idle(), 5)
    for task in tasks:
        task.cancel()
    return world, api


def test_a_clean_up_stops_when_a_new_profile_takes_the_name_meanwhile() -> None:
    world, api = asyncio.run(new_profile_while_cleaning())
    assert_new_profile_untouched(world, api)
    assert api.version == 3, "the new profile's three policies were written"


async def forget_on_relist() -> bool:
    world = InlineWorld(frozenset())
    world.update_profile(
        {
            "metadata": {"name": "p", "uid": "uid-1", "generation": 1},
            "spec": {"namespaceSelector": {}},
        }
    )
    reconciler = Reconciler(world, RecordingApi(), Settings(workers=1))  # type: ignore[arg-type]
    task = reconciler.finalizer.start("p", "uid-1")  # waits for the first sync, for ever here
    # a relist no longer shows "p": the delete it infers carries a name and a version only
    reconciler.profile_event("DELETED", {"metadata": {"name": "p", "resourceVersion": "9"}})
    for _ in range(2):
        await asyncio.sleep(0)  # the cancellation lands
    return task.cancelled()  # (asyncio.run would cancel it on the way out: ask here)


def test_a_delete_inferred_from_a_relist_ends_the_clean_up_too() -> None:
    assert asyncio.run(forget_on_relist()), "the clean-up of the profile gone runs on"
