"""Packets: the operator's NetworkPolicy flavor enforced by a real dataplane (kube-router).

Pods are network namespaces with veth pairs (:mod:`dpo_dev.dataplane`); kube-router's policy
controller runs in a private node namespace against a dedicated control plane, and the operator
(`dpo run`) writes the policies. Every verdict is a real connection (TCP, UDP, DNS) from one pod
namespace to another, a fresh flow each time. Needs root (network namespaces, iptables).

Measurements (latencies, probe counts) are printed at the end of the module (``pytest -s``)
and written to ``$DPO_DATAPLANE_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from default_policy_operator.core.model import parse_profile
from dpo_dev.cluster import ControlPlane
from dpo_dev.dataplane import Dataplane, PodNet
from tests.netpol import Pod, allowed
from tests.packets import (
    Flow,
    Prober,
    converge,
    namespace,
    observe,
    put_profile,
    table,
    timed,
    wait_reconciled,
)
from tests.support import MANAGED, Api, ApiStatus, OperatorProcess, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root"),
]

NETPOLS = "/apis/networking.k8s.io/v1/networkpolicies"
REPORT: dict[str, Any] = {}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own: kube-router sees only this module's objects."""
    with ControlPlane(tmp_path_factory.mktemp("dataplane-plane")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def api(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture(scope="module")
def dataplane(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataplane]:
    with Dataplane(plane.kubeconfig, tmp_path_factory.mktemp("dataplane")) as running:
        yield running


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, dataplane: Dataplane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("dataplane-operator") / "operator.log"
    with OperatorProcess(plane.kubeconfig, log) as process:
        yield process


@dataclass(frozen=True)
class Base:
    """The pods every test can use: DNS and another kube-system pod."""

    dns: PodNet
    system: PodNet


@pytest.fixture(scope="module")
def base(dataplane: Dataplane, operator: OperatorProcess) -> Iterator[Base]:
    dns, system = dataplane.add_pods(
        [
            ("kube-system", "coredns", {"k8s-app": "kube-dns"}),
            ("kube-system", "metrics-server", {"k8s-app": "metrics-server"}),
        ]
    )
    yield Base(dns=dns, system=system)
    _print_report()


def _print_report() -> None:
    text = json.dumps(REPORT, indent=2, default=str)
    print(f"\n-- dataplane measurements --\n{text}", file=sys.stderr)
    target = os.environ.get("DPO_DATAPLANE_REPORT")
    if target:
        Path(target).write_text(text + "\n")


# -- helpers ----------------------------------------------------------------------------------


def wait_policies(api: Api, namespaces: list[str], spec: dict[str, Any]) -> None:
    """Every namespace holds exactly the policies ``spec`` asks for.

    Checked on the objects themselves, named as the profile model names them (which policies a
    spec asks for is not what these tests judge: the packets are).
    """
    profile = parse_profile({"metadata": {"name": "expected"}, "spec": spec})
    wanted = {f"dpo-{policy}" for policy in profile.policy_names()}

    def held() -> bool:
        return all(set(api.policies(ns, MANAGED)) == wanted for ns in namespaces)

    wait_for(held, timeout=30, what=f"{namespaces} to hold {sorted(wanted)}")


# -- (a) every switch combination that matters --------------------------------------------------


@dataclass(frozen=True)
class Switches:
    deny_ingress: bool = True
    deny_egress: bool = True
    dns: bool = True
    system_ingress: bool = True
    system_egress: bool = False
    same_ingress: bool = False
    same_egress: bool = False

    def spec(self, selector: dict[str, Any], layout: str = "Separate") -> dict[str, Any]:
        return {
            "namespaceSelector": selector,
            "layout": layout,
            "policies": {
                "denyAll": {"ingress": self.deny_ingress, "egress": self.deny_egress},
                "allowDNS": {"enabled": self.dns},
                "allowKubeSystem": {"ingress": self.system_ingress, "egress": self.system_egress},
                "allowSameNamespace": {"ingress": self.same_ingress, "egress": self.same_egress},
            },
        }

    def promise(self, flow: Flow, governed: str) -> bool:
        """What the switches promise, from the README, written independently of the operator.

        NetworkPolicy flavor: deny-all isolates the directions it names; the allows only open
        holes in a denied direction (a direction whose deny is off stays open, whatever allows
        are switched on). A flow needs the source's egress and the destination's ingress.
        """
        return self._egress(flow, governed) and self._ingress(flow, governed)

    def _egress(self, flow: Flow, governed: str) -> bool:
        if flow.source.namespace != governed:
            return True
        to = flow.destination
        isolated = self.deny_egress
        is_dns = to.labels.get("k8s-app") == "kube-dns" and to.namespace == "kube-system"
        return (
            not isolated
            or (self.dns and is_dns and flow.port == 53)
            or (self.system_egress and to.namespace == "kube-system")
            or (self.same_egress and to.namespace == governed)
        )

    def _ingress(self, flow: Flow, governed: str) -> bool:
        if flow.destination.namespace != governed:
            return True
        isolated = self.deny_ingress
        return (
            not isolated
            or (self.system_ingress and flow.source.namespace == "kube-system")
            or (self.same_ingress and flow.source.namespace == governed)
        )


DEFAULTS = Switches()
COMBINATIONS = {
    "defaults": DEFAULTS,
    "egress-deny-off": replace(DEFAULTS, deny_egress=False),
    "egress-deny-off-dns-off": replace(DEFAULTS, deny_egress=False, dns=False),
    "kube-system-egress-on": replace(DEFAULTS, system_egress=True),
    "kube-system-ingress-off": replace(DEFAULTS, system_ingress=False),
    "same-namespace-on": replace(DEFAULTS, same_ingress=True, same_egress=True),
    "same-namespace-ingress-only": replace(DEFAULTS, same_ingress=True),
    "dns-off": replace(DEFAULTS, dns=False),
    "ingress-deny-only": Switches(deny_egress=False, dns=False, system_ingress=False),
    "all-off": Switches(False, False, False, False, False, False, False),
}


@dataclass(frozen=True)
class SwitchWorld:
    governed: str
    flows: list[Flow]


@pytest.fixture(scope="module")
def switch_world(api: Api, dataplane: Dataplane, base: Base) -> SwitchWorld:
    governed = namespace(api, "sw-gov", dataplane="switches")
    other = namespace(api, "sw-other")
    web, worker, client = dataplane.add_pods(
        [
            (governed, "web", {"app": "web"}),
            (governed, "worker", {"app": "worker"}),
            (other, "client", {"app": "client"}),
        ]
    )
    flows = [
        Flow(web, client, "TCP", 80),  # governed -> other namespace
        Flow(client, web, "TCP", 80),  # other namespace -> governed
        Flow(web, base.dns, "UDP", 53),
        Flow(web, base.dns, "TCP", 53),
        Flow(web, base.dns, "TCP", 80),  # DNS pod, not the DNS port
        Flow(base.system, web, "TCP", 8080),  # kube-system -> governed
        Flow(web, base.system, "TCP", 443),  # governed -> kube-system
        Flow(web, worker, "TCP", 80),  # same namespace
        Flow(worker, web, "UDP", 8125),  # same namespace, UDP
        Flow(web, worker, "ICMP", 0),  # ping inside the namespace
        Flow(client, web, "ICMP", 0),  # ping from another namespace
        Flow(client, base.dns, "UDP", 53),  # ungoverned control: always open
    ]
    return SwitchWorld(governed, flows)


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_switch_combination_matches_its_promise(
    api: Api, dataplane: Dataplane, switch_world: SwitchWorld, combination: str
) -> None:
    switches = COMBINATIONS[combination]
    expected = {f: switches.promise(f, switch_world.governed) for f in switch_world.flows}
    spec = switches.spec({"matchLabels": {"dataplane": "switches"}})
    written = put_profile(api, "switches", spec)
    wait_reconciled(api, "switches", governed=1)
    wait_policies(api, [switch_world.governed], spec)
    latency = converge(dataplane, expected, since=written)
    seen = observe(dataplane, switch_world.flows)
    REPORT.setdefault("switch_matrices", {})[combination] = {
        str(flow): "OPEN" if open_ else "BLOCKED" for flow, open_ in seen.items()
    }
    REPORT.setdefault("profile_write_to_enforced_s", []).append(round(latency, 3))
    assert seen == expected, table(expected, seen)


#: A representative set for the Compact layout: every allow in a rule of dpo-baseline, egress
#: open (dpo-baseline lists Ingress only), and deny-all with no allow at all.
COMPACT_COMBINATIONS = ["same-namespace-on", "egress-deny-off", "dns-off"]


@pytest.mark.parametrize("combination", COMPACT_COMBINATIONS)
def test_compact_layout_lets_the_same_packets_through_as_separate(
    api: Api, dataplane: Dataplane, switch_world: SwitchWorld, combination: str
) -> None:
    """The same profile, switched in place from Separate to Compact: the same verdict for every
    flow, and the promised one."""
    switches = COMBINATIONS[combination]
    expected = {f: switches.promise(f, switch_world.governed) for f in switch_world.flows}
    selector = {"matchLabels": {"dataplane": "switches"}}
    seen = {}
    for layout in ("Separate", "Compact"):
        spec = switches.spec(selector, layout)
        written = put_profile(api, "switches", spec)
        wait_reconciled(api, "switches", governed=1)
        wait_policies(api, [switch_world.governed], spec)
        converge(dataplane, expected, since=written)
        seen[layout] = observe(dataplane, switch_world.flows)
    REPORT.setdefault("compact_layout", {})[combination] = {
        str(flow): "OPEN" if open_ else "BLOCKED" for flow, open_ in seen["Compact"].items()
    }
    assert seen["Compact"] == seen["Separate"], table(seen["Separate"], seen["Compact"])
    assert seen["Compact"] == expected, table(expected, seen["Compact"])


@pytest.mark.parametrize(
    "spec",
    [
        {"layout": "Compact", "flavor": "CalicoGlobalNetworkPolicy"},
        {"layout": "Compact", "customPolicies": [{"name": "baseline", "template": "x"}]},
    ],
    ids=["other-flavor", "custom-named-baseline"],
)
def test_the_crd_refuses_what_compact_cannot_do(api: Api, spec: dict[str, Any]) -> None:
    """The CEL rules say it before the operator would (with a ProfileError)."""
    with pytest.raises(ApiStatus) as refused:
        api.profile("compact-refused", spec)
    assert refused.value.code == 422
    assert "layout Compact" in refused.value.body


# -- (b) the reference architecture's examples, as custom templates ----------------------------

FRONTEND_TO_BACKEND = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector: {matchLabels: {role: backend}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {role: frontend}}}]
      ports: [{protocol: TCP, port: 6379}]
