"""A profile is not Ready before every scope has been planned for its new version.

Found by the packet tests (issue #13): right after a profile was created, the status loop could
publish before the reconcile loop had planned a single namespace; with nothing queued yet, the
profile said Ready / Reconciled with ``managedObjects: 0`` while its namespaces were still open.
"""

from __future__ import annotations

import asyncio
from typing import Any

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from tests.inline_render import InlineWorld


def body(name: str, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": generation},
        "spec": {},
    }


def ready(reconciler: Reconciler, name: str) -> dict[str, Any]:
    counts = reconciler.world.counts()[name]
    status = reconciler.status.status_for(name, {}, counts)
    condition: dict[str, Any] = status["conditions"][0]
    return condition


def test_a_new_profile_is_reconciling_until_its_scopes_are_planned() -> None:
    asyncio.run(scenario())


async def scenario() -> None:
    world = InlineWorld(frozenset())
    world.set_namespace(Namespace("team-a", {NAMESPACE_NAME_LABEL: "team-a"}, {}))
    reconciler = Reconciler(world, None, Settings())  # type: ignore[arg-type]
    reconciler.synced.set()  # the operator has been running for a while
    reconciler.profile_event("ADDED", body("base"))
    condition = ready(reconciler, "base")
    assert (condition["status"], condition["reason"]) == ("False", "Reconciling")
    # Once the bulk re-plan has drained (what the reconcile loop does when it goes idle):
    reconciler._rolling.clear()
    assert ready(reconciler, "base")["status"] == "True"
