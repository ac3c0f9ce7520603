"""Normalisation: what we render and what the API server stores compare equal, and only then."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from default_policy_operator.core.labels import PROFILE_LABEL
from default_policy_operator.core.model import parse_profile
from default_policy_operator.core.normalize import normalize_spec, spec_hash, state_of
from default_policy_operator.core.objects import GLOBAL_NETWORK_POLICY, NETWORK_POLICY, ObjectKey
from tests.inline_render import render_namespace

NP = NETWORK_POLICY


def same(a: Any, b: Any, kind: str = NP) -> bool:
    return spec_hash(kind, a) == spec_hash(kind, b)


# -- API server defaults ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rendered", "stored"),
    [
        # policyTypes inferred: Ingress always, Egress when there are egress rules
        ({"podSelector": {}}, {"podSelector": {}, "policyTypes": ["Ingress"]}),
        (
            {"podSelector": {}, "ingress": [{}]},
            {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]},
        ),
        (
            {"podSelector": {}, "egress": [{"to": [{"podSelector": {}}]}]},
            {
                "podSelector": {},
                "egress": [{"to": [{"podSelector": {}}]}],
                "policyTypes": ["Ingress", "Egress"],
            },
        ),
        # order of policyTypes does not matter
        (
            {"podSelector": {}, "policyTypes": ["Egress", "Ingress"]},
            {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        ),
        # protocol defaults to TCP, in both directions
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]},
            {
                "podSelector": {},
                "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}],
                "policyTypes": ["Ingress"],
            },
        ),
        (
            {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53}]}]},
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 53, "protocol": "TCP"}]}],
            },
        ),
        # Go's omitempty drops empty lists and maps
        (
            {"podSelector": {"matchLabels": {}}, "ingress": [{"from": [], "ports": []}]},
            {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]},
        ),
        ({"podSelector": {}, "egress": []}, {"podSelector": {}, "policyTypes": ["Ingress"]}),
        ({"podSelector": {}, "egress": None}, {"podSelector": {}, "policyTypes": ["Ingress"]}),
        (None, {}),
        ({}, {"policyTypes": ["Ingress"]}),
    ],
)
def test_apiserver_defaults_hash_like_the_explicit_form(rendered: Any, stored: Any) -> None:
    assert same(rendered, stored)
    assert normalize_spec(NP, rendered) == normalize_spec(NP, stored)


def test_every_builtin_hashes_like_its_apiserver_form() -> None:
    """The built-ins as the API server would return them: policyTypes and protocols spelled out."""
    profile = parse_profile(
        {"metadata": {"name": "p"}, "spec": {"policies": {"allowSameNamespace": {"ingress": True}}}}
    )
    for obj in render_namespace(profile, {"name": "n"}):
        spec = obj.body["spec"]
        stored: dict[str, Any] = {
            "podSelector": {},
            "policyTypes": spec.get("policyTypes")
            or ["Ingress", *(["Egress"] if spec.get("egress") else [])],
        }
        for direction in ("ingress", "egress"):
            if spec.get(direction):
                stored[direction] = [
                    {
                        **rule,
                        **(
                            {"ports": [{"protocol": "TCP", **p} for p in rule["ports"]]}
                            if "ports" in rule
                            else {}
                        ),
                    }
                    for rule in spec[direction]
                ]
        assert same(spec, stored), obj.policy


def test_normalize_does_not_touch_its_input() -> None:
    spec = {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}], "egress": []}
    normalize_spec(NP, spec)
    assert spec == {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}], "egress": []}


# -- real differences -------------------------------------------------------------------------


def test_allow_all_rule_differs_from_no_rule() -> None:
    assert not same({"podSelector": {}, "ingress": [{}]}, {"podSelector": {}})
    assert not same(
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
        {"podSelector": {}, "policyTypes": ["Egress"]},
    )
    assert normalize_spec(NP, {"ingress": [{}]})["ingress"] == [{}]


def test_same_namespace_peer_differs_from_all_namespaces_peer() -> None:
    """``podSelector: {}`` (this namespace) vs ``namespaceSelector: {}`` (every namespace)."""
    same_ns = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
    all_ns = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}
    both = {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}],
    }
    assert len({spec_hash(NP, same_ns), spec_hash(NP, all_ns), spec_hash(NP, both)}) == 3
    # and an empty selector still equals one spelled with empty matchLabels
    spelled = {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {}}}]}],
    }
    assert same(all_ns, spelled)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"podSelector": {}}, {"podSelector": {"matchLabels": {"app": "x"}}}),
        (
            {"podSelector": {}, "policyTypes": ["Ingress"]},
            {"podSelector": {}, "policyTypes": ["Egress"]},
        ),
        (
            {"ingress": [{"ports": [{"port": 80}]}]},
            {"ingress": [{"ports": [{"port": 80, "protocol": "UDP"}]}]},
        ),
        ({"ingress": [{"ports": [{"port": 80}]}]}, {"ingress": [{"ports": [{"port": 443}]}]}),
        ({"ingress": [{"ports": [{"port": 80}]}]}, {"ingress": [{"ports": [{"port": "80"}]}]}),
        ({"ingress": [{}, {}]}, {"ingress": [{}]}),
        (
            {"ingress": [{"ports": [{"port": 1}]}, {"ports": [{"port": 2}]}]},
            {"ingress": [{"ports": [{"port": 2}]}, {"ports": [{"port": 1}]}]},
        ),
        ({"podSelector": {"matchLabels": {"a": ""}}}, {"podSelector": {}}),
        ({"policyTypes": ["Ingress", "Egress"]}, {"policyTypes": ["Ingress"]}),
    ],
)
def test_different_specs_hash_differently(a: Any, b: Any) -> None:
    assert not same(a, b)


def test_kind_matters() -> None:
    spec = {"order": 2000, "types": ["Ingress"], "selector": "all()"}
    assert normalize_spec(GLOBAL_NETWORK_POLICY, spec) == spec  # no NetworkPolicy defaults
    assert "policyTypes" not in normalize_spec(GLOBAL_NETWORK_POLICY, {"egress": [{}]})
    assert spec_hash(GLOBAL_NETWORK_POLICY, {}) != spec_hash(NP, {})


def test_calico_spec_pruning() -> None:
    a = {"types": ["Egress"], "egress": [{"action": "Allow", "destination": {}, "source": {}}]}
    b = {"types": ["Egress"], "egress": [{"action": "Allow"}]}
    assert same(a, b, GLOBAL_NETWORK_POLICY)
    assert not same(b, {"types": ["Egress"], "egress": [{"action": "Deny"}]}, GLOBAL_NETWORK_POLICY)


def test_hash_is_short_stable_and_key_order_independent() -> None:
    a = {"podSelector": {"matchLabels": {"a": "1", "b": "2"}}, "policyTypes": ["Ingress"]}
    b = {"policyTypes": ["Ingress"], "podSelector": {"matchLabels": {"b": "2", "a": "1"}}}
    assert spec_hash(NP, a) == spec_hash(NP, b)
    canonical = json.dumps(normalize_spec(NP, a), sort_keys=True, separators=(",", ":"))
    assert spec_hash(NP, a) == hashlib.sha256(canonical.encode()).hexdigest()[:20]


def test_a_remembered_digest_follows_the_spec_not_the_object() -> None:
    """Digests are remembered by the spec's JSON: the same dict, changed in place after it was
    hashed, must hash as its new content, and an equal spec in another kind as that kind."""
    spec: dict[str, Any] = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
    before = spec_hash(NP, spec)
    spec["ingress"] = []
    assert spec_hash(NP, spec) != before
    assert spec_hash(NP, spec) == spec_hash(NP, {"podSelector": {}})
    assert spec_hash(GLOBAL_NETWORK_POLICY, spec) != spec_hash(NP, spec)
    uncached = json.dumps(normalize_spec(NP, spec), sort_keys=True, separators=(",", ":"))
    assert spec_hash(NP, spec) == hashlib.sha256(uncached.encode()).hexdigest()[:20]


def test_what_orjson_refuses_is_hashed_by_the_standard_library() -> None:
    """A template may render an integer beyond 64 bits; the apiserver, not the hash, refuses it."""
    huge = {"ingress": [{"ports": [{"port": 2**70}]}]}
    assert spec_hash(NP, huge) != spec_hash(NP, {"ingress": [{"ports": [{"port": 2**70 + 1}]}]})
    assert normalize_spec(NP, huge)["ingress"][0]["ports"][0]["port"] == 2**70


def test_keys_are_compared_as_json_sees_them() -> None:
    """Non-string keys (YAML allows them) become strings, as on the wire; non-ASCII text is
    hashed the same whatever the key order."""
    assert normalize_spec(GLOBAL_NETWORK_POLICY, {1: "a"}) == {"1": "a"}
    a = {"podSelector": {"matchLabels": {"é": "ü", "a": "1"}}}
    b = {"podSelector": {"matchLabels": {"a": "1", "é": "ü"}}}
    assert spec_hash(NP, a) == spec_hash(NP, b)
    assert spec_hash(NP, a) != spec_hash(NP, {"podSelector": {"matchLabels": {"é": "u"}}})


# -- object state -----------------------------------------------------------------------------


def test_state_of_a_stored_object() -> None:
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "dpo-deny-all",
            "namespace": "team-a",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {PROFILE_LABEL: "base", "x": "y"},
            "ownerReferences": [{"uid": "p-1"}, {"uid": "p-2"}],
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    state = state_of(body)
    assert state.key == ObjectKey(NP, "team-a", "dpo-deny-all")
    assert (state.uid, state.resource_version) == ("u-1", "42")
    assert state.labels == {PROFILE_LABEL: "base", "x": "y"}
    assert state.owner_uids == ("p-1", "p-2")
    assert state.profile == "base"
    assert state.spec_hash == spec_hash(
        NP, {"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}
    )


def test_state_of_a_bare_cluster_scoped_object() -> None:
    state = state_of({"kind": GLOBAL_NETWORK_POLICY, "metadata": {"name": "default.x"}})
    assert state.key == ObjectKey(GLOBAL_NETWORK_POLICY, "", "default.x")
    assert (state.uid, state.resource_version, state.profile) == ("", "", "")
    assert state.labels == {}
    assert state.owner_uids == ()
    assert state.spec_hash == spec_hash(GLOBAL_NETWORK_POLICY, None)
