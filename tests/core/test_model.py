"""The DefaultPolicyProfile model: documented defaults and validation."""

from __future__ import annotations

from typing import Any

import pytest

from default_policy_operator.core.model import (
    BASELINE_POLICY,
    BUILTIN_POLICIES,
    MAX_CUSTOM_POLICIES,
    MAX_EXCLUSIONS,
    MAX_TEMPLATE_BYTES,
    DeletionPolicy,
    Directions,
    Flavor,
    Layout,
    Mode,
    Port,
    Profile,
    ProfileError,
    parse_profile,
)
from default_policy_operator.core.selector import LabelSelector, Requirement

TEMPLATE = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n"


def profile(spec: dict[str, Any] | None = None, **metadata: Any) -> Profile:
    # An operator configured for the API version the profile names (they must agree).
    calico = (spec or {}).get("calico")
    api = calico.get("apiVersion") if isinstance(calico, dict) else None
    if api not in ("crd.projectcalico.org/v1", "projectcalico.org/v3"):
        api = "crd.projectcalico.org/v1"
    return parse_profile(
        {"metadata": {"name": "p", **metadata}, "spec": spec or {}}, calico_api_version=api
    )


def problems(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ProfileError) as info:
        profile(spec)
    return info.value.problems


# -- defaults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, {}])
def test_documented_defaults(spec: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"metadata": {"name": "base"}}
    if spec is not None:
        body["spec"] = spec
    p = parse_profile(body)
    assert p.name == "base"
    assert p.uid == ""
    assert p.generation == 0
    assert p.namespace_selector == LabelSelector()
    assert p.exclude_namespaces == ()
    assert p.priority == 0
    assert p.mode is Mode.ENFORCE
    assert p.enforcing
    assert p.deletion_policy is DeletionPolicy.DELETE
    assert p.flavor is Flavor.NETWORK_POLICY
    assert p.calico_order == 2000
    assert p.calico_api_version == "crd.projectcalico.org/v1"
    assert p.deny_all == Directions(ingress=True, egress=True)
    assert p.allow_dns.enabled is True
    assert p.allow_dns.namespace == "kube-system"
    assert p.allow_dns.pod_selector == LabelSelector(match_labels=(("k8s-app", "kube-dns"),))
    assert p.allow_dns.ports == (Port("UDP", 53), Port("TCP", 53))
    assert p.allow_kube_system == Directions(ingress=True, egress=False)
    assert p.allow_same_namespace == Directions(ingress=False, egress=False)
    assert not p.allow_same_namespace.enabled
    assert p.custom_policies == ()
    assert p.policy_names() == ("deny-all", "allow-dns", "allow-kube-system")


def test_metadata_is_read() -> None:
    p = profile(uid="1234", generation=7)
    assert (p.uid, p.generation) == ("1234", 7)


