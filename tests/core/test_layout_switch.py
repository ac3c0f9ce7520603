"""Switching a profile between the Separate and Compact layouts never leaves a gap (issue #15).

Both layouts live in the same namespace scope, so the plan's writes-first rule creates the new
objects before the old ones go. The simulation of :mod:`tests.handover` lands every write on its
own, in an order hypothesis picks, and after each one the namespace must still have a deny-all
in force and exactly the connectivity the profile promised before the switch: NetworkPolicy rules
are additive, so the old and the new objects side by side admit what either alone admits.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.core.model import parse_profile
from tests.handover import TEAM, Cluster, step
from tests.inline_render import InlineWorld
from tests.netpol import Pod, allowed

CUSTOM = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress: [{ports: [{protocol: TCP, port: 8080}]}]
"""
PODS = (
    Pod(TEAM, {"app": "web"}),
    Pod(TEAM, {"app": "db"}),
    Pod("kube-system", {"k8s-app": "kube-dns"}),
    Pod("kube-system", {"component": "metrics-server"}),
    Pod("team-b", {"app": "web"}),
)
PORTS = (("UDP", 53), ("TCP", 53), ("TCP", 8080))
LABELS = {name: {NAMESPACE_NAME_LABEL: name} for name in (TEAM, "kube-system", "team-b")}
SWITCHES = st.fixed_dictionaries(
    {
        "denyAll": st.fixed_dictionaries({"ingress": st.booleans(), "egress": st.booleans()}),
        "allowDNS": st.fixed_dictionaries({"enabled": st.booleans()}),
        "allowKubeSystem": st.fixed_dictionaries(
            {"ingress": st.booleans(), "egress": st.booleans()}
        ),
        "allowSameNamespace": st.fixed_dictionaries(
            {"ingress": st.booleans(), "egress": st.booleans()}
        ),
    }
).filter(lambda p: p["denyAll"]["ingress"] or p["denyAll"]["egress"])


def body(layout: str, policies: dict[str, Any], generation: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "base", "uid": "uid-base", "generation": generation},
        "spec": {
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "layout": layout,
            "policies": policies,
            "customPolicies": [{"name": "web-8080", "template": CUSTOM}],
        },
    }


def names(layout: str, policies: dict[str, Any]) -> set[str]:
    """The objects the profile wants in the namespace, named as the model names them."""
    wanted = {f"dpo-{name}" for name in parse_profile(body(layout, policies, 1)).policy_names()}
    assert ("dpo-baseline" in wanted) == (layout == "Compact")
    return wanted


def connectivity(cluster: Cluster) -> dict[tuple[int, int, str, int], bool]:
    """Every flow between the pods (by index) and what the live policies say of it."""
    policies = list(cluster.live.values())
    return {
        (a, b, protocol, port): allowed(policies, PODS[a], PODS[b], protocol, port, LABELS)
        for a, b in itertools.permutations(range(len(PODS)), 2)
        for protocol, port in PORTS
    }


@pytest.mark.parametrize(("before", "after"), [("Separate", "Compact"), ("Compact", "Separate")])
@settings(max_examples=40, deadline=None)
@given(policies=SWITCHES, data=st.data())
def test_a_layout_switch_keeps_the_same_connectivity_after_every_write(
    before: str, after: str, policies: dict[str, Any], data: st.DataObject
) -> None:
    world = InlineWorld(protected_namespaces("dpo-system"))
    world.set_namespace(Namespace(TEAM, {NAMESPACE_NAME_LABEL: TEAM, "env": "prod"}, {}))
    cluster = Cluster(world)
    world.update_profile(body(before, policies, 1))
    for _ in range(3):
        step(cluster, data, check=False)
    promised = connectivity(cluster)
    assert {key.name for key in cluster.live} == names(before, policies)
    world.update_profile(body(after, policies, 2))
    for _ in range(6):
        scope = world.plan_namespace(TEAM)
        if not scope.actions:
            break
        for action in data.draw(st.permutations(scope.actions)):
            cluster.apply(action)
            assert cluster.denies_all(), f"no deny-all after {action.verb} {action.key}"
            assert connectivity(cluster) == promised, f"changed by {action.verb} {action.key}"
    assert {key.name for key in cluster.live} == names(after, policies), "switch incomplete"
    assert not world.plan_namespace(TEAM).actions, "the switch did not settle"
