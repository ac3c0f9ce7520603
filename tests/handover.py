"""A simulation of the reconciler over the pure core, for handover tests: scopes planned in an
order hypothesis draws, each plan's writes landing one by one in an order it draws too (the
reconciler's writers run them concurrently), and a check after every write that the namespace
still has a deny-all in force (a ``dpo-deny-all``, or the Compact layout's ``dpo-baseline``).
Staged objects (mode Stage) enforce nothing and count for nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from default_policy_operator.core.labels import CALICO_NAME_LABEL, NAMESPACE_NAME_LABEL
from default_policy_operator.core.model import Flavor
from default_policy_operator.core.normalize import state_of
from default_policy_operator.core.objects import (
    CALICO_NETWORK_POLICY,
    CLUSTER_NETWORK_POLICY,
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    ObjectKey,
)
from default_policy_operator.core.plan import Action, Verb
from default_policy_operator.core.world import World
from tests.calico_selector import evaluate
from tests.netpol import selector_matches

TEAM = "team-a"
KIND_OF = {
    Flavor.NETWORK_POLICY: NETWORK_POLICY,
    Flavor.CALICO_NAMESPACED: CALICO_NETWORK_POLICY,
    Flavor.CALICO: GLOBAL_NETWORK_POLICY,
    Flavor.CLUSTER_NETWORK_POLICY: CLUSTER_NETWORK_POLICY,
}
LABELS = {NAMESPACE_NAME_LABEL: TEAM, CALICO_NAME_LABEL: TEAM, "env": "prod"}


class Cluster:
    """Live bodies as the API server would hold them, and the world's view of them."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.live: dict[ObjectKey, dict[str, Any]] = {}

    def apply(self, action: Action) -> None:
        if action.verb is Verb.DELETE:
            self.live.pop(action.key, None)
            self.world.remove_object(action.key)
        else:
            assert action.body is not None
            self.live[action.key] = action.body
            self.world.set_object(state_of(action.body))

    def denies_all(self) -> bool:
        return denies_all(self.live)

    def kinds(self) -> set[str]:
        return {key.kind for key in self.live}


def step(cluster: Cluster, data: st.DataObject, *, check: bool) -> bool:
    """Plan every scope once, in a drawn order, landing writes one by one; any writes?"""
    scopes = data.draw(st.permutations(["", TEAM]))
    wrote = False
    for scope in scopes:
        world = cluster.world
        result = world.plan_calico() if scope == "" else world.plan_namespace(scope)
        for action in data.draw(st.permutations(result.actions)):
            cluster.apply(action)
            wrote = True
            if check:
                assert cluster.denies_all(), f"no deny-all after {action.verb} {action.key}"
    return wrote


def denies_all(live: Mapping[ObjectKey, Mapping[str, Any]]) -> bool:
    """Whether a deny-all selecting the team namespace is among ``live``."""
    return any(_in_force(key, body, "deny-all") for key, body in live.items())


def allows_dns(live: Mapping[ObjectKey, Mapping[str, Any]]) -> bool:
    """Whether an allow-dns selecting the team namespace is among ``live``."""
    return any(_in_force(key, body, "allow-dns") for key, body in live.items())


def _in_force(key: ObjectKey, body: Mapping[str, Any], policy: str) -> bool:
    # the Compact layout's dpo-baseline is a deny-all for the directions it lists
    baseline = key.name.endswith("baseline") and body["spec"].get("policyTypes")
    if not (key.name.endswith(policy) or (baseline and policy == "deny-all")):
        return False
    if key.kind in (NETWORK_POLICY, CALICO_NETWORK_POLICY):
        return key.namespace == TEAM
    if key.kind == GLOBAL_NETWORK_POLICY:
        return evaluate(body["spec"]["namespaceSelector"], LABELS)
    if key.kind == CLUSTER_NETWORK_POLICY:
        return selector_matches(body["spec"]["subject"]["namespaces"], LABELS)
    return False