def test_full_spec_is_read() -> None:
    p = profile(
        {
            "namespaceSelector": {
                "matchLabels": {"env": "prod"},
                "matchExpressions": [{"key": "team", "operator": "Exists"}],
            },
            "excludeNamespaces": ["legacy", "sandbox-*"],
            "priority": -5,
            "mode": "Audit",
            "deletionPolicy": "Orphan",
            "calico": {"order": 150.5, "apiVersion": "projectcalico.org/v3"},
            "policies": {
                "denyAll": {"ingress": True, "egress": False},
                "allowDNS": {
                    "namespace": "dns",
                    "podSelector": {"matchLabels": {"app": "coredns"}},
                    "ports": [{"port": 5353}, {"protocol": "UDP", "port": "dns", "endPort": None}],
                },
                "allowKubeSystem": {"ingress": False, "egress": True},
                "allowSameNamespace": {"enabled": True},
            },
            "customPolicies": [{"name": "allow-monitoring", "template": TEMPLATE}],
        }
    )
    assert p.namespace_selector == LabelSelector(
        match_labels=(("env", "prod"),), match_expressions=(Requirement("team", "Exists"),)
    )
    assert p.exclude_namespaces == ("legacy", "sandbox-*")
    assert p.priority == -5
    assert p.mode is Mode.AUDIT
    assert not p.enforcing
    assert p.deletion_policy is DeletionPolicy.ORPHAN
    assert (p.calico_order, p.calico_api_version) == (150.5, "projectcalico.org/v3")
    assert p.deny_all == Directions(ingress=True, egress=False)
    assert p.allow_dns.namespace == "dns"
    assert p.allow_dns.pod_selector == LabelSelector(match_labels=(("app", "coredns"),))
    assert p.allow_dns.ports == (Port("TCP", 5353), Port("UDP", "dns"))
    assert p.allow_kube_system == Directions(ingress=False, egress=True)
    assert p.allow_same_namespace == Directions(ingress=True, egress=True)
    # Egress is not denied, so the egress-only allows (DNS, kube-system) would only isolate it:
    # they are left out, and allow-same-namespace keeps its ingress half alone.
    assert p.policy_names() == ("deny-all", "allow-same-namespace", "allow-monitoring")
    assert p.allows("allow-same-namespace") == Directions(ingress=True, egress=False)
    assert p.allows("allow-kube-system") == Directions(ingress=False, egress=False)
    assert not p.allows("allow-dns").enabled


def test_port_range() -> None:
    p = profile({"policies": {"allowDNS": {"ports": [{"port": 53, "endPort": 60}]}}})
    assert p.allow_dns.ports == (Port("TCP", 53, 60),)
    assert p.allow_dns.ports[0].as_k8s() == {"protocol": "TCP", "port": 53, "endPort": 60}
    assert Port("UDP", 53).as_k8s() == {"protocol": "UDP", "port": 53}


def test_only_one_direction_switched_keeps_the_other_default() -> None:
    p = profile({"policies": {"denyAll": {"egress": False}, "allowKubeSystem": {"egress": True}}})
    assert p.deny_all == Directions(ingress=True, egress=False)
    assert p.allow_kube_system == Directions(ingress=True, egress=True)


# -- enabled: false ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "policy"),
    [
        ("denyAll", "deny-all"),
        ("allowDNS", "allow-dns"),
        ("allowKubeSystem", "allow-kube-system"),
        ("allowSameNamespace", "allow-same-namespace"),
    ],
)
def test_enabled_false_switches_a_policy_off(key: str, policy: str) -> None:
    on = profile({"policies": {"allowSameNamespace": {"enabled": True}}})
    assert policy in on.policy_names()
    spec: dict[str, Any] = {"policies": {"allowSameNamespace": {"enabled": True}}}
    spec["policies"][key] = {"enabled": False}
    off = profile(spec)
    assert policy not in off.policy_names()
    if key == "denyAll":  # nothing denied: no allow has anything to open, all stays open
        assert off.policy_names() == ()
    else:
        assert len(off.policy_names()) == len(on.policy_names()) - 1


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_an_allow_applies_only_where_deny_all_denies(direction: str) -> None:
    """An allow in a direction deny-all leaves open would isolate that direction."""
    other = "egress" if direction == "ingress" else "ingress"
    both = {"ingress": True, "egress": True}
    p = profile(
        {
            "policies": {
                "denyAll": {direction: True, other: False},
                "allowKubeSystem": both,
                "allowSameNamespace": both,
            }
        }
    )
    for policy in ("allow-kube-system", "allow-same-namespace"):
        assert p.allows(policy) == Directions(**{direction: True, other: False})
    assert p.allows("allow-dns").enabled is (direction == "egress")


def test_enabled_false_wins_over_directions() -> None:
    p = profile({"policies": {"denyAll": {"enabled": False, "ingress": True, "egress": True}}})
    assert p.deny_all == Directions(ingress=False, egress=False)


def test_enabled_true_alone_turns_both_directions_on() -> None:
    p = profile({"policies": {"allowKubeSystem": {"enabled": True}}})
    assert p.allow_kube_system == Directions(ingress=True, egress=True)


