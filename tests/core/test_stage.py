"""Mode Stage (issue #12, item 5): Calico's staged kinds, a preview that never enforces and
never takes enforcement away, and Stage -> Enforce without a gap."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.core.model import Flavor, ProfileError, parse_profile
from default_policy_operator.core.objects import STAGED_KINDS
from tests.handover import TEAM, Cluster, step
from tests.inline_render import InlineWorld

STAGEABLE = (Flavor.NETWORK_POLICY, Flavor.CALICO_NAMESPACED, Flavor.CALICO)
ENFORCED_KINDS = {"NetworkPolicy", "CalicoNetworkPolicy", "GlobalNetworkPolicy"}


def body(name: str, flavor: Flavor, mode: str, priority: int = 0, generation: int = 1) -> Any:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "generation": generation},
        "spec": {"namespaceSelector": {"matchLabels": {"env": "prod"}}, "flavor": str(flavor),
                 "mode": mode, "priority": priority},
    }  # fmt: skip


def cluster_with(*profiles: Any) -> Cluster:
    world = InlineWorld(protected_namespaces("dpo-system"))
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "env": "prod"}, {}))
    for profile in profiles:
        assert world.update_profile(profile).error is None
    return Cluster(world)


def settle(cluster: Cluster, data: st.DataObject, *, check: bool) -> None:
    for _ in range(8):
        if not step(cluster, data, check=check):
            return
    raise AssertionError("did not settle")


@pytest.mark.parametrize("flavor", STAGEABLE, ids=str)
def test_stage_writes_the_staged_kind_of_the_same_policy(flavor: Flavor) -> None:
    cluster = cluster_with(body("p", flavor, "Stage"))
    for _ in range(3):
        world = cluster.world
        for action in [*world.plan_namespace(TEAM).actions, *world.plan_calico().actions]:
            cluster.apply(action)
    staged = STAGED_KINDS[{Flavor.NETWORK_POLICY: "NetworkPolicy",
                           Flavor.CALICO_NAMESPACED: "CalicoNetworkPolicy",
                           Flavor.CALICO: "GlobalNetworkPolicy"}[flavor]]  # fmt: skip
    assert cluster.kinds() == {staged}
    for key, live in cluster.live.items():
        assert live["kind"] == staged
        assert live["apiVersion"] == "crd.projectcalico.org/v1"
        assert live["spec"]["stagedAction"] == "Set"
        assert key.name.endswith(("deny-all", "allow-dns", "allow-kube-system"))
    assert not cluster.denies_all(), "staged objects enforce nothing"


def test_cluster_network_policy_cannot_be_staged() -> None:
    with pytest.raises(ProfileError, match="ClusterNetworkPolicy has no staged kind"):
        parse_profile(body("p", Flavor.CLUSTER_NETWORK_POLICY, "Stage"))


@pytest.mark.parametrize("enforced", [*STAGEABLE, Flavor.CLUSTER_NETWORK_POLICY], ids=str)
@pytest.mark.parametrize("staged", STAGEABLE, ids=str)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_stage_profile_never_takes_enforcement_away_and_enforce_takes_over_without_a_gap(
    enforced: Flavor, staged: Flavor, data: st.DataObject
) -> None:
    """A Stage profile of higher priority governs the namespace, writes its preview, and the
    lower profile's enforcement stays; switched to Enforce, it takes over without a gap."""
    cluster = cluster_with(body("low", enforced, "Enforce"))
    settle(cluster, data, check=False)
    assert cluster.denies_all()
    cluster.world.update_profile(body("preview", staged, "Stage", priority=5))
    settle(cluster, data, check=True)
    assert set(STAGED_KINDS.values()) & cluster.kinds(), "the preview was written"
    cluster.world.update_profile(body("preview", staged, "Enforce", priority=5, generation=2))
    settle(cluster, data, check=True)
    assert not set(STAGED_KINDS.values()) & cluster.kinds(), "the staged objects were removed"
    assert {s.profile for s in cluster.world.objects.values() if s.key.namespace == TEAM} <= {
        "preview"
    }


@pytest.mark.parametrize("flavor", STAGEABLE, ids=str)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_enforce_to_stage_keeps_the_enforced_objects(flavor: Flavor, data: st.DataObject) -> None:
    cluster = cluster_with(body("p", flavor, "Enforce"))
    settle(cluster, data, check=False)
    enforced = dict(cluster.live)
    cluster.world.update_profile(body("p", flavor, "Stage", generation=2))
    settle(cluster, data, check=True)
    assert all(key in cluster.live for key in enforced), "a preview took enforcement away"
    cluster.world.update_profile(body("p", flavor, "Enforce", generation=3))
    settle(cluster, data, check=True)
    assert cluster.kinds() <= ENFORCED_KINDS