"""
FRONTEND_EGRESS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {role: backend}}}]
      ports: [{protocol: TCP, port: 6379}]
"""
USER_BOB = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {user: bob}}}]
      ports: [{protocol: TCP, port: 443}]
"""
PROMETHEUS = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {module: prometheus}}}]
      ports: [{protocol: TCP, port: 9100}]
"""


def test_reference_architecture_examples(api: Api, dataplane: Dataplane, base: Base) -> None:
    app = namespace(api, "ref-app", reference="governed")
    svc = namespace(api, "ref-svc", reference="governed")
    bob = namespace(api, "ref-bob", user="bob")
    alice = namespace(api, "ref-alice", user="alice")
    monitoring = namespace(api, "ref-monitoring", module="prometheus")
    frontend, backend, batch, service, bobs, alices, prometheus = dataplane.add_pods(
        [
            (app, "frontend", {"role": "frontend"}),
            (app, "backend", {"role": "backend"}),
            (app, "batch", {"role": "batch"}),
            (svc, "api", {"app": "api"}),
            (bob, "client", {"app": "client"}),
            (alice, "client", {"app": "client"}),
            (monitoring, "prometheus", {"app": "prometheus"}),
        ]
    )
    expected = {
        Flow(frontend, backend, "TCP", 6379): True,
        Flow(frontend, backend, "TCP", 80): False,
        Flow(batch, backend, "TCP", 6379): False,  # not a frontend
        Flow(frontend, batch, "TCP", 6379): False,  # not a backend
        Flow(bobs, service, "TCP", 443): True,
        Flow(bobs, service, "TCP", 80): False,
        Flow(alices, service, "TCP", 443): False,
        Flow(prometheus, service, "TCP", 9100): True,
        Flow(prometheus, backend, "TCP", 9100): True,
        Flow(prometheus, service, "TCP", 8080): False,
        Flow(alices, service, "TCP", 9100): False,
        Flow(service, base.dns, "UDP", 53): True,  # the baseline's DNS exception
        Flow(service, bobs, "TCP", 443): False,  # the baseline's egress deny
    }
    everything_open = {flow: True for flow in expected}
    converge(dataplane, everything_open)  # before the profile: nothing is isolated
    customs = [
        {"name": "frontend-to-backend", "template": FRONTEND_TO_BACKEND},
        {"name": "frontend-egress", "template": FRONTEND_EGRESS},
        {"name": "user-bob-443", "template": USER_BOB},
        {"name": "prometheus-9100", "template": PROMETHEUS},
    ]
    selector = {"matchLabels": {"reference": "governed"}}
    spec = {"namespaceSelector": selector, "customPolicies": customs}
    put_profile(api, "reference", spec)
    wait_reconciled(api, "reference", governed=2)
    wait_policies(api, [app, svc], spec)
    converge(dataplane, expected)
    REPORT["reference_examples"] = {str(f): "OPEN" if v else "BLOCKED" for f, v in expected.items()}