def test_every_policy_off() -> None:
    p = profile(
        {
            "policies": {
                "denyAll": {"enabled": False},
                "allowDNS": {"enabled": False},
                "allowKubeSystem": {"ingress": False},
            }
        }
    )
    assert p.policy_names() == ()


# -- validation -------------------------------------------------------------------------------


def test_missing_name() -> None:
    for body in ({}, {"metadata": {}}, {"metadata": {"name": ""}}, {"metadata": {"name": 3}}):
        with pytest.raises(ProfileError, match=r"metadata\.name is missing"):
            parse_profile(body)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mode": "enforce"}, "spec.mode must be one of Enforce, Audit, Stage, not 'enforce'"),
        ({"deletionPolicy": "Keep"}, "spec.deletionPolicy must be one of Delete, Orphan"),
        ({"flavor": "Cilium"}, "spec.flavor must be one of NetworkPolicy"),
        ({"priority": "1"}, "spec.priority must be an integer"),
        ({"priority": True}, "spec.priority must be an integer"),
        ({"priority": 1.5}, "spec.priority must be an integer"),
        ({"priority": 1_000_001}, "spec.priority must be an integer"),
        ({"excludeNamespaces": "kube-system"}, "spec.excludeNamespaces must be a list"),
        ({"excludeNamespaces": ["a", 1]}, "spec.excludeNamespaces must be a list"),
        ({"excludeNamespaces": ["n"] * (MAX_EXCLUSIONS + 1)}, "holds at most 1000"),
        ({"calico": {"order": -1}}, "spec.calico.order must be a non-negative number"),
        ({"calico": {"order": "1"}}, "spec.calico.order must be a non-negative number"),
        ({"calico": {"order": True}}, "spec.calico.order must be a non-negative number"),
        ({"calico": {"apiVersion": "v1"}}, "spec.calico.apiVersion must be one of"),
        ({"calico": "x"}, "spec.calico must be an object"),
        ({"policies": []}, "spec.policies must be an object"),
        ({"policies": {"denyAll": "yes"}}, "spec.policies.denyAll must be an object"),
        ({"policies": {"denyAll": {"ingress": "yes"}}}, "spec.policies.denyAll.ingress must be"),
        ({"policies": {"denyAll": {"enabled": 1}}}, "spec.policies.denyAll.enabled must be"),
        ({"policies": {"allowDNS": {"enabled": "no"}}}, "spec.policies.allowDNS.enabled must"),
        ({"policies": {"allowDNS": {"namespace": "Kube"}}}, "allowDNS.namespace must be a"),
        ({"policies": {"allowDNS": {"ports": []}}}, "allowDNS.ports must be a non-empty list"),
        ({"policies": {"allowDNS": {"ports": [{"port": 0}]}}}, "ports[0].port must be 1-65535"),
        ({"policies": {"allowDNS": {"ports": [{"port": 65536}]}}}, "port must be 1-65535"),
        ({"policies": {"allowDNS": {"ports": [{"port": True}]}}}, "port must be 1-65535"),
        ({"policies": {"allowDNS": {"ports": [{"port": "Dns"}]}}}, "port must be 1-65535"),
        (
            {"policies": {"allowDNS": {"ports": [{"port": "a-very-long-port-name"}]}}},
            "port must be 1-65535",
        ),
        (
            {"policies": {"allowDNS": {"ports": [{"port": 53, "protocol": "ICMP"}]}}},
            "ports[0].protocol must be one of TCP, UDP, SCTP",
        ),
        (
            {"policies": {"allowDNS": {"ports": [{"port": 53, "endPort": 52}]}}},
            "ports[0].endPort must be a number between port and 65535",
        ),
        (
            {"policies": {"allowDNS": {"ports": [{"port": "dns", "endPort": 60}]}}},
            "endPort must be a number between port and 65535",
        ),
        (
            {"policies": {"allowDNS": {"podSelector": {"matchLabels": {"a": 1}}}}},
            "spec.policies.allowDNS.podSelector: matchLabels must map strings to strings",
        ),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.namespaceSelector: matchExpressions[0]: In needs at least one value",
        ),
        ({"customPolicies": {"a": "b"}}, "spec.customPolicies must be a list"),
    ],
)
def test_single_problem(spec: dict[str, Any], message: str) -> None:
    found = problems(spec)
    assert len(found) == 1, found
    assert message in found[0]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "mode": "Sometimes",
            "priority": "high",
            "flavor": "Cilium",
            "deletionPolicy": "Never",
            "calico": {"order": -3},
            "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]},
            "policies": {
                "denyAll": {"ingress": "yes"},
                "allowDNS": {"ports": [{"port": 0}, {"port": 53, "protocol": "ICMP"}]},
            },
            "customPolicies": [{"name": "deny-all", "template": TEMPLATE}],
        }
    )
    expected = [
        "spec.mode",
        "spec.priority",
        "spec.flavor",
        "spec.deletionPolicy",
        "spec.calico.order",
        "spec.namespaceSelector",
        "spec.policies.denyAll.ingress",
        "allowDNS.ports[0].port",
        "allowDNS.ports[1].protocol",
        "reserved for a built-in policy",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in found) == 1, (fragment, found)
    assert len(found) == len(expected)


