"""``make demo``: the operator at work on a local control plane, until Ctrl-C.

Starts etcd + kube-apiserver (built from Go modules), applies the sample profiles, creates a
handful of namespaces with different labels, runs ``dpo run``, prints which profile governs each
namespace and with which policies, probes real connections between a few pods before and after
(kube-router as the dataplane, :mod:`dpo_dev.demo_packets`; skipped, with the reason, where it
cannot run), deletes a managed deny-all to show the repair, how long traffic stayed open and the
metric that counted it, then waits. ``--once`` stops after that (used by the test of this demo).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpo_dev.cluster import ControlPlane, repo_root
from dpo_dev.demo_packets import DRIFT_NAMESPACE, PacketDemo, describe

NAMESPACES = {
    "shop-frontend": {"env": "prod", "tier": "frontend"},
    "shop-payments": {"env": "prod", "compliance": "pci"},
    "shop-search": {"env": "prod"},
    "sandbox-alice": {"env": "prod"},
    "legacy-batch": {"env": "prod", "defaultpolicy.dev/exempt": "true"},
    "staging-web": {"env": "staging"},
    "dev-bob": {"env": "dev"},
}
MANAGED = "app.kubernetes.io/managed-by=default-policy-operator"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def _http(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def governance_table(plane: ControlPlane) -> str:
    policies = json.loads(
        plane.kubectl("get", "networkpolicies", "-A", "-l", MANAGED, "-o", "json").stdout
    )["items"]
    by_namespace: dict[str, tuple[str, list[str]]] = {}
    for item in policies:
        meta = item["metadata"]
        profile, names = by_namespace.get(meta["namespace"], ("", []))
        names.append(meta["name"])
        by_namespace[meta["namespace"]] = (meta["labels"]["defaultpolicy.dev/profile"], names)
    rows = [("NAMESPACE", "LABELS", "PROFILE", "POLICIES")]
    for name, labels in NAMESPACES.items():
        profile, names = by_namespace.get(name, ("-", []))
        label_text = ",".join(f"{k}={v}" for k, v in labels.items())
        rows.append((name, label_text, profile, ", ".join(sorted(names)) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def start_packets(plane: ControlPlane, workdir: Path) -> PacketDemo | None:
    """kube-router and the demo's pods; None (said why) where they cannot run: the rest of
    the demo needs neither root nor network namespaces."""
    say("Starting kube-router as the dataplane, with pods as network namespaces")
    started = PacketDemo.start(plane.kubeconfig, workdir / "dataplane")
    if isinstance(started, str):
        print(f"packets: no dataplane here ({started}); continuing without the probe table")
        return None
    for pod in started.pods.values():
        print(f"  {pod.identity:28} {pod.ip}")
    return started


def show_before(packets: PacketDemo) -> None:
    say("Packets before any profile (each verdict a fresh connection): everything is open")
    print(packets.phase())


def show_enforced(packets: PacketDemo) -> None:
    say("Packets with the profiles enforced by kube-router")
    print(packets.phase())
    say("shop-search's owners add their own NetworkPolicy: allow-web-80 (app=web, TCP 80 in)")
    packets.write_own_policy()
    table = packets.phase()
    print(table)
    if "(!)" in table:
        print("(!) marks a verdict other than the one promised")


def show_drift(plane: ControlPlane, packets: PacketDemo | None, metrics_url: str) -> None:
    """Delete a managed deny-all: with packets, how long traffic stayed open; then the metric."""
    say(f"Deleting {DRIFT_NAMESPACE}/dpo-deny-all by hand (drift) ...")
    before = _metric(_http(metrics_url), "dpo_drift_repaired_total")
    if packets is not None:
        print(describe(packets.drift("dpo-deny-all")))
    else:
        started = time.monotonic()
        plane.kubectl("delete", "networkpolicy", "dpo-deny-all", "-n", DRIFT_NAMESPACE)
        _wait(
            lambda: plane.kubectl("get", "networkpolicy", "dpo-deny-all", "-n", DRIFT_NAMESPACE,
                                  check=False).returncode == 0,
            10,
            "the repair",
        )  # fmt: skip
        print(f"... back within {time.monotonic() - started:.2f}s (kubectl polling included):")
    print(plane.kubectl("get", "networkpolicy", "-n", DRIFT_NAMESPACE).stdout)
    after = _wait(
        lambda: (
            _metric(_http(metrics_url), "dpo_drift_repaired_total") > before
            and _metric(_http(metrics_url), "dpo_drift_repaired_total")
        ),
        10,
        "the metric",
    )
    print(f"dpo_drift_repaired_total: {before:.0f} -> {after:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=".dpo-cluster")
    parser.add_argument("--once", action="store_true", help="exit after the demonstration")
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    samples = repo_root() / "manifests" / "samples"

    say("Starting a local control plane (etcd + kube-apiserver built from Go modules)")
    plane = ControlPlane(workdir)
    operator: subprocess.Popen[bytes] | None = None
    packets: PacketDemo | None = None
    metrics_port, health_port = _free_port(), _free_port()
    try:
        plane.start()
        print(f"export KUBECONFIG={plane.kubeconfig}")

        say("Creating namespaces with different labels")
        for name, labels in NAMESPACES.items():
            label_args = [f"{k}={v}" for k, v in labels.items()]
            plane.kubectl("create", "namespace", name)
            plane.kubectl("label", "namespace", name, *label_args)
        print(plane.kubectl("get", "namespaces", "--show-labels").stdout)
        packets = start_packets(plane, workdir)
        if packets is not None:
            show_before(packets)

        say(f"Applying the sample profiles from {samples.relative_to(repo_root())}/")
        for sample in ("baseline.yaml", "strict-payments.yaml", "audit-only.yaml"):
            print(plane.kubectl("apply", "-f", str(samples / sample)).stdout.strip())

        say("Starting the operator: dpo run")
        log_path = workdir / "operator.log"
        operator = subprocess.Popen(
            [sys.executable, "-m", "default_policy_operator.cli", "run",
             "--kubeconfig", str(plane.kubeconfig), "--bind-address", "127.0.0.1",
             "--metrics-port", str(metrics_port), "--health-port", str(health_port),
             "--namespace", "dpo-system"],
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        _wait(lambda: _http(f"http://127.0.0.1:{health_port}/readyz"), 60, "the operator")
        print(f"operator log: {log_path}")
        _wait(
            lambda: plane.kubectl("get", "networkpolicy", "dpo-deny-all", "-n", "shop-search",
                                  check=False).returncode == 0,
            30,
            "the first policies",
        )  # fmt: skip
        time.sleep(1.0)  # let the remaining namespaces settle before printing

        say("Which profile governs each namespace, with which policies")
        print(governance_table(plane))
        print()
        print(plane.kubectl("get", "dpp").stdout)
        audit = plane.kubectl(
            "get", "dpp", "audit-staging", "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].message}",
        ).stdout  # fmt: skip
        print(f"audit-staging (Audit mode, writes nothing) reports: {audit}")
        if packets is not None:
            show_enforced(packets)

        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        show_drift(plane, packets, metrics_url)

        say("Metrics")
        print(f"  {metrics_url}")
        for line in _http(metrics_url).splitlines():
            if line.startswith(("dpo_namespaces{", "dpo_profile_ready{")):
                print("  " + line)
        if args.once:
            return 0
        say("The operator keeps running. Try, in another terminal:")
        print(f"  export KUBECONFIG={plane.kubeconfig}")
        print(f"  {plane.binaries.kubectl} create namespace shop-new")
        print(f"  {plane.binaries.kubectl} label namespace shop-new env=prod")
        print(f"  {plane.binaries.kubectl} get networkpolicies -n shop-new")
        print("Press Ctrl-C to stop everything and clean up.")
        with contextlib.suppress(KeyboardInterrupt):
            while operator.poll() is None:
                time.sleep(1)
        return 0
    finally:
        say("Cleaning up")
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.wait(timeout=10)
            if operator.poll() is None:
                os.killpg(operator.pid, signal.SIGKILL)
        if packets is not None:
            packets.stop()
            print("removed the dataplane's pods, kube-router and their network namespaces")
        plane.stop()
        print("stopped the operator, kube-apiserver and etcd")


if __name__ == "__main__":
    sys.exit(main())
