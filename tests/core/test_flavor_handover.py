"""Flavor switches hand over without a gap, for every pair of flavors (issue #12, item 6).

A simulation of the reconciler over the pure core: scopes are planned in an order hypothesis
picks, and each plan's writes land one at a time in an order it picks too (the reconciler's
writers run them concurrently). After every single write the governed namespace must hold a
deny-all in force: a Kubernetes or Calico NetworkPolicy ``dpo-deny-all`` in the namespace, or a
Calico GlobalNetworkPolicy or ClusterNetworkPolicy deny-all whose live selector selects it. The
switch must also complete: the old flavor's objects gone, the new one's in place, nothing left
to do.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.core.model import Flavor
from tests.handover import KIND_OF, TEAM, Cluster, step
from tests.inline_render import InlineWorld

PAIRS = list(itertools.permutations(Flavor, 2))


def profile(flavor: Flavor, generation: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "base", "uid": "uid-base", "generation": generation},
        "spec": {"namespaceSelector": {"matchLabels": {"env": "prod"}}, "flavor": str(flavor)},
    }


def run_switch(before: Flavor, after: Flavor, data: st.DataObject) -> Cluster:
    world = InlineWorld(protected_namespaces("dpo-system"))
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "env": "prod"}, {}))
    cluster = Cluster(world)
    world.update_profile(profile(before, 1))
    for _ in range(3):
        step(cluster, data, check=False)
    assert cluster.kinds() == {KIND_OF[before]}
    assert cluster.denies_all()
    world.update_profile(profile(after, 2))
    for _ in range(6):
        if not step(cluster, data, check=True):
            break
    return cluster


@pytest.mark.parametrize(("before", "after"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_flavor_switch_never_leaves_the_namespace_without_a_deny_all(
    before: Flavor, after: Flavor, data: st.DataObject
) -> None:
    cluster = run_switch(before, after, data)
    assert cluster.kinds() == {KIND_OF[after]}, "the switch did not complete"
    assert cluster.denies_all()


def named(name: str, flavor: Flavor, priority: int) -> dict[str, Any]:
    body = profile(flavor, 1)
    body["metadata"] = {"name": name, "uid": f"uid-{name}", "generation": 1}
    body["spec"]["priority"] = priority
    return body


@pytest.mark.parametrize(
    ("before", "after"),
    list(itertools.product(Flavor, repeat=2)),
    ids=[f"{a}->{b}" for a, b in itertools.product(Flavor, repeat=2)],
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_priority_handover_between_profiles_never_leaves_a_gap(
    before: Flavor, after: Flavor, data: st.DataObject
) -> None:
    """A new profile of higher priority takes the namespace over from another one, of any
    flavor each: the old cover goes only once the new one is in force."""
    world = InlineWorld(protected_namespaces("dpo-system"))
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "env": "prod"}, {}))
    cluster = Cluster(world)
    world.update_profile(named("old", before, 1))
    for _ in range(3):
        step(cluster, data, check=False)
    assert cluster.denies_all()
    world.update_profile(named("new", after, 5))
    for _ in range(8):
        if not step(cluster, data, check=True):
            break
    governor = world.governor(world.namespaces[TEAM])
    assert governor is not None
    assert governor.name == "new"
    assert not step(cluster, data, check=True), "the handover did not settle"
