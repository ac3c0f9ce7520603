"""A write that fails in an unforeseen way is tried again; it is never left for the resync.

Seen on CI under API Priority and Fairness: a create answered 409 sends the operator to read
the object that holds the name, and that read was refused (429) past its retries. The error
left the writer, the scope was never planned again, and the namespace stayed without its
deny-all until the next full resync. The API here answers a create with 409 and then refuses
every read, once; the namespace must get its policies without any resync.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from default_policy_operator.controller import reconciler as reconciler_module
from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.kube.client import ApiError, Resource
from tests.inline_render import InlineWorld


class RefusesOneRead:
    """The first create is a 409 and the read that follows a 429; then all is well."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.refused_create = False
        self.refused_read = False
        self.version = 0

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        if not self.refused_create:
            self.refused_create = True
            raise ApiError(409, "AlreadyExists", "already exists")
        self.version += 1
        self.created.append(body["metadata"]["name"])
        return {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}

    async def get(self, resource: Resource, name: str, namespace: str = "") -> dict[str, Any]:
        if not self.refused_read:
            self.refused_read = True
            raise ApiError(429, "TooManyRequests", "too many requests")
        raise ApiError(404, "NotFound", "not found")

    async def post_event(self, *_: Any, **__: Any) -> None:
        return None


async def scenario() -> list[str]:
    world = InlineWorld(frozenset())
    world.set_namespace(Namespace("team-a", {NAMESPACE_NAME_LABEL: "team-a"}, {}))
    world.update_profile({"metadata": {"name": "p", "uid": "uid-p", "generation": 1}, "spec": {}})
    api = RefusesOneRead()
    reconciler = Reconciler(world, api, Settings(workers=1))  # type: ignore[arg-type]
    tasks = [
        asyncio.create_task(reconciler._reconcile_loop()),
        asyncio.create_task(reconciler._writer()),
    ]
    reconciler.mark(["team-a"])
    try:
        for _ in range(200):
            if len(api.created) == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
    return sorted(api.created)


def test_a_write_that_failed_unexpectedly_is_planned_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconciler_module, "PLAN_RETRY", 0.05)
    created = asyncio.run(scenario())
    assert created == ["dpo-allow-dns", "dpo-allow-kube-system", "dpo-deny-all"]