# -- policy write -> enforcement, kube-router alone ---------------------------------------------


def test_policy_write_to_enforcement_latency(api: Api, dataplane: Dataplane, base: Base) -> None:
    """A NetworkPolicy written directly (no operator) reaches the packets within a second."""
    target = namespace(api, "lat-target")
    server = dataplane.add_pod(target, "server", {"app": "server"})
    flow = Flow(base.system, server, "TCP", 80)
    path = f"/apis/networking.k8s.io/v1/namespaces/{target}/networkpolicies"
    deny = {"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    converge(dataplane, {flow: True})
    closing, opening = [], []
    for _ in range(5):
        written = time.monotonic()
        api.create(path, deny)
        closing.append(converge(dataplane, {flow: False}, since=written))
        written = time.monotonic()
        api.delete(f"{path}/deny")
        opening.append(converge(dataplane, {flow: True}, since=written))
    REPORT["networkpolicy_write_to_enforced"] = {"deny": timed(closing), "allow": timed(opening)}
    assert max(closing + opening) < 5.0


# -- (c) the reference evaluator against the dataplane ------------------------------------------

PORTS = [("TCP", 80), ("TCP", 8080), ("TCP", 6379), ("UDP", 8125), ("UDP", 53), ("TCP", 53)]
APPS = ["web", "db", "cache"]


def _random_peer(rng: random.Random) -> dict[str, Any]:
    choice = rng.randrange(4)
    pods = {"podSelector": {"matchLabels": {"app": rng.choice(APPS)}}}
    namespaces = {"namespaceSelector": {"matchLabels": {"team": rng.choice(["a", "b"])}}}
    if choice == 0:
        return pods
    if choice == 1:
        return namespaces
    if choice == 2:
        return {**pods, **namespaces}
    return {"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": rng.choice(["In", "NotIn"]), "values": ["a"]}]}}  # fmt: skip


