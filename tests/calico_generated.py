"""Generated Calico profiles and the reference evaluator's verdicts on what the operator wrote,
for the differential test against Felix (``tests/e2e/test_felix_dataplane_e2e.py``).

A profile of a given Calico flavor draws the built-in switches and one or two custom templates in
Calico's own language: Allow or Deny, pod and namespace selectors (``==``, ``!=``, ``has``),
a protocol with or without a port. Everything is drawn from a seeded ``random.Random``, so a
disagreement replays exactly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from dpo_dev.dataplane import PodNet
from tests.netpol import Pod, calico_tier_allowed
from tests.packets import Flow
from tests.support import GNPS, Api

APPS = ("web", "db", "cache")
TEAMS = ("a", "b")
PORTS = (("TCP", 80), ("TCP", 6379), ("UDP", 8125), ("UDP", 53), ("TCP", 53))
CALICO_NPS = "/apis/crd.projectcalico.org/v1/networkpolicies"
KUBERNETES_NPS = "/apis/networking.k8s.io/v1/networkpolicies"


def random_profile(rng: random.Random, label: str, flavor: str) -> dict[str, Any]:
    """A profile of ``flavor`` over the namespaces labelled ``diff=<label>``, with one or two
    custom templates."""
    flags = [rng.random() < 0.5 for _ in range(7)]
    deny_in, deny_out, dns, system_in, system_out, same_in, same_out = flags
    policies: dict[str, Any] = {
        "denyAll": {"ingress": deny_in, "egress": deny_out},
        "allowDNS": {"enabled": dns},
        "allowKubeSystem": {"ingress": system_in, "egress": system_out},
    }
    if flavor == "CalicoNetworkPolicy":  # a global policy cannot say "the pod's own namespace"
        policies["allowSameNamespace"] = {"ingress": same_in, "egress": same_out}
    return {
        "namespaceSelector": {"matchLabels": {"diff": label}},
        "flavor": flavor,
        "policies": policies,
        "customPolicies": [_custom(rng, i, flavor) for i in range(rng.randint(1, 2))],
    }


def _custom(rng: random.Random, index: int, flavor: str) -> dict[str, str]:
    direction = rng.choice(("Ingress", "Egress"))
    peer_key = "source" if direction == "Ingress" else "destination"
    rule: dict[str, Any] = {"action": rng.choice(("Allow", "Allow", "Deny"))}
    peer = _peer(rng)
    if rng.random() < 0.8:
        protocol, port = rng.choice(PORTS)
        rule["protocol"] = protocol
        if rng.random() < 0.8:
            rule["destination"] = {"ports": [port]}
    if peer:
        rule[peer_key] = {**rule.get(peer_key, {}), **peer}
    selector = f"app == '{rng.choice(APPS)}'" if rng.random() < 0.5 else "all()"
    kind = "NetworkPolicy" if flavor == "CalicoNetworkPolicy" else "GlobalNetworkPolicy"
    spec = {"selector": selector, "types": [direction], direction.lower(): [rule]}
    return {"name": f"custom-{index}", "template": json.dumps({"kind": kind, "spec": spec})}


def _peer(rng: random.Random) -> dict[str, str]:
    choice = rng.randrange(5)
    pods = {"selector": f"app == '{rng.choice(APPS)}'"}
    if choice == 0:
        return pods
    if choice == 1:
        return {"namespaceSelector": f"team == '{rng.choice(TEAMS)}'"}
    if choice == 2:
        return {**pods, "namespaceSelector": "has(team)"}
    if choice == 3:
        return {"namespaceSelector": "team != 'a'"}
    return {}


def random_flows(rng: random.Random, pods: Sequence[PodNet], count: int) -> list[Flow]:
    flows: list[Flow] = []
    while len(flows) < count:
        source, destination = rng.sample(list(pods), 2)
        flows.append(Flow(source, destination, *rng.choice(PORTS)))
    return flows


def evaluate(api: Api, flows: Sequence[Flow]) -> dict[Flow, bool]:
    """The reference evaluator's verdict on every flow, from the policies as the cluster holds
    them: every GlobalNetworkPolicy and Calico NetworkPolicy (one tier, by order then name)."""
    namespaces = {f.source.namespace for f in flows} | {f.destination.namespace for f in flows}
    kubernetes = api.request("GET", KUBERNETES_NPS)["items"]
    assert not [p for p in kubernetes if p["metadata"]["namespace"] in namespaces], (
        "a Kubernetes NetworkPolicy where the flows run: the Calico evaluator does not model it"
    )
    global_policies = api.request("GET", GNPS)["items"]
    namespaced = api.request("GET", CALICO_NPS)["items"]
    labels = {
        ns["metadata"]["name"]: ns["metadata"].get("labels", {})
        for ns in api.request("GET", "/api/v1/namespaces")["items"]
    }

    def pod(p: PodNet) -> Pod:
        return Pod(p.namespace, dict(p.labels))

    return {
        f: calico_tier_allowed(
            global_policies, namespaced, pod(f.source), pod(f.destination), f.protocol, f.port,
            labels,
        )
        for f in flows
    }  # fmt: skip
