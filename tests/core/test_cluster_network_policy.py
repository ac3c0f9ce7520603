"""The ClusterNetworkPolicy flavor (issue #12, item 4): the upstream network-policy-api's
cluster-scoped kind in the Baseline tier, its subject exactly the governed namespaces."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import EXEMPT_LABEL, NAMESPACE_NAME_LABEL
from default_policy_operator.core.model import ProfileError, parse_profile
from default_policy_operator.core.objects import CLUSTER_NETWORK_POLICY, ObjectKey
from default_policy_operator.core.render import RenderError
from default_policy_operator.core.world import World
from tests.inline_render import InlineWorld, render_calico
from tests.netpol import Pod, cluster_allowed, selector_matches

CNP = "ClusterNetworkPolicy"
HEAD = "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\n"


def profile_body(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": generation},
            "spec": {"flavor": CNP, **spec}}  # fmt: skip


def world_of(*namespaces: tuple[str, dict[str, str]]) -> World:
    world = InlineWorld(protected_namespaces("dpo-system"))
    for name, labels in namespaces:
        world.set_namespace(Namespace(name, {NAMESPACE_NAME_LABEL: name, **labels}, {}))
    return world


def wanted(world: World, name: str) -> dict[str, dict[str, Any]]:
    entry = world.profiles[name]
    assert entry.error is None, entry.error
    assert entry.profile is not None
    return {o.policy: o.body for o in world.wanted_calico(entry.profile) or []}


def test_builtins_go_to_the_baseline_tier_with_deny_all_after_the_allows() -> None:
    world = world_of(("team-a", {}))
    world.update_profile(profile_body("base", clusterNetworkPolicy={"priority": 40}))
    objects = wanted(world, "base")
    assert list(objects) == ["deny-all", "allow-dns", "allow-kube-system"]
    for policy, body in objects.items():
        assert body["apiVersion"] == "policy.networking.k8s.io/v1beta1"
        assert body["metadata"]["name"] == f"dpo-4-base-{policy}"
        assert "namespace" not in body["metadata"]
        assert body["spec"]["tier"] == "Baseline"
    assert objects["deny-all"]["spec"]["priority"] == 41
    assert objects["allow-dns"]["spec"]["priority"] == 40
    deny = objects["deny-all"]["spec"]
    assert deny["ingress"] == [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]
    assert deny["egress"][0]["to"] == [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]
    dns = objects["allow-dns"]["spec"]["egress"][0]
    assert dns["to"] == [{"pods": {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}]  # fmt: skip
    assert dns["protocols"] == [
        {"udp": {"destinationPort": {"number": 53}}},
        {"tcp": {"destinationPort": {"number": 53}}},
    ]


def test_dns_may_go_to_the_admin_tier_and_nothing_else_may() -> None:
    world = world_of(("team-a", {}))
    world.update_profile(profile_body("base", clusterNetworkPolicy={"dnsTier": "Admin"}))
    tiers = {p: b["spec"]["tier"] for p, b in wanted(world, "base").items()}
    assert tiers == {"deny-all": "Baseline", "allow-dns": "Admin", "allow-kube-system": "Baseline"}
    template = (
        HEAD + "spec:\n  tier: Admin\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]"
    )
    admin = parse_profile(profile_body("x", customPolicies=[{"name": "c", "template": template}]))
    with pytest.raises(RenderError, match=r"spec\.tier must be Baseline"):
        render_calico(admin, "all()")


def test_a_profile_cannot_ask_for_what_the_kind_cannot_say() -> None:
    with pytest.raises(ProfileError, match="allowSameNamespace needs a namespaced flavor"):
        parse_profile(profile_body("x", policies={"allowSameNamespace": {"ingress": True}}))
    with pytest.raises(ProfileError, match="priority must be an integer 0-999"):
        parse_profile(profile_body("x", clusterNetworkPolicy={"priority": 1000}))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("subject: {namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}",
         "exactly one of namespaces or pods"),
        ("ingress: [" + ", ".join(["{action: Deny, from: [{namespaces: {}}]}"] * 26) + "]",
         "spec.ingress: holds 26 entries; at most 25"),
        ("egress: [{action: Allow, to: [{namespaces: {}}]}]", "spec.egress[0].action"),
        ("ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]",
         "spec.ingress[0].from[0].networks: unknown field"),
    ],
)  # fmt: skip
def test_the_output_allow_list_holds_for_cluster_network_policies(spec: str, message: str) -> None:
    custom = parse_profile(profile_body("x", customPolicies=[{"name": "c", "template": HEAD
                                        + "spec:\n  " + spec + "\n"}]))  # fmt: skip
    with pytest.raises(RenderError) as info:
        render_calico(custom, "all()")
    assert message in info.value.message


def test_a_template_subject_narrows_the_governed_set_and_never_widens_it() -> None:
    world = world_of(("gold", {"tier": "gold"}), ("plain", {}), ("kube-system", {"tier": "gold"}))
    template = HEAD + (
        "spec:\n  subject: {namespaces: {matchLabels: {tier: gold}}}\n"
        "  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n"
    )
    world.update_profile(profile_body("base", customPolicies=[{"name": "c", "template": template}]))
    subject = wanted(world, "base")["c"]["spec"]["subject"]["namespaces"]
    selected = {n for n, ns in world.namespaces.items() if selector_matches(subject, ns.labels)}
    assert selected == {"gold"}


@st.composite
def worlds(draw: st.DrawFn) -> World:
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "kube-system", "coredns"]), unique=True))
    world = world_of()
    for name in names:
        labels = {
            k: draw(st.sampled_from(["1", "2"])) for k in ("env", "team") if draw(st.booleans())
        }
        if draw(st.integers(0, 4)) == 0:
            labels[EXEMPT_LABEL] = "true"
        world.set_namespace(Namespace(name, {NAMESPACE_NAME_LABEL: name, **labels}, {}))
    for name in draw(st.lists(st.sampled_from(["p", "q", "r"]), unique=True, min_size=1)):
        spec: dict[str, Any] = {"priority": draw(st.integers(0, 2))}
        spec["flavor"] = draw(st.sampled_from([CNP, "NetworkPolicy", "CalicoGlobalNetworkPolicy"]))
        if draw(st.booleans()):
            spec["namespaceSelector"] = {"matchLabels": {"env": draw(st.sampled_from(["1", "2"]))}}
        if draw(st.booleans()):
            spec["excludeNamespaces"] = [draw(st.sampled_from(["a", "b*"]))]
        if draw(st.booleans()):
            spec["policies"] = {"allowDNS": {"namespace": "coredns"}}
        assert world.update_profile(profile_body(name, **spec)).error is None
    return world


@settings(max_examples=60, deadline=None)
@given(world=worlds())
def test_the_subject_selects_exactly_the_governed_namespaces(world: World) -> None:
    for name, entry in world.profiles.items():
        if entry.profile is None or entry.profile.flavor != CNP:
            continue
        for body in wanted(world, name).values():
            subject = body["spec"]["subject"]["namespaces"]
            for namespace in world.namespaces.values():
                governor = world.governor(namespace)
                governed = governor is not None and governor.name == name
                assert selector_matches(subject, namespace.labels) is governed, namespace.name


def test_a_namespace_network_policy_ends_the_baseline_allow_dns_unless_it_is_admin() -> None:
    """The documented difference: a Baseline rule applies only to pods no NetworkPolicy
    selects, so a namespace owner's first policy for a pod takes the baseline's DNS away
    from it; ``dnsTier: Admin`` keeps DNS whatever the namespace's policies say."""
    labels = {n: {NAMESPACE_NAME_LABEL: n} for n in ("team-a", "kube-system")}
    web, dns = Pod("team-a", {"app": "web"}), Pod("kube-system", {"k8s-app": "kube-dns"})
    owners_policy = {"metadata": {"namespace": "team-a"}, "spec": {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"protocol": "TCP", "port": 443}]}]}}  # fmt: skip
    for tier, resolves in (("Baseline", False), ("Admin", True)):
        world = world_of(("team-a", {}))
        world.update_profile(profile_body("base", clusterNetworkPolicy={"dnsTier": tier}))
        policies = list(wanted(world, "base").values())
        assert cluster_allowed(policies, web, dns, "UDP", 53, labels)  # no owner policy: DNS
        with_owner = cluster_allowed(policies, web, dns, "UDP", 53, labels, [owners_policy])
        assert with_owner is resolves, tier


def test_keys_are_cluster_scoped_and_injective() -> None:
    world = world_of(("team-a", {}))
    world.update_profile(profile_body("a"))
    world.update_profile(profile_body("a-deny", policies={"allowDNS": {"enabled": False}}))
    keys = {
        o.key for p in ("a", "a-deny") for o in world.wanted_calico(world.profiles[p].profile) or []
    }  # type: ignore[arg-type]
    assert ObjectKey(CLUSTER_NETWORK_POLICY, "", "dpo-1-a-deny-all") in keys
    assert len(keys) == 3 + 2
