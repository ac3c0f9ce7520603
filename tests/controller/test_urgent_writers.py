"""A new namespace's writes do not wait behind a rollout that keeps the writers busy.

Measured at 5,000 namespaces: while a profile change rolled out, a new namespace waited
p50 413 ms for its policies with 64 writers all taking bulk work, because its writes queued at
the API server behind the rollout's. Now a quarter of the writers serve only event-driven work
and a quarter take bulk work only when no event-driven write came for ``YIELD_WINDOW``. The API
here never answers the rollout's creates (a server saturated by it) and answers a new
namespace's at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from default_policy_operator.controller import reconciler as reconciler_module
from default_policy_operator.controller.reconciler import Reconciler, Role, Settings, writer_roles
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.kube.client import Resource
from tests.inline_render import InlineWorld

ARRIVAL = "arrival"
POLICIES = ["dpo-allow-dns", "dpo-allow-kube-system", "dpo-deny-all"]


class SaturatedByBulk:
    """Creates in the rollout's namespaces never answer; the arrival's answer at once."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.hanging = 0
        self.changed = asyncio.Event()

    async def create(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        if body["metadata"]["namespace"] != ARRIVAL:
            self.hanging += 1
            self.changed.set()
            await asyncio.Event().wait()
        self.created.append(body["metadata"]["name"])
        self.changed.set()
        return {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}

    async def post_event(self, *_: Any, **__: Any) -> None:
        return None

    async def until(self, done: Any) -> None:
        while not done():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)


def namespace(name: str) -> Namespace:
    return Namespace(name, {NAMESPACE_NAME_LABEL: name}, {})


def setting() -> tuple[InlineWorld, SaturatedByBulk, Reconciler]:
    world = InlineWorld(frozenset())
    for i in range(50):
        world.set_namespace(namespace(f"rollout-{i}"))
    world.update_profile({"metadata": {"name": "p", "uid": "uid-p", "generation": 1}, "spec": {}})
    api = SaturatedByBulk()
    return world, api, Reconciler(world, api, Settings(workers=8))  # type: ignore[arg-type]


async def arrival_during_a_stuck_rollout() -> tuple[list[str], int]:
    world, api, reconciler = setting()
    tasks = [asyncio.create_task(reconciler._reconcile_loop()), *reconciler.start_writers()]
    try:
        reconciler.mark_all()
        await api.until(lambda: api.hanging == 6)  # every writer that takes bulk work is held
        world.set_namespace(namespace(ARRIVAL))
        reconciler.mark([ARRIVAL])
        await api.until(lambda: len(api.created) == 3)
        return sorted(api.created), api.hanging
    finally:
        for task in tasks:
            task.cancel()


def test_an_arrival_gets_its_policies_while_every_bulk_writer_is_stuck() -> None:
    created, hanging = asyncio.run(arrival_during_a_stuck_rollout())
    assert created == POLICIES
    assert hanging == 6  # the two writers kept for events never took bulk work


async def rollout_after_an_arrival() -> list[int]:
    """How many bulk writes are in flight just after an event-driven write, then later."""
    world, api, reconciler = setting()
    tasks = [asyncio.create_task(reconciler._reconcile_loop()), *reconciler.start_writers()]
    try:
        world.set_namespace(namespace(ARRIVAL))
        reconciler.mark([ARRIVAL])
        await api.until(lambda: len(api.created) == 3)
        reconciler.mark_all()
        await api.until(lambda: api.hanging == 4)
        await asyncio.sleep(0.1)  # well inside the window: the yielding writers still wait
        inside = api.hanging
        await api.until(lambda: api.hanging == 6)  # the window passed: they take bulk work
        return [inside, api.hanging]
    finally:
        for task in tasks:
            task.cancel()


def test_the_rollout_backs_off_while_events_come(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "YIELD_WINDOW", 2.0)  # a loaded CI host stalls less
    assert asyncio.run(rollout_after_an_arrival()) == [4, 6]


def test_roles_by_quarters() -> None:
    assert writer_roles(8) == [Role.EVENTS] * 2 + [Role.YIELDING] * 2 + [Role.BULK] * 4
    assert writer_roles(1) == [Role.BULK]
    assert writer_roles(64).count(Role.BULK) == 32
