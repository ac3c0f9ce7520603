"""Orphan is exact: a create in flight when a profile is deleted is released, not lost.

Issue #10.11: the finalizer of an ``Orphan`` profile listed the profile's objects while a create
was still on its way; the object landed after the list, kept our labels, and was then deleted as
belonging to a profile that no longer existed. The finalizer now drains the profile's writes
first. The API here answers like the apiserver, but holds creates until the test lets them go.
"""

from __future__ import annotations

import asyncio
from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.kube.client import NETWORK_POLICIES, Resource
from tests.inline_render import InlineWorld


class SlowCreates:
    """Creates wait for ``release``; lists show what was created; patches are recorded."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.created: list[dict[str, Any]] = []
        self.released: list[str] = []
        self.version = 0

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        await self.release.wait()
        self.version += 1
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        self.created.append(stored)
        return stored

    async def list_objects(self, resource: Resource, **_: Any) -> list[dict[str, Any]]:
        if resource is not NETWORK_POLICIES:
            return []  # no Calico objects in this scenario
        return [b for b in self.created if b["metadata"]["name"] not in self.released]

    async def patch(self, resource: Resource, name: str, body: Any, **_: Any) -> dict[str, Any]:
        self.released.append(name)
        return {}

    async def post_event(self, *_: Any, **__: Any) -> None:
        return None


async def scenario() -> tuple[bool, list[str]]:
    world = InlineWorld(frozenset())
    world.set_namespace(Namespace("team-a", {NAMESPACE_NAME_LABEL: "team-a"}, {}))
    world.update_profile(
        {
            "metadata": {"name": "p", "uid": "uid-p", "generation": 1},
            "spec": {"deletionPolicy": "Orphan"},
        }
    )
    api = SlowCreates()
    reconciler = Reconciler(world, api, Settings(workers=2))  # type: ignore[arg-type]
    writers = [asyncio.create_task(reconciler._writer()) for _ in range(2)]
    await reconciler.reconcile({"team-a"})
    await asyncio.sleep(0.01)  # the writers pick up the creates and wait on the API
    world.profiles["p"].deleting = True
    orphaning = asyncio.create_task(reconciler.orphan("p"))
    await asyncio.sleep(0.05)
    waited = not orphaning.done()
    api.release.set()
    await asyncio.wait_for(orphaning, 5)
    for writer in writers:
        writer.cancel()
    return waited, sorted(api.released)


def test_orphan_waits_for_writes_in_flight_and_releases_them() -> None:
    waited, released = asyncio.run(scenario())
    assert waited, "the finalizer listed while creates were still in flight"
    assert released == ["dpo-allow-dns", "dpo-allow-kube-system", "dpo-deny-all"]