def test_problem_error_message_joins_every_problem() -> None:
    with pytest.raises(ProfileError) as info:
        profile({"mode": "x", "priority": "y"})
    assert str(info.value) == "; ".join(info.value.problems)
    assert len(info.value.problems) == 2


# -- custom policies --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_builtin_names_are_reserved(name: str) -> None:
    (found,) = problems({"customPolicies": [{"name": name, "template": TEMPLATE}]})
    assert f"spec.customPolicies[0].name {name!r} is reserved for a built-in policy" == found


def test_duplicate_custom_names() -> None:
    found = problems(
        {
            "customPolicies": [
                {"name": "a", "template": TEMPLATE},
                {"name": "b", "template": TEMPLATE},
                {"name": "a", "template": TEMPLATE},
            ]
        }
    )
    assert found == ["spec.customPolicies[2].name 'a' is used twice"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "Upper", "template": TEMPLATE}, "name must be a lowercase DNS label"),
        ({"name": "a_b", "template": TEMPLATE}, "name must be a lowercase DNS label"),
        ({"name": "a" * 41, "template": TEMPLATE}, "at most 40 characters"),
        ({"template": TEMPLATE}, "name must be a lowercase DNS label"),
        ({"name": "a"}, "template must be a non-empty string"),
        ({"name": "a", "template": "  \n"}, "template must be a non-empty string"),
        ({"name": "a", "template": 3}, "template must be a non-empty string"),
        (
            {"name": "a", "template": "#" * (MAX_TEMPLATE_BYTES + 1)},
            f"template is longer than {MAX_TEMPLATE_BYTES} bytes",
        ),
        # bytes, not characters: 2-byte characters count double
        (
            {"name": "a", "template": "é" * (MAX_TEMPLATE_BYTES // 2 + 1)},
            "template is longer than",
        ),
        ("not-a-mapping", "spec.customPolicies[0] must be an object"),
    ],
)
def test_custom_policy_problems(entry: Any, message: str) -> None:
    found = problems({"customPolicies": [entry]})
    assert any(message in p for p in found), found


def test_custom_policy_limits() -> None:
    ok = profile({"customPolicies": [{"name": "a" * 40, "template": "#" * MAX_TEMPLATE_BYTES}]})
    assert ok.policy_names()[-1] == "a" * 40
    entries = [{"name": f"c{i}", "template": TEMPLATE} for i in range(MAX_CUSTOM_POLICIES + 1)]
    assert problems({"customPolicies": entries}) == [
        f"spec.customPolicies holds at most {MAX_CUSTOM_POLICIES} entries"
    ]
    p = profile({"customPolicies": entries[:MAX_CUSTOM_POLICIES]})
    assert len(p.custom_policies) == MAX_CUSTOM_POLICIES


