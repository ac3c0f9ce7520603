"""Structural validation of rendered policies: every field, its type, its rules, its path.

The NetworkPolicy rules mirror the API server's (``ValidateNetworkPolicySpec`` and the JSON
decoding into the Go types); ``tests/e2e/test_validate_e2e.py`` checks that we refuse exactly
what the API server refuses on a corpus. The property tests tie validation to what follows it:
anything validation accepts normalises and hashes without error.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from default_policy_operator.core.normalize import spec_hash
from default_policy_operator.core.objects import GLOBAL_NETWORK_POLICY, NETWORK_POLICY
from default_policy_operator.core.validate import calico_spec, network_policy_spec, problems

VALID_NETWORK_POLICIES: list[dict[str, Any]] = [
    {},
    {"podSelector": {}},
    {"podSelector": {"matchLabels": {"app": "web", "example.com/tier": ""}}},
    {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a"]}]}},
    {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}},
    {"policyTypes": ["Ingress", "Egress"]},
    {"policyTypes": ["Egress", "Egress"]},  # duplicates: the API server allows them
    {"ingress": [{}]},
    {"ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]},
    {"ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}]}]},
    {"egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
    {"egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "SCTP", "port": 9}]}]},
    {"egress": [{"ports": [{"port": 30000, "endPort": 32767}]}]},
    {"egress": [{"ports": [{"port": "dns-tcp"}]}]},
    {"egress": [{"ports": [{"protocol": "TCP"}]}]},
    {"ingress": None, "egress": None, "podSelector": None},  # null reads as absent, as in Go
    {"ingress": [{"from": None, "ports": None}]},
]

INVALID_NETWORK_POLICIES: list[tuple[dict[str, Any], str]] = [
    ({"egress": [{"ports": [53]}]}, "spec.egress[0].ports[0]: must be a mapping, not an integer"),
    ({"ingress": "allow"}, "spec.ingress: must be a list, not a string"),
    ({"ingress": {"from": []}}, "spec.ingress: must be a list, not a mapping"),
    ({"ingress": [None]}, "spec.ingress[0]: must be a mapping, not null"),
    ({"podSelector": []}, "spec.podSelector: must be a mapping, not a list"),
    ({"podSelector": {"matchLabels": {"a": 1}}}, "matchLabels['a']: must be a string"),
    ({"podSelector": {"matchLabels": {"a": True}}}, "must be a string, not a boolean"),
    (
        {"podSelector": {"matchLabels": {"a": datetime.date(2024, 1, 1)}}},
        "spec.podSelector.matchLabels['a']: must be a string, not a date",
    ),
    ({"podSelector": {"matchLabels": {"a": b"x"}}}, "must be a string, not a bytes"),
    ({"podSelector": {"matchLabels": {"a b": "x"}}}, "'a b' is not a valid label key"),
    ({"podSelector": {"matchLabels": {"a": "-x"}}}, "'-x' is not a valid label value"),
    ({"podSelector": {"matchLabels": {"a": "x" * 64}}}, "is not a valid label value"),
    ({"podSelector": {"matchLabels": {"/a": "x"}}}, "'/a' is not a valid label key"),
    ({"podSelector": {"matchlabels": {}}}, "spec.podSelector.matchlabels: unknown field"),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}},
        "matchExpressions[0].operator: unsupported value 'in'",
    ),
    (
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        "matchExpressions[0].values: must be non-empty with operator In",
    ),
    (
        {
            "podSelector": {
                "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
            }
        },
        "matchExpressions[0].values: must be empty with operator Exists",
    ),
    ({"podSelector": {"matchExpressions": [{"operator": "Exists"}]}}, "key: is required"),
    ({"policyTypes": "Ingress"}, "spec.policyTypes: must be a list, not a string"),
    ({"policyTypes": ["ingress"]}, "spec.policyTypes[0]: unsupported value 'ingress'"),
    (
        {"policyTypes": ["Ingress", "Egress", "Ingress"]},
        "spec.policyTypes: may not list more than two",
    ),
    ({"ingress": [{"to": []}]}, "spec.ingress[0].to: unknown field"),
    ({"egress": [{"from": []}]}, "spec.egress[0].from: unknown field"),
    ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]: must specify a peer"),
    ({"ingress": [{"from": [{"podSelector": None}]}]}, "from[0]: must specify a peer"),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}]},
        "from[0]: may not specify both ipBlock and another peer",
    ),
    ({"ingress": [{"from": [{"ipBlock": {}}]}]}, "ipBlock.cidr: is required"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]}, "is not a valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]}, "is not a valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "010.0.0.0/8"}}]}]}, "is not a valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/08"}}]}]}, "is not a valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}, "is not a valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "::ffff:10.0.0.0/104"}}]}]}, "valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "fe80::%eth0/64"}}]}]}, "valid CIDR"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": 10}}]}]}, "cidr: must be a string"),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
        "ipBlock.except[0]: must be a strict subset of cidr",
    ),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
        "ipBlock.except[0]: must be a strict subset of cidr",
    ),
    (
        {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["::/64"]}}]}]},
        "ipBlock.except[0]: must be a strict subset of cidr",
    ),
    ({"ingress": [{"ports": [{"port": 0}]}]}, "ports[0].port: must be between 1 and 65535"),
    ({"ingress": [{"ports": [{"port": 65536}]}]}, "ports[0].port: must be between 1 and 65535"),
    ({"ingress": [{"ports": [{"port": 2**40}]}]}, "ports[0].port: must fit in 32 bits"),
    ({"ingress": [{"ports": [{"port": 53.0}]}]}, "must be an integer or a string, not a float"),
    ({"ingress": [{"ports": [{"port": True}]}]}, "must be an integer or a string, not a boolean"),
    ({"ingress": [{"ports": [{"port": "80"}]}]}, "must contain at least one letter"),
    ({"ingress": [{"ports": [{"port": ""}]}]}, "must be 1-15 characters"),
    ({"ingress": [{"ports": [{"port": "Http"}]}]}, "must be 1-15 characters"),
    ({"ingress": [{"ports": [{"port": "a" * 16}]}]}, "must be 1-15 characters"),
    ({"ingress": [{"ports": [{"port": "a--b"}]}]}, "must not contain '--'"),
    ({"ingress": [{"ports": [{"port": "-ab"}]}]}, "nor begin or end with '-'"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]}, "endPort: must be between port"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": 70000}]}]}, "endPort: must be between port"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": "90"}]}]}, "endPort: must be an integer"),
    ({"ingress": [{"ports": [{"endPort": 90}]}]}, "endPort: may not be set without port"),
    ({"ingress": [{"ports": [{"port": 80, "protocol": "tcp"}]}]}, "unsupported value 'tcp'"),
    ({"ingress": [{"ports": [{"port": 80, "protocol": ""}]}]}, "unsupported value ''"),
    ({"ingress": [{"ports": [{"port": 80, "protocol": 6}]}]}, "protocol: must be a string"),
]


@pytest.mark.parametrize("spec", VALID_NETWORK_POLICIES)
def test_valid_network_policies_pass(spec: dict[str, Any]) -> None:
    assert problems(network_policy_spec, spec) == []
    spec_hash(NETWORK_POLICY, spec)  # and normalise and hash


@pytest.mark.parametrize(("spec", "message"), INVALID_NETWORK_POLICIES)
def test_invalid_network_policies_name_the_field(spec: dict[str, Any], message: str) -> None:
    found = problems(network_policy_spec, spec)
    assert found, spec
    assert any(message in str(p) for p in found), [str(p) for p in found]


def test_shape_problems_are_structural_and_value_problems_are_not() -> None:
    """A trial against a sample namespace judges shape only (values may come from data)."""
    (shape,) = problems(network_policy_spec, {"ingress": "allow"})
    assert shape.structural
    (value,) = problems(network_policy_spec, {"ingress": [{"ports": [{"port": 0}]}]})
    assert not value.structural


VALID_CALICO: list[dict[str, Any]] = [
    {"types": ["Ingress"]},
    {"order": 10.5, "selector": "all()", "namespaceSelector": "a == 'b'", "types": ["Egress"]},
    {
        "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"nets": ["10.0.0.0/8"]},
                     "destination": {"ports": [80, "http", "1000:2000"]}}],
        "egress": [{"action": "Deny", "protocol": 17, "ipVersion": 4,
                    "icmp": {"type": 8, "code": 0}, "http": {"methods": ["GET"],
                    "paths": [{"prefix": "/"}]}, "metadata": {"annotations": {"a": "b"}}}],
    },
]  # fmt: skip

INVALID_CALICO: list[tuple[dict[str, Any], str]] = [
    ({"types": "Ingress"}, "spec.types: must be a list"),
    ({"types": ["ingress"]}, "spec.types[0]: unsupported value 'ingress'"),
    ({"order": "high"}, "spec.order: must be a number, not a string"),
    ({"order": True}, "spec.order: must be a number, not a boolean"),
    ({"order": float("inf")}, "spec.order: must be a finite number"),
    ({"selector": ["a"]}, "spec.selector: must be a string, not a list"),
    ({"ingress": [{}]}, "spec.ingress[0].action: is required"),
    ({"ingress": [{"action": "allow"}]}, "spec.ingress[0].action: unsupported value 'allow'"),
    ({"ingress": [{"action": "Allow", "ipVersion": 5}]}, "ipVersion: unsupported value 5"),
    ({"ingress": [{"action": "Allow", "icmp": {"type": 255}}]}, "icmp.type: must be between"),
    ({"egress": [{"action": "Allow", "destination": {"ports": [[80]]}}]}, "ports[0]: must be an"),
    ({"egress": [{"action": "Allow", "destination": {"nets": "10.0.0.0/8"}}]}, "must be a list"),
    ({"egress": [{"action": "Allow", "destination": {"port": [80]}}]}, "port: unknown field"),
    ({"egress": [{"action": "Allow", "protocol": 1.5}]}, "protocol: must be an integer or"),
]


@pytest.mark.parametrize("spec", VALID_CALICO)
def test_valid_calico_policies_pass(spec: dict[str, Any]) -> None:
    assert problems(calico_spec, spec) == []
    spec_hash(GLOBAL_NETWORK_POLICY, spec)


@pytest.mark.parametrize(("spec", "message"), INVALID_CALICO)
def test_invalid_calico_policies_name_the_field(spec: dict[str, Any], message: str) -> None:
    found = problems(calico_spec, spec)
    assert any(message in str(p) for p in found), [str(p) for p in found]


# -- properties: whatever passes normalises and hashes; whatever YAML makes is judged ------------

#: What ``yaml.safe_load`` can produce, nested.
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
    st.dates(), st.binary(max_size=4),
    st.sampled_from(["Ingress", "Egress", "TCP", "UDP", "10.0.0.0/8", "In", "Exists", "app"]),
)  # fmt: skip
KEYS = st.sampled_from(
    ["podSelector", "policyTypes", "ingress", "egress", "from", "to", "ports", "port", "endPort",
     "protocol", "ipBlock", "cidr", "except", "namespaceSelector", "matchLabels",
     "matchExpressions", "key", "operator", "values", "app"]
)  # fmt: skip
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(KEYS, YAML_VALUES, max_size=4))
def test_anything_that_validates_normalises_and_hashes(spec: dict[str, Any]) -> None:
    if not problems(network_policy_spec, spec):
        spec_hash(NETWORK_POLICY, spec)


@settings(max_examples=300, deadline=None)
@given(YAML_VALUES)
def test_validation_never_raises(value: Any) -> None:
    problems(network_policy_spec, value)
    problems(calico_spec, value)
