"""The demo's packets: real connections between the demo's pods, before and after the profiles.

Why: a table of policy names says what the operator wrote, not what it changed for traffic.
Here kube-router (:mod:`dpo_dev.dataplane`) enforces the policies on pods that are network
namespaces, and each verdict is a fresh connection. A phase polls until every flow shows what
the story expects (a policy write takes a fraction of a second to reach iptables) and prints
what it last saw, so a broken promise shows up in the table instead of being hidden.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from dpo_dev.cluster import ClusterError
from dpo_dev.dataplane import Dataplane, PodNet
from dpo_dev.netns import NetnsError
from dpo_dev.podserver import Outcome

PODS = (
    ("kube-system", "coredns", {"k8s-app": "kube-dns"}),
    ("kube-system", "metrics-server", {"k8s-app": "metrics-server"}),
    ("shop-search", "web", {"app": "web"}),
    ("shop-payments", "db", {"app": "db"}),
    ("sandbox-alice", "notebook", {"app": "notebook"}),
)
#: The table's columns: no profile yet, the sample profiles enforced, shop-search's own policy.
PHASES = ("BEFORE", "PROFILES", "OWN :80")
#: A policy shop-search's owners write themselves: the operator neither owns nor touches it.
OWN_POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-web-80", "namespace": "shop-search"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": 80}]}],
    },
}
PHASE_TIMEOUT = 20.0
DRIFT_INTERVAL = 0.02
#: After the repair is back in the API, the flow must stay blocked this long to end the watch.
DRIFT_SETTLE = 1.0
DRIFT_TIMEOUT = 15.0


@dataclass(frozen=True)
class DemoFlow:
    """A flow of the table, what each phase promises for it, and why."""

    source: str
    destination: str
    protocol: str
    port: int
    promise: tuple[bool, bool, bool]
    why: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.destination} {self.protocol}/{self.port}"


FLOWS = (
    DemoFlow("shop-search/web", "shop-payments/db", "TCP", 5432, (True, False, False),
             "cross-namespace: both deny-alls"),
    DemoFlow("shop-search/web", "kube-system/coredns", "UDP", 53, (True, True, True),
             "allow-dns"),
    DemoFlow("shop-search/web", "kube-system/coredns", "TCP", 80, (True, False, False),
             "the DNS pod, not the DNS port"),
    DemoFlow("kube-system/metrics-server", "shop-search/web", "TCP", 80, (True, True, True),
             "baseline: allow-kube-system in"),
    DemoFlow("kube-system/metrics-server", "shop-payments/db", "TCP", 5432, (True, False, False),
             "strict-payments: kube-system off"),
    DemoFlow("sandbox-alice/notebook", "shop-search/web", "TCP", 80, (True, False, True),
             "shop-search's own allow-web-80"),
    DemoFlow("sandbox-alice/notebook", "shop-search/web", "TCP", 8080, (True, False, False),
             "own policy opens :80 only"),
    DemoFlow("sandbox-alice/notebook", "shop-payments/db", "TCP", 5432, (True, False, False),
             "payments' deny-all (sandbox ungoverned)"),
)  # fmt: skip
#: The drift step deletes this namespace's deny-all: the only policy isolating db's ingress there
#: (in shop-search, allow-kube-system would keep the pods isolated and nothing would show).
DRIFT_NAMESPACE = "shop-payments"
DRIFT_FLOW = FLOWS[-1]


@dataclass(frozen=True)
class DriftWindow:
    """What the probes saw while a deleted deny-all was being repaired (seconds from the delete)."""

    restored_s: float | None
    open_s: float
    first_open_s: float | None
    probes: int
    open_probes: int
    every_ms: float


@dataclass
class PacketDemo:
    """The dataplane, the demo's pods and the verdicts seen so far, one column per phase."""

    dataplane: Dataplane
    pods: dict[str, PodNet] = field(default_factory=dict)
    seen: list[dict[DemoFlow, bool]] = field(default_factory=list)

    @classmethod
    def start(cls, kubeconfig: Path, workdir: Path) -> PacketDemo | str:
        """The running demo, or why the dataplane could not start (not root, no netns, ...)."""
        dataplane: Dataplane | None = None
        try:
            dataplane = Dataplane(kubeconfig, workdir)
            dataplane.start()
            pods = dataplane.add_pods(PODS)
        except (ClusterError, NetnsError, OSError) as error:
            with contextlib.suppress(ClusterError, NetnsError, OSError):
                if dataplane is not None:
                    dataplane.stop()
            return str(error).splitlines()[0] if str(error) else type(error).__name__
        except BaseException:  # Ctrl-C while the pods start: leave no namespace behind
            if dataplane is not None:
                dataplane.stop()
            raise
        return cls(dataplane, {pod.identity: pod for pod in pods})

    def stop(self) -> None:
        self.dataplane.stop()

    def is_open(self, flow: DemoFlow) -> bool:
        source, destination = self.pods[flow.source], self.pods[flow.destination]
        return self.dataplane.probe(source, destination, flow.protocol, flow.port) is Outcome.OPEN

    def phase(self) -> str:
        """Probe until the next phase's promises hold (or time runs out); the table so far."""
        index = len(self.seen)
        wanted = {flow: flow.promise[index] for flow in FLOWS}
        deadline = time.monotonic() + PHASE_TIMEOUT
        seen = {flow: self.is_open(flow) for flow in FLOWS}
        while seen != wanted and time.monotonic() < deadline:
            seen = {flow: self.is_open(flow) for flow in FLOWS}
        self.seen.append(seen)
        return self.table()

    def table(self) -> str:
        rows = [("FLOW", *PHASES[: len(self.seen)], "WHY")]
        for flow in FLOWS:
            verdicts = [_verdict(seen[flow], flow.promise[i]) for i, seen in enumerate(self.seen)]
            rows.append((str(flow), *verdicts, flow.why))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )

    def write_own_policy(self) -> None:
        path = "/apis/networking.k8s.io/v1/namespaces/shop-search/networkpolicies"
        self.dataplane.api.must("POST", path, OWN_POLICY)

    def drift(self, name: str) -> DriftWindow:
        """Delete the managed ``name`` in :data:`DRIFT_NAMESPACE` and probe every 20 ms until
        the operator's copy is back in the API and the flow has stayed blocked for a second.

        Until the copy is back, each round also asks the API for it (a fresh TLS connection,
        a few ms), which is what the repair time's resolution is."""
        path = f"/apis/networking.k8s.io/v1/namespaces/{DRIFT_NAMESPACE}/networkpolicies/{name}"
        api = self.dataplane.api
        samples: list[tuple[float, bool]] = []
        deleted = time.monotonic()
        api.must("DELETE", path)
        restored: float | None = None
        while time.monotonic() - deleted < DRIFT_TIMEOUT:
            began = time.monotonic()
            samples.append((began - deleted, self.is_open(DRIFT_FLOW)))
            if restored is None and api.request("GET", path)[0] == 200:
                restored = time.monotonic() - deleted
            if restored is not None and _settled(samples, restored):
                break
            time.sleep(max(0.0, DRIFT_INTERVAL - (time.monotonic() - began)))
        return _window(samples, restored)