def _random_custom(rng: random.Random, index: int) -> dict[str, str]:
    direction = rng.choice(["Ingress", "Egress"])
    peers_key, rules_key = ("from", "ingress") if direction == "Ingress" else ("to", "egress")
    rule: dict[str, Any] = {peers_key: [_random_peer(rng) for _ in range(rng.randint(1, 2))]}
    if rng.random() < 0.8:
        picked = rng.sample(PORTS[:4], rng.randint(1, 2))
        rule["ports"] = [{"protocol": proto, "port": port} for proto, port in picked]
    selector = {"matchLabels": {"app": rng.choice(APPS)}} if rng.random() < 0.5 else {}
    spec = {"podSelector": selector, "policyTypes": [direction], rules_key: [rule]}
    body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "spec": spec}
    return {"name": f"custom-{index}", "template": json.dumps(body)}


def _random_profile(rng: random.Random, seed_label: str) -> dict[str, Any]:
    switches = Switches(*(rng.random() < 0.5 for _ in range(7)))
    spec = switches.spec({"matchLabels": {"diff": seed_label}})
    spec["customPolicies"] = [_random_custom(rng, i) for i in range(rng.randint(0, 2))]
    return spec


def _evaluate(api: Api, flows: list[Flow]) -> dict[Flow, bool]:
    policies = api.request("GET", NETPOLS)["items"]
    labels = {
        ns["metadata"]["name"]: ns["metadata"].get("labels", {})
        for ns in api.request("GET", "/api/v1/namespaces")["items"]
    }

    def pod(p: PodNet) -> Pod:
        return Pod(p.namespace, dict(p.labels))

    return {
        f: allowed(policies, pod(f.source), pod(f.destination), f.protocol, f.port, labels)
        for f in flows
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reference_evaluator_agrees_with_the_dataplane(
    api: Api, dataplane: Dataplane, base: Base, seed: int
) -> None:
    rng = random.Random(seed)
    label = f"seed-{seed}"
    specs = []
    namespaces = []
    for i in range(3):
        labels = {"diff": label, "team": rng.choice(["a", "b"])}
        namespaces.append(namespace(api, f"diff{seed}-n{i}", **labels))
        specs += [(namespaces[-1], f"p{j}", {"app": rng.choice(APPS)}) for j in range(2)]
    pods = [base.dns, base.system, *dataplane.add_pods(specs)]
    spec = _random_profile(rng, label)
    put_profile(api, f"diff-{seed}", spec)
    wait_reconciled(api, f"diff-{seed}", governed=3)
    wait_policies(api, namespaces, spec)
    flows: list[Flow] = []
    while len(flows) < 30:
        source, destination = rng.sample(pods, 2)
        flows.append(Flow(source, destination, *rng.choice(PORTS)))
    expected = _evaluate(api, flows)
    try:
        converge(dataplane, expected)
    finally:
        REPORT.setdefault("differential", {})[label] = {
            "profile": spec,
            "probes": len(flows),
            "open": sum(expected.values()),
        }
        for pod in pods[2:]:
            dataplane.remove_pod(pod)


# -- (d) no gap while the operator is killed and profiles hand over ----------------------------


def test_no_gap_through_restart_and_handover(
    api: Api, dataplane: Dataplane, operator: OperatorProcess, base: Base
) -> None:
    governed = namespace(api, "gap-gov", gap="yes")
    outside = namespace(api, "gap-out")
    app, client = dataplane.add_pods(
        [(governed, "app", {"app": "web"}), (outside, "client", {"app": "client"})]
    )
    intruder, dns = Flow(client, app, "TCP", 80), Flow(app, base.dns, "UDP", 53)
    selector = {"matchLabels": {"gap": "yes"}}
    put_profile(api, "gap-a", {"namespaceSelector": selector, "priority": 10})
    wait_reconciled(api, "gap-a", governed=1)
    wait_policies(api, [governed], {})
    converge(dataplane, {intruder: False, dns: True})
    with Prober(dataplane, {intruder: False, dns: True}) as prober:
        _disrupt(api, operator, prober, governed)
    REPORT["no_gap"] = prober.summary()
    wrong = {
        phase: {flow: c["wrong"] for flow, c in flows.items() if c["wrong"]}
        for phase, flows in prober.summary().items()
    }
    assert not any(wrong.values()), f"probes with the wrong verdict: {wrong}"
    # every phase ran until each flow had sent at least 10 probes in it (wait_probes)
    sent = {phase: prober.sent(phase) for phase in prober.counts}
    assert all(n >= 10 * len(prober.expect_open) for n in sent.values()), sent


def _disrupt(api: Api, operator: OperatorProcess, prober: Prober, governed: str) -> None:
    """Kill the operator, hand a namespace over, edit, delete; each a phase of the prober."""
    selector = {"matchLabels": {"gap": "yes"}}
    b_spec = {"namespaceSelector": selector, "priority": 20}
    steps: list[tuple[str, Callable[[], object], str, dict[str, Any]]] = [
        ("operator-kill-9", lambda: _kill_and_restart(operator, prober), "gap-a", {}),
        ("priority-handover",
         lambda: put_profile(api, "gap-b", {**b_spec, "policies": SAME_NAMESPACE}), "gap-b",
         {"policies": SAME_NAMESPACE}),
        ("profile-edit",
         lambda: put_profile(api, "gap-b", {**b_spec, "policies": SYSTEM_EGRESS}), "gap-b",
         {"policies": SYSTEM_EGRESS}),
        ("delete-while-other-takes-over", lambda: api.delete_profile("gap-b"), "gap-a", {}),
    ]  # fmt: skip
    prober.wait_probes(10)
    for phase, act, governor, spec in steps:
        prober.mark(phase)
        act()
        wait_reconciled(api, governor, governed=1)
        wait_policies(api, [governed], spec)
        prober.wait_probes(10)


SAME_NAMESPACE = {"allowSameNamespace": {"enabled": True}}
SYSTEM_EGRESS = {"allowKubeSystem": {"egress": True}}


def _kill_and_restart(operator: OperatorProcess, prober: Prober) -> None:
    operator.stop(signal.SIGKILL)
    prober.wait_probes(25)  # ~0.5 s with no operator at all
    operator.start()
