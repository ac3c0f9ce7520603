"""A reference evaluator of Kubernetes NetworkPolicy semantics, for asserting what policies mean.

Written from the Kubernetes documentation, independently of the operator: a pod is isolated
for a direction when any policy selecting it lists that direction in ``policyTypes``; an isolated
pod accepts a connection only if some such policy has a rule whose peers and ports match; a
connection needs both the sender's egress and the receiver's ingress to allow it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(
    peer: Mapping[str, Any],
    policy_namespace: str,
    other: Pod,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    if "ipBlock" in peer:
        return False  # pods are addressed by selectors here
    ns_selector = peer.get("namespaceSelector")
    pod_selector = peer.get("podSelector")
    if ns_selector is None:
        in_namespace = other.namespace == policy_namespace
    else:
        in_namespace = selector_matches(ns_selector, namespace_labels.get(other.namespace, {}))
    return in_namespace and selector_matches(pod_selector, other.labels)


def _ports_match(rule: Mapping[str, Any], protocol: str, port: int) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        start = entry["port"]
        end = entry.get("endPort", start)
        if isinstance(start, int) and start <= port <= end:
            return True
    return False


def _direction_allows(
    policies: Iterable[Mapping[str, Any]],
    pod: Pod,
    other: Pod,
    direction: str,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    kind = "Ingress" if direction == "ingress" else "Egress"
    peers_key = "from" if direction == "ingress" else "to"
    isolated = False
    for policy in policies:
        if policy["metadata"]["namespace"] != pod.namespace:
            continue
        spec = policy["spec"]
        if not selector_matches(spec.get("podSelector"), pod.labels):
            continue
        types = spec.get("policyTypes") or ["Ingress"]
        if kind not in types:
            continue
        isolated = True
        for rule in spec.get(direction) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                _peer_matches(p, pod.namespace, other, namespace_labels) for p in peers
            )
            if peer_ok and _ports_match(rule, protocol, port):
                return True
    return not isolated


def allowed(
    policies: list[Mapping[str, Any]],
    source: Pod,
    destination: Pod,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """Whether ``source`` may open a ``protocol``/``port`` connection to ``destination``."""
    return _direction_allows(
        policies, source, destination, "egress", protocol, port, namespace_labels
    ) and _direction_allows(
        policies, destination, source, "ingress", protocol, port, namespace_labels
    )
