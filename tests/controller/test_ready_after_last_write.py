"""A profile says Ready once its last write has landed, with no other event to prompt it.

The status loop publishes when something marked the status dirty. Planning marks it, and so do
watch events, but the echo of our own write is absorbed without re-planning. So when the last
write of a rollout landed after the last publish, nothing was left to mark the status: the
profile kept saying "Reconciling" until some unrelated event or the next full resync (ten
minutes by default).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.kube.client import Resource
from tests.inline_render import InlineWorld

WRITE_SECONDS = 0.1  # longer than the status interval: the status loop publishes meanwhile


class SlowApi:
    """Accepts every create after a moment; records each status written."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.version = 0

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(WRITE_SECONDS)
        self.version += 1
        created = copy.deepcopy(body)
        created["metadata"].update(resourceVersion=str(self.version), uid=f"u{self.version}")
        self.created.append(created)
        return copy.deepcopy(created)

    async def patch(self, resource: Resource, name: str, body: Any, **_: Any) -> dict[str, Any]:
        if "status" in body:  # (the other patch records the valid spec: not of interest here)
            self.statuses.append(body["status"])
        return {}


def ready(status: dict[str, Any]) -> str:
    return str(status["conditions"][0]["status"])


async def until_published(api: SlowApi, managed: int) -> None:
    """Until the last status written says Ready with ``managed`` objects (or a few seconds)."""
    for _ in range(200):  # a write takes 0.1 s; allow many times that
        await asyncio.sleep(0.02)
        last = api.statuses[-1] if api.statuses else None
        if last and ready(last) == "True" and last["managedObjects"] == managed:
            return


def test_the_last_write_landing_publishes_ready() -> None:
    """After a rollout (the profile's creation) and after a repair (a policy deleted)."""
    world = InlineWorld(frozenset())
    world.set_namespace(Namespace("team-a", {NAMESPACE_NAME_LABEL: "team-a"}, {}))
    api = SlowApi()
    settings = Settings(workers=1, status_interval=0.02)
    reconciler = Reconciler(world, api, settings)  # type: ignore[arg-type]
    after_rollout: list[dict[str, Any]] = []

    async def run() -> None:
        reconciler.synced.set()  # the operator has been running for a while
        reconciler.listed.set()
        loops = [
            asyncio.ensure_future(reconciler._reconcile_loop()),
            asyncio.ensure_future(reconciler._writer()),
            asyncio.ensure_future(reconciler._status_loop()),
        ]
        meta = {"name": "base", "uid": "uid-base", "generation": 1}
        reconciler.profile_event("ADDED", {"metadata": meta, "spec": {}})
        await until_published(api, managed=3)
        after_rollout.extend(api.statuses)
        reconciler.object_event("DELETED", api.created[0])  # someone deletes dpo-deny-all
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(api.statuses) > len(after_rollout) and api.version == 4:
                break
        await until_published(api, managed=3)
        for loop in loops:
            loop.cancel()

    asyncio.run(run())
    assert ready(after_rollout[0]) == "False"
    assert ready(after_rollout[-1]) == "True", after_rollout[-1]["conditions"][0]
    assert api.version == 4, "the deleted policy was not created again"
    repair = api.statuses[len(after_rollout) :]
    assert repair, "no status published after the policy was deleted"
    assert (ready(repair[-1]), repair[-1]["managedObjects"]) == ("True", 3), repair[-1]