# -- flavor constraints -----------------------------------------------------------------------


@pytest.mark.parametrize("same_namespace", [{"enabled": True}, {"ingress": True}, {"egress": True}])
def test_allow_same_namespace_needs_the_network_policy_flavor(
    same_namespace: dict[str, bool],
) -> None:
    (found,) = problems(
        {
            "flavor": "CalicoGlobalNetworkPolicy",
            "policies": {"allowSameNamespace": same_namespace},
        }
    )
    assert "allowSameNamespace needs a namespaced flavor" in found


def test_calico_flavor_without_same_namespace_is_fine() -> None:
    p = profile({"flavor": "CalicoGlobalNetworkPolicy", "policies": {"allowSameNamespace": {}}})
    assert p.flavor is Flavor.CALICO
    assert p.policy_names() == ("deny-all", "allow-dns", "allow-kube-system")


def test_the_operator_decides_the_calico_api_version() -> None:
    """Issue #12, item 3: a profile naming another Calico API than the operator's flag made
    every write fail with 400; now the flag decides and a disagreeing profile is explained."""
    body = {"metadata": {"name": "p"}, "spec": {"flavor": "CalicoGlobalNetworkPolicy"}}
    assert parse_profile(body, calico_api_version="projectcalico.org/v3").calico_api_version == (
        "projectcalico.org/v3"
    )
    body["spec"]["calico"] = {"apiVersion": "projectcalico.org/v3"}
    with pytest.raises(ProfileError) as info:
        parse_profile(body, calico_api_version="crd.projectcalico.org/v1")
    assert "spec.calico.apiVersion is projectcalico.org/v3" in str(info.value)
    assert "--calico-api-version" in str(info.value)
    agreeing = parse_profile(body, calico_api_version="projectcalico.org/v3")
    assert agreeing.calico_api_version == "projectcalico.org/v3"


# -- layout -----------------------------------------------------------------------------------


def test_layout_is_separate_by_default() -> None:
    p = profile({"customPolicies": [{"name": "baseline", "template": TEMPLATE}]})
    assert p.layout is Layout.SEPARATE
    assert p.policy_names() == ("deny-all", "allow-dns", "allow-kube-system", "baseline")


def test_compact_layout_wants_one_builtin_object_and_the_custom_policies() -> None:
    p = profile({"layout": "Compact", "customPolicies": [{"name": "c", "template": TEMPLATE}]})
    assert p.layout is Layout.COMPACT
    assert p.builtin_names() == ("deny-all", "allow-dns", "allow-kube-system")
    assert p.policy_names() == (BASELINE_POLICY, "c")


def test_compact_layout_without_deny_all_wants_no_builtin_object() -> None:
    """With nothing denied no allow takes effect: there is nothing for dpo-baseline to carry."""
    p = profile({"layout": "Compact", "policies": {"denyAll": {"enabled": False}}})
    assert p.builtin_names() == ()
    assert p.policy_names() == ()


@pytest.mark.parametrize("flavor", [f for f in Flavor if f is not Flavor.NETWORK_POLICY], ids=str)
def test_compact_layout_needs_the_network_policy_flavor(flavor: Flavor) -> None:
    (found,) = problems({"layout": "Compact", "flavor": str(flavor)})
    assert found.startswith(f"spec.layout Compact needs the NetworkPolicy flavor, not {flavor}")


def test_separate_layout_is_fine_with_every_flavor() -> None:
    for flavor in Flavor:
        assert profile({"layout": "Separate", "flavor": str(flavor)}).layout is Layout.SEPARATE


def test_compact_layout_reserves_the_baseline_name() -> None:
    (found,) = problems(
        {"layout": "Compact", "customPolicies": [{"name": "baseline", "template": TEMPLATE}]}
    )
    assert "'baseline' is reserved for the built-in policies in layout Compact" in found


def test_unknown_layout() -> None:
    (found,) = problems({"layout": "Tight"})
    assert found == "spec.layout must be one of Separate, Compact, not 'Tight'"
