"""Packets: the operator's Calico flavors enforced by Calico Felix v3.31.0.

The kube-router tests (``test_dataplane_e2e.py``) prove the NetworkPolicy flavor; this module
proves ``CalicoNetworkPolicy`` and ``CalicoGlobalNetworkPolicy`` with Calico's own policy
engine: Felix runs in a private node namespace against a dedicated control plane holding
Calico v3.31.0's CRDs (:mod:`dpo_dev.felix_dataplane`), pods are network namespaces with
``cali*`` veths, the operator (``dpo run``) writes the policies, and every verdict is a fresh
TCP, UDP, DNS or ICMP flow from one pod namespace to another. Needs root.

Measurements are printed at the end of the module (``pytest -s``) and written to
``$DPO_FELIX_REPORT`` when that is set.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from default_policy_operator.core.model import parse_profile
from default_policy_operator.core.objects import calico_policy_name
from dpo_dev.cluster import ControlPlane
from dpo_dev.dataplane import PodNet
from dpo_dev.felix import FELIX_VERSION
from dpo_dev.felix_dataplane import FelixDataplane
from tests.calico_generated import APPS, TEAMS, evaluate, random_flows, random_profile
from tests.packets import (
    ENFORCE_TIMEOUT,
    Flow,
    Prober,
    converge,
    namespace,
    observe,
    put_profile,
    timed,
    wait_reconciled,
)
from tests.support import GNPS, MANAGED, Api, OperatorProcess, calico_policy_path, wait_for
from tests.switches import Switches, promised

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root"),
]

CALICO_FLAVORS = ("CalicoNetworkPolicy", "CalicoGlobalNetworkPolicy")
SHORT = {"CalicoNetworkPolicy": "cnp", "CalicoGlobalNetworkPolicy": "gnp"}
#: What a profile with the default switches writes: allow-same-namespace is off by default.
DEFAULT_POLICIES = ("deny-all", "allow-dns", "allow-kube-system")
REPORT: dict[str, Any] = {"felix": FELIX_VERSION}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of its own: Felix sees only this module's objects."""
    with ControlPlane(tmp_path_factory.mktemp("felix-plane")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def api(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture(scope="module")
def dataplane(
    plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FelixDataplane]:
    with FelixDataplane(plane.kubeconfig, tmp_path_factory.mktemp("felix-dataplane")) as running:
        REPORT["felix_start_to_programmed_s"] = round(running.start_seconds or 0, 3)
        yield running


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, dataplane: FelixDataplane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("felix-operator") / "operator.log"
    with OperatorProcess(plane.kubeconfig, log) as process:
        yield process


@dataclass(frozen=True)
class Base:
    """The pods every test can use: DNS and another kube-system pod."""

    dns: PodNet
    system: PodNet


@pytest.fixture(scope="module")
def base(dataplane: FelixDataplane, operator: OperatorProcess) -> Iterator[Base]:
    dns, system = dataplane.add_pods(
        [
            ("kube-system", "coredns", {"k8s-app": "kube-dns"}),
            ("kube-system", "metrics-server", {"k8s-app": "metrics-server"}),
        ]
    )
    yield Base(dns=dns, system=system)
    REPORT["felix_restarts"] = dataplane.restarts()
    _print_report()


@pytest.fixture(autouse=True)
def felix_steady(dataplane: FelixDataplane) -> Iterator[None]:
    """Felix must not have exited during a test: its rules outlive it, and a restarted Felix
    reprograms from scratch, so a crash loop could pass every probe while enforcing late."""
    before = dataplane.restarts()
    yield
    assert dataplane.restarts() == before, f"Felix exited; see {dataplane.workdir / 'felix.log'}"


def _print_report() -> None:
    text = json.dumps(REPORT, indent=2, default=str)
    print(f"\n-- Felix dataplane measurements --\n{text}", file=sys.stderr)
    target = os.environ.get("DPO_FELIX_REPORT")
    if target:
        Path(target).write_text(text + "\n")


# -- helpers ----------------------------------------------------------------------------------


def in_place(
    api: Api,
    profile: str,
    namespaces: list[str],
    flavor: str | None,
    policies: Sequence[str] = DEFAULT_POLICIES,
) -> bool:
    """Exactly ``flavor``'s objects for ``policies`` (by default, the default built-ins), and
    none of another flavor's.

    ``None``: nothing at all (the profile is gone and its objects with it).
    """
    names = {
        "NetworkPolicy": ({f"dpo-{p}" for p in policies}, set(), set()),
        "CalicoNetworkPolicy": (set(), {f"default.dpo-{p}" for p in policies}, set()),
        "CalicoGlobalNetworkPolicy": (
            set(), set(), {calico_policy_name(profile, p) for p in policies}),
        None: (set(), set(), set()),
    }[flavor]  # fmt: skip
    nps, cnps, gnps = names
    return set(api.gnps(profile)) == gnps and all(
        set(api.policies(ns, MANAGED)) == nps and set(api.calico_policies(ns, MANAGED)) == cnps
        for ns in namespaces
    )


def govern(api: Api, name: str, flavor: str, governed: list[str]) -> float:
    """Write profile ``name`` (default switches, ``flavor``) over ``governed``; wait for it.

    Returns the monotonic time of the write. The profile selects namespaces labelled
    ``felix=<name>``.
    """
    spec = {"namespaceSelector": {"matchLabels": {"felix": name}}, "flavor": flavor}
    written = put_profile(api, name, spec)
    wait_reconciled(api, name, governed=len(governed))
    wait_for(lambda: in_place(api, name, governed, flavor), what=f"{flavor} objects of {name}")
    return written


def matrix(seen: dict[Flow, bool]) -> dict[str, str]:
    return {str(flow): "OPEN" if open_ else "BLOCKED" for flow, open_ in seen.items()}


# -- the baseline itself, per flavor ----------------------------------------------------------


@pytest.mark.parametrize("flavor", CALICO_FLAVORS)
def test_baseline_blocks_governed_namespaces_only(
    api: Api, dataplane: FelixDataplane, base: Base, flavor: str
) -> None:
    """Deny-all both ways, DNS (UDP and TCP 53 to the DNS pod, nothing else), kube-system in;
    an ungoverned and an exempt namespace (selected, but labelled exempt) untouched; deleting
    the profile opens everything again."""
    name = SHORT[flavor]
    governed = namespace(api, f"{name}-gov", felix=name)
    other = namespace(api, f"{name}-other")
    exempt = namespace(api, f"{name}-exempt", **{"felix": name, "defaultpolicy.dev/exempt": "true"})
    web, worker, client, app = dataplane.add_pods(
        [
            (governed, "web", {"app": "web"}),
            (governed, "worker", {"app": "worker"}),
            (other, "client", {"app": "client"}),
            (exempt, "app", {"app": "app"}),
        ]
    )
    expected = {
        Flow(client, web, "TCP", 80): False,  # ingress denied
        Flow(client, web, "ICMP", 0): False,
        Flow(web, client, "TCP", 80): False,  # egress denied
        Flow(web, worker, "TCP", 80): False,  # same namespace: allow-same-namespace is off
        Flow(web, base.dns, "UDP", 53): True,  # allow-dns
        Flow(web, base.dns, "TCP", 53): True,
        Flow(web, base.dns, "TCP", 80): False,  # the DNS pod, another port
        Flow(web, base.dns, "UDP", 8125): False,
        Flow(web, base.system, "UDP", 53): False,  # port 53, not the DNS pod
        Flow(base.system, web, "TCP", 8080): True,  # allow-kube-system ingress
        Flow(web, base.system, "TCP", 443): False,  # kube-system egress is off
        Flow(client, app, "TCP", 80): True,  # exempt namespace
        Flow(app, client, "TCP", 80): True,
        Flow(client, base.dns, "UDP", 53): True,  # ungoverned
        Flow(client, base.system, "TCP", 443): True,
    }
    everything_open = {flow: True for flow in expected}
    converge(dataplane, everything_open)
    written = govern(api, name, flavor, [governed])
    enforced = converge(dataplane, expected, since=written)
    seen = observe(dataplane, list(expected))
    assert seen == expected
    removed = time.monotonic()
    api.delete_profile(name)
    wait_for(lambda: in_place(api, name, [governed, exempt], None), what=f"{name} removed")
    reopened = converge(dataplane, everything_open, since=removed)
    REPORT.setdefault("baseline", {})[flavor] = {
        "matrix": matrix(seen),
        # Up to the end of the first round of all 15 probes that matched: an upper bound,
        # since each probe of a blocked flow lasts its whole timeout.
        "profile_write_to_matrix_matched_s": round(enforced, 3),
        "profile_delete_to_matrix_open_s": round(reopened, 3),
    }


# -- every switch, on and off: the packets keep the promise -----------------------------------

#: Built-in switch combinations per flavor, as (deny ingress, deny egress, allow DNS, kube-system
#: ingress, kube-system egress, same-namespace ingress, same-namespace egress). Each switch is on
#: and off at least once while its direction is denied (where it matters), and consecutive
#: combinations differ on the probed flows, so a matrix that matches is the new profile's and
#: never the previous one's still in force. A cluster-scoped policy cannot say "the pod's own
#: namespace": the global flavor has no allowSameNamespace.
SWITCH_MATRIX = {
    "CalicoNetworkPolicy": [
        (True, True, True, True, False, False, False),  # the defaults
        (True, True, True, True, True, True, True),  # every allow
        (True, False, True, True, False, False, False),  # egress not denied
        (True, True, False, False, False, False, False),  # deny-all alone
        (True, True, True, False, True, True, False),  # same namespace, ingress only
        (False, True, False, False, False, False, True),  # same namespace, egress only
        (True, False, False, True, True, True, True),  # allows on an open egress
        (False, False, False, False, False, False, False),  # nothing denied
    ],
    "CalicoGlobalNetworkPolicy": [
        (True, True, True, True, False, False, False),  # the defaults
        (True, True, True, True, True, False, False),  # every allow
        (True, False, True, True, False, False, False),  # egress not denied
        (True, True, False, False, False, False, False),  # deny-all alone
        (False, True, False, False, True, False, False),  # kube-system egress, no DNS allow
        (False, False, False, False, False, False, False),  # nothing denied (a bug found here)
    ],
}


def switch_label(switches: Switches) -> str:
    """The switches that are on, joined by ``+`` (``none`` when all are off)."""
    on = [f.name for f in fields(switches) if getattr(switches, f.name) is True]
    return "+".join(on) or "none"


def write_switches(api: Api, name: str, governed: str, switches: Switches) -> float:
    """Write profile ``name`` with ``switches`` over ``governed`` (labelled ``felix=<name>``)
    and wait until exactly the objects it asks for are in place; returns the write's time."""
    spec = {**switches.spec(), "namespaceSelector": {"matchLabels": {"felix": name}}}
    wanted = parse_profile({"metadata": {"name": name}, "spec": spec}).policy_names()
    written = put_profile(api, name, spec)
    wait_reconciled(api, name, governed=1)
    wait_for(
        lambda: in_place(api, name, [governed], switches.flavor, wanted),
        what=f"{switches.flavor} objects {wanted} of {name}",
    )
    return written


@pytest.mark.parametrize("flavor", CALICO_FLAVORS)
def test_switch_combinations_keep_their_promise(
    api: Api, dataplane: FelixDataplane, base: Base, flavor: str
) -> None:
    """One profile, rewritten in place through :data:`SWITCH_MATRIX`: after each write, every
    probed flow is open exactly when :func:`tests.switches.promised` (the switch names' promise,
    the one the reference evaluators are held to) says so. Eight flows: to and from another
    namespace, DNS and another port of the DNS pod, to and from kube-system, inside the
    namespace, and an ungoverned control."""
    name = f"{SHORT[flavor]}-mx"
    governed = namespace(api, f"{name}-gov", felix=name)
    other = namespace(api, f"{name}-other")
    web, worker, client = dataplane.add_pods(
        [
            (governed, "web", {"app": "web"}),
            (governed, "worker", {"app": "worker"}),
            (other, "client", {"app": "client"}),
        ]
    )
    flows = [
        Flow(web, client, "TCP", 80),
        Flow(client, web, "TCP", 80),
        Flow(web, base.dns, "UDP", 53),
        Flow(web, base.dns, "TCP", 80),
        Flow(base.system, web, "TCP", 8080),
        Flow(web, base.system, "TCP", 443),
        Flow(web, worker, "TCP", 80),
        Flow(client, base.dns, "UDP", 53),
    ]
    combinations = [Switches(*flags, "kube-system", flavor) for flags in SWITCH_MATRIX[flavor]]
    expected = [
        {f: promised(s, governed, f.source, f.destination, f.protocol, f.port) for f in flows}
        for s in combinations
    ]
    everything_open = {flow: True for flow in flows}
    assert all(a != b for a, b in pairwise([everything_open, *expected])), "indistinct steps"
    converge(dataplane, everything_open)
    results = {}
    for switches, want in zip(combinations, expected, strict=True):
        written = write_switches(api, name, governed, switches)
        latency = converge(dataplane, want, since=written)
        results[switch_label(switches)] = {
            "matrix": matrix(want),  # as converge saw it, twice in a row
            "profile_write_to_matrix_matched_s": round(latency, 3),
        }
    api.delete_profile(name)
    wait_for(lambda: in_place(api, name, [governed], None), what=f"{name} removed")
    REPORT.setdefault("switch_matrix", {})[flavor] = {
        "combinations": len(combinations),
        "flows": len(flows),
        "verdicts_checked": len(combinations) * len(flows),
        "results": results,
    }


# -- order: the namespace's own policies first ------------------------------------------------

OPEN_80 = {
    "metadata": {"name": "open-80"},
    "spec": {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
        "egress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
    },
}
NO_KUBE_SYSTEM = {
    "apiVersion": "crd.projectcalico.org/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "default.no-kube-system"},
    "spec": {
        "order": 1000,
        "selector": "all()",
        "types": ["Ingress"],
        "ingress": [
            {
                "action": "Deny",
                "source": {"namespaceSelector": 'projectcalico.org/name == "kube-system"'},
            }
        ],
    },
}


@pytest.mark.parametrize("flavor", CALICO_FLAVORS)
def test_namespace_policies_are_evaluated_before_the_baseline(
    api: Api, dataplane: FelixDataplane, base: Base, flavor: str
) -> None:
    """A namespace's Kubernetes NetworkPolicy (order 1000 in Calico) opening TCP 80 both ways
    wins over the baseline's deny (order 2000), and only for that port; a namespace's Calico
    policy at order 1000 denying kube-system wins over the baseline's allow; the baseline's
    allow-DNS still applies to what the namespace's policies leave undecided."""
    name = f"{SHORT[flavor]}-own"
    governed = namespace(api, f"{name}-gov", felix=name)
    other = namespace(api, f"{name}-peer")
    web, client = dataplane.add_pods(
        [(governed, "web", {"app": "web"}), (other, "client", {"app": "client"})]
    )
    govern(api, name, flavor, [governed])
    baseline = {
        Flow(client, web, "TCP", 80): False,
        Flow(client, web, "TCP", 8080): False,
        Flow(web, client, "TCP", 80): False,
        Flow(web, client, "TCP", 8080): False,
        Flow(base.system, web, "TCP", 8080): True,
        Flow(web, base.dns, "UDP", 53): True,
    }
    converge(dataplane, baseline)
    written = time.monotonic()
    api.create(f"/apis/networking.k8s.io/v1/namespaces/{governed}/networkpolicies", OPEN_80)
    api.create(calico_policy_path(governed), NO_KUBE_SYSTEM)
    owned = {
        Flow(client, web, "TCP", 80): True,  # the namespace's allow, before the deny
        Flow(client, web, "TCP", 8080): False,
        Flow(web, client, "TCP", 80): True,
        Flow(web, client, "TCP", 8080): False,
        Flow(base.system, web, "TCP", 8080): False,  # the namespace's deny, before the allow
        Flow(web, base.dns, "UDP", 53): True,  # undecided by the namespace: the baseline's
    }
    latency = converge(dataplane, owned, since=written)
    REPORT.setdefault("namespace_policies_first", {})[flavor] = {
        "before": matrix(baseline),
        "after": matrix(owned),
        "write_to_matrix_matched_s": round(latency, 3),
    }


# -- a flavor switch keeps the deny in force --------------------------------------------------


def test_flavor_switch_never_lets_a_denied_connection_through(
    api: Api, dataplane: FelixDataplane, base: Base
) -> None:
    """NetworkPolicy -> CalicoNetworkPolicy -> CalicoGlobalNetworkPolicy -> NetworkPolicy,
    probing every 20 ms: every success of a denied flow and every lost DNS answer counts."""
    governed = namespace(api, "switch-gov", felix="switch")
    outside = namespace(api, "switch-out")
    app, client = dataplane.add_pods(
        [(governed, "app", {"app": "web"}), (outside, "client", {"app": "client"})]
    )
    flows = {
        Flow(client, app, "TCP", 80): False,
        Flow(app, client, "TCP", 80): False,
        Flow(app, base.dns, "UDP", 53): True,
        Flow(app, base.dns, "TCP", 53): True,
    }
    govern(api, "switch", "NetworkPolicy", [governed])
    converge(dataplane, flows)
    with Prober(dataplane, flows) as prober:
        prober.wait_probes(10)
        for flavor in (*CALICO_FLAVORS, "NetworkPolicy"):
            prober.mark(f"to {flavor}")
            govern(api, "switch", flavor, [governed])
            prober.wait_probes(10)
    summary = prober.summary()
    REPORT["flavor_switch"] = summary
    wrong = {
        phase: {flow: c["wrong"] for flow, c in counts.items() if c["wrong"]}
        for phase, counts in summary.items()
    }
    assert not any(wrong.values()), f"probes with the wrong verdict: {wrong}"
    assert all(prober.sent(phase) > 20 for phase in prober.counts)


# -- Calico policy write -> enforcement, Felix alone ------------------------------------------


def test_calico_policy_write_to_enforcement_latency(
    api: Api, dataplane: FelixDataplane, base: Base
) -> None:
    """A GlobalNetworkPolicy written directly (no operator) reaches the packets within a second."""
    target = namespace(api, "latency-target")
    server = dataplane.add_pod(target, "server", {"app": "server"})
    flow = Flow(base.system, server, "TCP", 80)
    deny = {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "default.latency-deny"},
        "spec": {
            "order": 2000,
            "selector": "all()",
            "namespaceSelector": f'projectcalico.org/name == "{target}"',
            "types": ["Ingress"],
        },
    }
    converge(dataplane, {flow: True})
    closing, opening = [], []
    for _ in range(5):
        written = time.monotonic()
        api.create(GNPS, deny)
        closing.append(first_seen(dataplane, flow, False, since=written))
        written = time.monotonic()
        api.delete(f"{GNPS}/default.latency-deny")
        opening.append(first_seen(dataplane, flow, True, since=written))
    REPORT["gnp_write_to_enforced"] = {"deny": timed(closing), "allow": timed(opening)}
    assert max(closing + opening) < 5.0


def first_seen(dataplane: FelixDataplane, flow: Flow, open_: bool, since: float) -> float:
    """Seconds from ``since`` to the start of the first probe that saw ``open_``, confirmed
    by the next probe.

    The start, not the end: a probe that sees a flow blocked lasts its whole timeout (Felix
    drops), which would otherwise be counted as latency. Probes of an open flow take about a
    millisecond, so a deny is timed to that; an allow, seen only after blocked probes, to
    within one probe timeout (the true time is at most 0.2 s earlier).
    """
    deadline = since + ENFORCE_TIMEOUT
    while time.monotonic() < deadline:
        began = time.monotonic()
        if observe(dataplane, [flow])[flow] == open_:
            assert observe(dataplane, [flow])[flow] == open_, f"{flow} flapped"
            return began - since
    raise AssertionError(f"{flow} not {'open' if open_ else 'blocked'} after {ENFORCE_TIMEOUT} s")


# -- the reference evaluator against Felix, on generated profiles -----------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_reference_evaluator_agrees_with_felix(
    api: Api, dataplane: FelixDataplane, base: Base, seed: int
) -> None:
    """A generated profile (each Calico flavor in turn, drawn switches, Calico custom
    templates with Allow and Deny) over three of four namespaces, 30 drawn flows between eight
    pods and the two kube-system ones: Felix lets exactly the flows through that
    ``tests.netpol`` says it should (converge polls until it does, and reports the table where
    they disagree)."""
    rng = random.Random(seed)
    label = f"seed-{seed}"
    name = f"diff-{seed}"
    spec = random_profile(rng, label, CALICO_FLAVORS[seed % 2])
    governed = []
    specs = []
    for i in range(4):
        labels = {"team": rng.choice(TEAMS)} | ({"diff": label} if i < 3 else {})
        created = namespace(api, f"fdiff{seed}-n{i}", **labels)
        governed += [created] if i < 3 else []
        specs += [(created, f"p{j}", {"app": rng.choice(APPS)}) for j in range(2)]
    pods = [base.dns, base.system, *dataplane.add_pods(specs)]
    wanted = parse_profile({"metadata": {"name": name}, "spec": spec}).policy_names()
    put_profile(api, name, spec)
    wait_reconciled(api, name, governed=3)
    wait_for(
        lambda: in_place(api, name, governed, spec["flavor"], wanted),
        what=f"{spec['flavor']} objects of {name}",
    )
    flows = random_flows(rng, pods, 30)
    expected = evaluate(api, flows)
    try:
        converge(dataplane, expected)
    finally:
        REPORT.setdefault("differential", {})[label] = {
            "flavor": spec["flavor"],
            "policies": list(wanted),
            "probes": len(flows),
            "open": sum(expected.values()),
        }
        api.delete_profile(name)
        for pod in pods[2:]:
            dataplane.remove_pod(pod)
