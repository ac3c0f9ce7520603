"""Built-in switches mean what they say: a connectivity matrix over every combination.

For each combination of the built-in policies' switches (denyAll ingress/egress, allowDNS,
allowKubeSystem ingress/egress, allowSameNamespace ingress/egress) and two DNS namespaces, the
profile is planned by the real core (parse, govern, render) over a small cluster, in every
flavor, and the objects it would create are evaluated by the reference evaluators in
``tests/netpol.py`` (NetworkPolicy, Calico NetworkPolicy and GlobalNetworkPolicy,
ClusterNetworkPolicy with either DNS tier; the NetworkPolicy flavor in both layouts, Separate
and Compact) for every ordered pair of pods and a few ports. The outcome must equal
:func:`promised` (``tests/switches.py``, shared with the Felix packet tests), which says what
the switches' names promise, written from their names alone, not from the templates.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import EXEMPT_LABEL, NAMESPACE_NAME_LABEL
from default_policy_operator.core.plan import Verb
from tests.inline_render import InlineWorld
from tests.netpol import (
    Pod,
    allowed,
    calico_allowed,
    calico_namespaced_allowed,
    cluster_allowed,
)
from tests.switches import CNP, DNS_LABELS, Switches, promised

GOVERNED = "team-a"
OTHER = "team-b"  # exempt: a namespace no profile governs
PORTS = (("UDP", 53), ("TCP", 53), ("TCP", 8080), ("UDP", 5353))
CALICO = "CalicoGlobalNetworkPolicy"
CALICO_NAMESPACED = "CalicoNetworkPolicy"
COMPACT = "Compact"

COMBINATIONS = (
    [
        Switches(*flags, dns_namespace)
        for flags in itertools.product((False, True), repeat=7)
        for dns_namespace in ("kube-system", "coredns")
    ]
    + [  # the same promises from one dpo-baseline object per namespace
        Switches(*flags, dns_namespace, layout=COMPACT)
        for flags in itertools.product((False, True), repeat=7)
        for dns_namespace in ("kube-system", "coredns")
    ]
    + [
        Switches(*flags, dns_namespace, CALICO_NAMESPACED)
        for flags in itertools.product((False, True), repeat=7)
        for dns_namespace in ("kube-system", "coredns")
    ]
    + [  # a cluster-scoped policy cannot say "the pod's own namespace": no allowSameNamespace
        Switches(*flags, False, False, dns_namespace, CALICO)
        for flags in itertools.product((False, True), repeat=5)
        for dns_namespace in ("kube-system", "coredns")
    ]
    + [
        Switches(*flags, False, False, dns_namespace, CNP, dns_tier)
        for flags in itertools.product((False, True), repeat=5)
        for dns_namespace in ("kube-system", "coredns")
        for dns_tier in ("Baseline", "Admin")
    ]
)
EVALUATORS = {
    "NetworkPolicy": allowed,
    CALICO_NAMESPACED: calico_namespaced_allowed,
    CALICO: calico_allowed,
    CNP: cluster_allowed,
}
KINDS = {
    "NetworkPolicy": "NetworkPolicy",
    CALICO_NAMESPACED: "NetworkPolicy",
    CALICO: "GlobalNetworkPolicy",
    CNP: "ClusterNetworkPolicy",
}


def pods(switches: Switches) -> dict[str, Pod]:
    return {
        "web": Pod(GOVERNED, {"app": "web"}),
        "db": Pod(GOVERNED, {"app": "db"}),
        "kube-system": Pod("kube-system", {"component": "metrics-server"}),
        "dns": Pod(switches.dns_namespace, DNS_LABELS),
        "other": Pod(OTHER, {"app": "web"}),
    }


def namespaces(switches: Switches) -> dict[str, dict[str, str]]:
    """The cluster's namespaces and their labels (as the API server sets them)."""
    names = {GOVERNED: {}, OTHER: {EXEMPT_LABEL: "true"}, "kube-system": {}}
    names[switches.dns_namespace] = {}
    return {name: {NAMESPACE_NAME_LABEL: name, **labels} for name, labels in names.items()}


def rendered(switches: Switches) -> list[dict[str, Any]]:
    """Every object the operator would create for the profile, in every namespace."""
    names = namespaces(switches)
    world = InlineWorld(protected_namespaces("dpo-system"))
    for name, labels in names.items():
        world.set_namespace(Namespace(name, labels))
    entry = world.update_profile(
        {"metadata": {"name": "matrix", "uid": "u", "generation": 1}, "spec": switches.spec()}
    )
    assert entry.error is None, entry.error
    results = [world.plan_namespace(name) for name in names] + [world.plan_calico()]
    assert not any(result.errors for result in results)
    actions = [action for result in results for action in result.actions]
    assert {a.verb for a in actions} <= {Verb.CREATE}
    return [a.body for a in actions if a.body is not None]


def label(switches: Switches) -> str:
    on = [f.name for f in dataclasses.fields(switches) if getattr(switches, f.name) is True]
    return "+".join([switches.flavor, switches.layout, *on, switches.dns_namespace])


@pytest.mark.parametrize("switches", COMBINATIONS, ids=label)
def test_every_combination_gives_the_connectivity_its_names_promise(switches: Switches) -> None:
    policies = rendered(switches)
    assert all(p["kind"] == KINDS[switches.flavor] for p in policies)
    if switches.flavor in ("NetworkPolicy", CALICO_NAMESPACED):
        assert all(p["metadata"]["namespace"] == GOVERNED for p in policies)
    if switches.layout == COMPACT:  # one object, or none when nothing is denied
        names = [p["metadata"]["name"] for p in policies]
        assert names == (["dpo-baseline"] if switches.deny_ingress or switches.deny_egress else [])
    evaluate = EVALUATORS[switches.flavor]
    everyone = pods(switches)
    labels: Mapping[str, Mapping[str, str]] = namespaces(switches)
    wrong = [
        f"{a} -> {b} {protocol}/{port}: got {got}"
        for (a, source), (b, destination) in itertools.permutations(everyone.items(), 2)
        for protocol, port in PORTS
        if (got := evaluate(policies, source, destination, protocol, port, labels))
        is not promised(switches, GOVERNED, source, destination, protocol, port)
    ]
    assert not wrong, wrong


def test_the_matrix_covers_every_combination() -> None:
    assert len(COMBINATIONS) == 2**7 * 2 * 3 + 2**5 * 2 + 2**5 * 2 * 2
    assert len(set(COMBINATIONS)) == len(COMBINATIONS)
