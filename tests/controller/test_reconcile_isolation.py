"""One scope's failure stays that scope's (issue 10.1): the rest of the batch is planned.

Before, ``reconcile()`` planned a batch in one loop and any exception (a malformed rendered
spec raising in normalisation, say) aborted it; the loop then put the whole batch back and
retried it forever, so other profiles' namespaces were never covered.
"""

from __future__ import annotations

import asyncio

import pytest

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace
from default_policy_operator.core.labels import MANAGED_BY, MANAGED_BY_VALUE, PROFILE_LABEL
from default_policy_operator.core.normalize import ObjectState
from default_policy_operator.core.objects import NETWORK_POLICY, ObjectKey
from default_policy_operator.core.plan import Verb
from default_policy_operator.core.world import ScopePlan, World


def leftover(namespace: str) -> ObjectState:
    """A managed object whose profile is gone: planning any scope that holds one deletes it."""
    return ObjectState(
        key=ObjectKey(NETWORK_POLICY, namespace, "dpo-deny-all"),
        uid=f"uid-{namespace}",
        resource_version="1",
        labels={MANAGED_BY: MANAGED_BY_VALUE, PROFILE_LABEL: "gone"},
        owner_uids=(),
        spec_hash="",
    )


def test_a_scope_that_fails_to_plan_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World(frozenset())
    for name in ("a", "b", "c"):
        world.set_namespace(Namespace(name))
        world.set_object(leftover(name))
    plan_namespace = world.plan_namespace

    def failing(name: str) -> ScopePlan:
        if name == "b":
            raise ValueError("a malformed spec")
        return plan_namespace(name)

    monkeypatch.setattr(world, "plan_namespace", failing)
    reconciler = Reconciler(world, None, Settings())  # type: ignore[arg-type]

    async def run() -> None:
        await reconciler.reconcile({"a", "b", "c"})

    asyncio.run(run())
    queued = [action for action, _ in reconciler._queues[True]]
    assert {(a.verb, a.key.namespace) for a in queued} == {(Verb.DELETE, "a"), (Verb.DELETE, "c")}
    assert "a malformed spec" in str(reconciler._errors["b"])
