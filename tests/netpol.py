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

from tests.calico_selector import evaluate


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


# -- Calico GlobalNetworkPolicy (one tier) ----------------------------------------------------
#
# From Calico's policy documentation: a GlobalNetworkPolicy applies to an endpoint in a
# direction when it lists that direction in ``types`` and both its ``selector`` (pod labels) and
# ``namespaceSelector`` (namespace labels, plus ``projectcalico.org/name``) match. Applying
# policies are evaluated in ``order`` (then name); the first rule whose protocol, peer and
# ports match decides (Allow or Deny); if policies apply and no rule matched, the tier's end
# denies. An endpoint no policy applies to is not isolated.

CALICO_NAME = "projectcalico.org/name"


def _calico_namespace_labels(
    namespace: str, namespace_labels: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    return {**namespace_labels.get(namespace, {}), CALICO_NAME: namespace}


def _calico_selects(
    spec: Mapping[str, Any], pod: Pod, namespace_labels: Mapping[str, Mapping[str, str]]
) -> bool:
    ns_labels = _calico_namespace_labels(pod.namespace, namespace_labels)
    return evaluate(spec.get("selector") or "all()", pod.labels) and evaluate(
        spec.get("namespaceSelector") or "all()", ns_labels
    )


def _calico_rule_matches(
    rule: Mapping[str, Any],
    peer_key: str,
    other: Pod,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    if rule.get("protocol") not in (None, protocol):
        return False
    peer = rule.get(peer_key) or {}
    ns_labels = _calico_namespace_labels(other.namespace, namespace_labels)
    if not evaluate(peer.get("namespaceSelector") or "all()", ns_labels):
        return False
    if not evaluate(peer.get("selector") or "all()", other.labels):
        return False
    ports = (rule.get("destination") or {}).get("ports")
    return not ports or any(_calico_port_matches(p, port) for p in ports)


def _calico_port_matches(entry: int | str, port: int) -> bool:
    if isinstance(entry, int):
        return entry == port
    low, _, high = entry.partition(":")
    return low.isdigit() and int(low) <= port <= int(high or low)


def _calico_direction_allows(
    policies: Iterable[Mapping[str, Any]],
    pod: Pod,
    other: Pod,
    direction: str,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    kind = "Ingress" if direction == "ingress" else "Egress"
    peer_key = "source" if direction == "ingress" else "destination"
    applying = sorted(
        (
            p
            for p in policies
            if kind in p["spec"]["types"] and _calico_selects(p["spec"], pod, namespace_labels)
        ),
        key=lambda p: (p["spec"].get("order", float("inf")), p["metadata"]["name"]),
    )
    for policy in applying:
        for rule in policy["spec"].get(direction) or []:
            if _calico_rule_matches(rule, peer_key, other, protocol, port, namespace_labels):
                return bool(rule["action"] == "Allow")
    return not applying


def calico_allowed(
    policies: list[Mapping[str, Any]],
    source: Pod,
    destination: Pod,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """Whether GlobalNetworkPolicies let ``source`` open ``protocol``/``port`` to
    ``destination``."""
    return _calico_direction_allows(
        policies, source, destination, "egress", protocol, port, namespace_labels
    ) and _calico_direction_allows(
        policies, destination, source, "ingress", protocol, port, namespace_labels
    )


# -- Calico NetworkPolicy (namespaced, one tier) -------------------------------------------------
#
# As a GlobalNetworkPolicy, but it applies only to endpoints of its own namespace, and a rule
# peer without a ``namespaceSelector`` means endpoints of that same namespace.


def _in_own_namespace(policy: Mapping[str, Any]) -> Mapping[str, Any]:
    """A namespaced Calico policy as the equivalent global one (for the evaluator above)."""
    namespace = policy["metadata"]["namespace"]
    own = f'{CALICO_NAME} == "{namespace}"'
    spec = dict(policy["spec"])
    spec["namespaceSelector"] = own
    for direction, peer_key in (("ingress", "source"), ("egress", "destination")):
        rules = []
        for rule in spec.get(direction) or []:
            peer = dict(rule.get(peer_key) or {})
            peer.setdefault("namespaceSelector", own)
            rules.append({**rule, peer_key: peer})
        spec[direction] = rules
    return {**policy, "spec": spec}


def calico_namespaced_allowed(
    policies: list[Mapping[str, Any]],
    source: Pod,
    destination: Pod,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """Whether Calico NetworkPolicies let ``source`` open ``protocol``/``port`` to
    ``destination``."""
    as_global = [_in_own_namespace(p) for p in policies]
    return calico_allowed(as_global, source, destination, protocol, port, namespace_labels)


def calico_tier_allowed(
    global_policies: list[Mapping[str, Any]],
    namespaced_policies: list[Mapping[str, Any]],
    source: Pod,
    destination: Pod,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    """GlobalNetworkPolicies and Calico NetworkPolicies together: both kinds share the default
    tier, evaluated by order then name."""
    merged = [*global_policies, *(_in_own_namespace(p) for p in namespaced_policies)]
    return calico_allowed(merged, source, destination, protocol, port, namespace_labels)


# -- ClusterNetworkPolicy (sigs.k8s.io/network-policy-api v1beta1) --------------------------------
#
# From the API's documentation: the Admin tier is evaluated first, then the namespaces' own
# NetworkPolicies, then the Baseline tier. Within a tier, policies whose subject selects the pod
# are evaluated by ascending ``priority``, rules in order; the first rule whose peer and
# protocol match decides: Accept (allowed), Deny (denied) or Pass (on to the next layer). In
# the NetworkPolicy layer, a pod that some NetworkPolicy selects for the direction is decided
# there; otherwise evaluation goes on. A pod nothing decides is allowed.


def _cluster_subject(spec: Mapping[str, Any], pod: Pod, labels: Mapping[str, Any]) -> bool:
    return _cluster_peer(spec["subject"], pod, labels)


def _cluster_peer(peer: Mapping[str, Any], other: Pod, labels: Mapping[str, Any]) -> bool:
    """A subject or a rule peer: namespaces, or pods in namespaces (networks match no pod)."""
    namespace_labels = labels.get(other.namespace, {})
    if "namespaces" in peer:
        return selector_matches(peer["namespaces"], namespace_labels)
    if "pods" in peer:
        pods = peer["pods"]
        return selector_matches(pods["namespaceSelector"], namespace_labels) and (
            selector_matches(pods["podSelector"], other.labels)
        )
    return False  # networks: pods are addressed by selectors here


def _cluster_protocol(rule: Mapping[str, Any], protocol: str, port: int) -> bool:
    entries = rule.get("protocols")
    if not entries:
        return True
    for entry in entries:
        destination = (entry.get(protocol.lower()) or {}).get("destinationPort")
        if protocol.lower() not in entry:
            continue
        if destination is None or destination.get("number") == port:
            return True
        span = destination.get("range")
        if span and span["start"] <= port <= span["end"]:
            return True
    return False


def _cluster_tier(
    policies: Iterable[Mapping[str, Any]],
    tier: str,
    pod: Pod,
    other: Pod,
    direction: str,
    protocol: str,
    port: int,
    labels: Mapping[str, Any],
) -> bool | None:
    """The tier's verdict for ``pod`` in ``direction``: True, False, or None (no decision)."""
    peer_key = "from" if direction == "ingress" else "to"
    applying = sorted(
        (
            p
            for p in policies
            if p["spec"]["tier"] == tier and _cluster_subject(p["spec"], pod, labels)
        ),
        key=lambda p: (p["spec"]["priority"], p["metadata"]["name"]),
    )
    for policy in applying:
        for rule in policy["spec"].get(direction) or []:
            peers = rule.get(peer_key) or []
            if any(_cluster_peer(p, other, labels) for p in peers) and _cluster_protocol(
                rule, protocol, port
            ):
                if rule["action"] == "Pass":
                    return None
                return bool(rule["action"] == "Accept")
    return None


def _cluster_direction(
    policies: list[Mapping[str, Any]],
    network_policies: list[Mapping[str, Any]],
    pod: Pod,
    other: Pod,
    direction: str,
    protocol: str,
    port: int,
    labels: Mapping[str, Any],
) -> bool:
    args = (pod, other, direction, protocol, port, labels)
    admin = _cluster_tier(policies, "Admin", *args)
    if admin is not None:
        return admin
    kind = "Ingress" if direction == "ingress" else "Egress"
    selecting = [
        p
        for p in network_policies
        if p["metadata"]["namespace"] == pod.namespace
        and selector_matches(p["spec"].get("podSelector"), pod.labels)
        and kind in (p["spec"].get("policyTypes") or ["Ingress"])
    ]
    if selecting:
        return _direction_allows(selecting, pod, other, direction, protocol, port, labels)
    baseline = _cluster_tier(policies, "Baseline", *args)
    return baseline if baseline is not None else True


def cluster_allowed(
    policies: list[Mapping[str, Any]],
    source: Pod,
    destination: Pod,
    protocol: str,
    port: int,
    namespace_labels: Mapping[str, Mapping[str, str]],
    network_policies: list[Mapping[str, Any]] | None = None,
) -> bool:
    """Whether ClusterNetworkPolicies (and the namespaces' own ``network_policies``) let
    ``source`` open ``protocol``/``port`` to ``destination``."""
    own = network_policies or []
    return _cluster_direction(
        policies, own, source, destination, "egress", protocol, port, namespace_labels
    ) and _cluster_direction(
        policies, own, destination, source, "ingress", protocol, port, namespace_labels
    )