def _verdict(seen: bool, promised: bool) -> str:
    word = "OPEN" if seen else "BLOCKED"
    return word if seen == promised else f"{word}(!)"


def _settled(samples: list[tuple[float, bool]], restored: float) -> bool:
    """The flow has been blocked for :data:`DRIFT_SETTLE` since the repair and any opening."""
    last_open = max((t for t, opened in samples if opened), default=0.0)
    return samples[-1][0] - max(restored, last_open) >= DRIFT_SETTLE


def _window(samples: list[tuple[float, bool]], restored: float | None) -> DriftWindow:
    """From the first OPEN probe to the first BLOCKED one after the last OPEN (0 if none)."""
    opened = [t for t, is_open in samples if is_open]
    open_s = 0.0
    if opened:
        closed = next((t for t, is_open in samples if t > opened[-1] and not is_open), None)
        open_s = (closed if closed is not None else samples[-1][0]) - opened[0]
    first = opened[0] if opened else None
    every_ms = 1000 * (samples[-1][0] - samples[0][0]) / max(1, len(samples) - 1)
    return DriftWindow(restored, open_s, first, len(samples), len(opened), every_ms)


def describe(window: DriftWindow) -> str:
    """One line for the narration: how long the deleted deny-all left the flow open."""
    back = "never" if window.restored_s is None else f"after {window.restored_s * 1000:.0f} ms"
    seen = f"{window.open_probes} of {window.probes} probes, one every {window.every_ms:.0f} ms"
    if window.first_open_s is None:
        opened = "0 ms"
        after = "kube-router got the repair before it had applied the deletion"
    else:
        opened = f"{window.open_s * 1000:.0f} ms, from {window.first_open_s * 1000:.0f} ms on"
        after = "then BLOCKED again"
    if window.restored_s is None:
        after = "the repair never came"
    return (
        f"drift repair: dpo-deny-all back in the API {back}; {DRIFT_FLOW} was OPEN for "
        f"{opened} ({seen}): {after}"
    )
