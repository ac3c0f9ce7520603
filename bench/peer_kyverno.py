"""``--peer kyverno``: Kyverno's generate rules beside the operator, on the same control plane.

Our users' alternative for "a default NetworkPolicy in every namespace" is a Kyverno generate
rule, so the bench measures it the way it measures us, in the same run (W is shared), before the
operator starts. Kyverno v1.19.1 is built from the Go module proxy into the binary cache and runs
as two local processes (admission controller, background controller) under ServiceAccounts of
their own, as ``../shared/peer-kyverno.md`` describes. It is measured twice, with a fresh pair of
processes each time: the canonical ``add-networkpolicy`` ClusterPolicy (deprecated in 1.19) and
the same three policies as a GeneratingPolicy (the API Kyverno recommends). Each run measures:

* convergence: the policy is created over the N bench namespaces; time until its 3N
  NetworkPolicies exist, against objects / W;
* new namespaces at ``--rate``/s for ``--peer-duration`` s: creation to all 3 present;
* drift: ``--peer-drift`` generated policies deleted one at a time; time until re-created;
* writes by resource from ``apiserver_request_total`` (its bookkeeping objects included);
* the peak RSS (``VmHWM``) of each process.

Both ServiceAccounts are bound to cluster-admin: the bench compares work, not least privilege.
Afterwards Kyverno is stopped, its webhook configurations (which it leaves behind) deleted, its
generated NetworkPolicies removed and its new namespaces unlabelled, so the operator's phases
that follow find the apiserver as it was, apart from idle leftovers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.harness import (
    NETPOL,
    Client,
    PolicyWatch,
    added,
    arrival_latency,
    count_is,
    counted,
    free_port,
    gather_limited,
    log,
    memory_mb,
    namespace,
    stop,
    summary,
    wait_until,
)
from bench.phases import Phases
from bench.writes import per
from dpo_dev.cluster import (
    ControlPlane,
    _exclusive_lock,
    _module_download,
    _run_go,
    cache_dir,
)

VERSION = "v1.19.1"
MODULE = "github.com/kyverno/kyverno"
LDFLAGS = f"-s -w -X github.com/kyverno/kyverno/pkg/version.BuildVersion={VERSION}"
COMMANDS = ("kyverno", "background-controller")
CRD_DIRS = ("kyverno", "policies.kyverno.io", "reports", "policyreport")
INSTALL = "config/install-latest-testing.yaml"
KYVERNO = "app.kubernetes.io/managed-by=kyverno"
POLICIES_PATH = f"{NETPOL}/networkpolicies"
WEBHOOKS = "webhook.kyverno.io/managed-by=kyverno"
NS = "kyverno"
ADMISSION_SA, BACKGROUND_SA = "kyverno-admission-controller", "kyverno-background-controller"

#: The operator's three built-in policies with their defaults, as Kyverno generates them.
GENERATED: dict[str, dict[str, Any]] = {
    "default-deny": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    "allow-dns": {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}],
    },
    "allow-kube-system": {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}}}]}],
    },
}  # fmt: skip


def binary_paths() -> dict[str, Path]:
    return {c: cache_dir() / "bin" / f"kyverno-{c}-{VERSION}" for c in COMMANDS}


def source_dir() -> Path:
    """A writable copy of the module: its CRDs and install manifest, and where it builds."""
    return cache_dir() / "build" / f"kyverno-{VERSION}"


def ensure_kyverno() -> dict[str, Path]:
    """The two binaries, built once (about 13 minutes cold on 2 cores) and cached.

    ``go install`` is refused (the module's go.mod has a ``replace``), so it builds inside a
    writable copy of the downloaded module, kept for its CRDs and install manifest.
    """
    paths = binary_paths()
    if all(p.is_file() for p in paths.values()) and source_dir().is_dir():
        return paths
    lock = cache_dir() / "bin" / ".kyverno.build.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(lock, log):
        source = source_dir()
        if not source.is_dir():
            partial = source.with_name(f".{source.name}.partial-{os.getpid()}")
            shutil.copytree(_module_download(MODULE, VERSION, lock.parent)["Dir"], partial)
            subprocess.run(["chmod", "-R", "u+w", str(partial)], check=True)
            os.replace(partial, source)
        if not all(p.is_file() for p in paths.values()):
            log(f"building Kyverno {VERSION} (about 13 minutes cold on 2 cores)")
            out = source / ".out"
            _run_go(["mod", "download"], source)
            targets = [f"./cmd/{c}" for c in COMMANDS]
            _run_go(["build", "-trimpath", "-ldflags", LDFLAGS, "-o", f"{out}/", *targets], source)
            for command, path in paths.items():
                os.replace(out / command, path)
    return paths


def cluster_policy(selector: dict[str, str]) -> dict[str, Any]:
    """The canonical ``add-networkpolicy`` sample: one generate rule per policy."""
    rules = [
        {"name": name,
         "match": {"any": [{"resources": {"kinds": ["Namespace"],
                                          "selector": {"matchLabels": selector}}}]},
         "generate": {"generateExisting": True, "synchronize": True,
                      "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "name": name, "namespace": "{{request.object.metadata.name}}",
                      "data": {"spec": spec}}}
        for name, spec in GENERATED.items()
    ]  # fmt: skip
    return {"apiVersion": "kyverno.io/v1", "kind": "ClusterPolicy",
            "metadata": {"name": "add-networkpolicy"}, "spec": {"rules": rules}}  # fmt: skip


def generating_policy(selector: dict[str, str]) -> dict[str, Any]:
    """The same three as a ``policies.kyverno.io/v1beta1`` GeneratingPolicy (CEL)."""
    condition = " && ".join(
        f"object.metadata.?labels[?{json.dumps(k)}].orValue('') == {json.dumps(v)}"
        for k, v in selector.items()
    )
    generated = ", ".join(
        f'{{"kind": dyn("NetworkPolicy"), "apiVersion": dyn("networking.k8s.io/v1"), '
        f'"metadata": dyn({{"name": {json.dumps(name)}}}), "spec": dyn({json.dumps(spec)})}}'
        for name, spec in GENERATED.items()
    )
    expression = f"generator.apply(object.metadata.name, [{generated}])"
    return {"apiVersion": "policies.kyverno.io/v1beta1", "kind": "GeneratingPolicy",
            "metadata": {"name": "add-networkpolicy"},
            "spec": {"evaluation": {"generateExisting": {"enabled": True},
                                    "synchronize": {"enabled": True}},
                     "matchConstraints": {"resourceRules": [{
                         "apiGroups": [""], "apiVersions": ["v1"],
                         "operations": ["CREATE", "UPDATE"], "resources": ["namespaces"]}]},
                     "matchConditions": [{"name": "selected", "expression": condition}],
                     "generate": [{"expression": expression}]}}  # fmt: skip


POLICIES = {
    "ClusterPolicy": ("/apis/kyverno.io/v1/clusterpolicies", cluster_policy),
    "GeneratingPolicy": ("/apis/policies.kyverno.io/v1beta1/generatingpolicies", generating_policy),
}


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]

    def peak_mb(self) -> float:
        return memory_mb(self.popen.pid, "VmHWM")

    def stop(self) -> None:
        stop(self.popen, grace=30)


class Kyverno:
    """Kyverno's admission and background controllers as local processes on ``plane``."""

    def __init__(self, plane: ControlPlane, client: Client, workdir: Path) -> None:
        self.plane, self.client, self.workdir = plane, client, workdir
        self.binaries = ensure_kyverno()
        self.install_docs = [
            d for d in yaml.safe_load_all((source_dir() / INSTALL).read_text()) if d
        ]
        self.kubeconfigs: dict[str, Path] = {}
        self.webhook_port = 0

    def kubectl(self, *args: str) -> None:
        command = [str(self.plane.binaries.kubectl), f"--kubeconfig={self.plane.kubeconfig}"]
        subprocess.run([*command, *args], check=True, capture_output=True, timeout=300)

    async def install(self) -> None:
        """CRDs, namespace, ServiceAccounts (cluster-admin), ConfigMaps, one kubeconfig each."""
        for directory in CRD_DIRS:
            crds = str(source_dir() / "config" / "crds" / directory)
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", crds)
        self.kubectl("wait", "--for=condition=established", "crd", "--all", "--timeout=120s")
        await self.client.call("POST", "/api/v1/namespaces", namespace(NS, {}))
        for account in (ADMISSION_SA, BACKGROUND_SA):
            await self.client.call("POST", f"/api/v1/namespaces/{NS}/serviceaccounts",
                                   {"metadata": {"name": account}})  # fmt: skip
            await self.client.call(
                "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                {"metadata": {"name": f"bench-{account}"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "cluster-admin"},
                 "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}]},
            )  # fmt: skip
            token = await self.client.call(
                "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token",
                {"spec": {"expirationSeconds": 86400}},
            )  # fmt: skip
            path = self.workdir / f"{account}.kubeconfig"
            self.plane._write_kubeconfig(path, account, token["status"]["token"])
            self.kubeconfigs[account] = path
        for doc in self.install_docs:
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] in (
                "kyverno",
                "kyverno-metrics",
            ):
                await self.client.call("POST", f"/api/v1/namespaces/{NS}/configmaps", doc)

    def _args(self, deployment: str, overrides: dict[str, str]) -> list[str]:
        """The install manifest's arguments for ``deployment``, with ``overrides`` replacing."""
        (doc,) = (d for d in self.install_docs
                  if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment)  # fmt: skip
        args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
        kept = [a for a in args if a.split("=", 1)[0].lstrip("-") not in overrides]
        return kept + [f"--{k}={v}" for k, v in overrides.items()]

    @contextmanager
    def running(self, label: str) -> Iterator[list[Process]]:
        """Both controllers, started fresh; stopped and their webhooks deleted on the way out."""
        processes = [self._start("admission", ADMISSION_SA, label, admission=True),
                     self._start("background", BACKGROUND_SA, label, admission=False)]  # fmt: skip
        try:
            yield processes
        finally:
            for process in processes:
                process.stop()
            for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
                self.kubectl("delete", kind, "-l", WEBHOOKS, "--ignore-not-found")

    def _start(self, role: str, account: str, label: str, *, admission: bool) -> Process:
        deployment = f"kyverno-{role}-controller"
        overrides = {
            "kubeconfig": str(self.kubeconfigs[account]),
            "metricsPort": str(free_port()),
            "controllerRuntimeMetricsAddress": f"127.0.0.1:{free_port()}",
        }
        if admission:
            self.webhook_port = port = free_port()
            overrides |= {"serverIP": f"127.0.0.1:{port}", "webhookServerHost": "127.0.0.1",
                          "webhookServerPort": str(port)}  # fmt: skip
        env = {**os.environ, "KYVERNO_NAMESPACE": NS, "KYVERNO_SERVICEACCOUNT_NAME": account,
               "KYVERNO_DEPLOYMENT": deployment, "KYVERNO_POD_NAME": f"{deployment}-bench",
               "INIT_CONFIG": "kyverno", "METRICS_CONFIG": "kyverno-metrics",
               "KYVERNO_SVC": "kyverno-svc"}  # fmt: skip
        binary = self.binaries["kyverno" if admission else "background-controller"]
        output = (self.workdir / f"kyverno-{role}-{label}.log").open("ab")
        popen = subprocess.Popen([str(binary), *self._args(deployment, overrides)], env=env,
                                 stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
        return Process(role, popen)

    async def ready(self, processes: list[Process]) -> float:
        """Until its webhooks are registered and its webhook server completes a TLS handshake
        (it registers them before its certificate is loaded, and fails requests until then)."""

        async def registered() -> bool:
            for process in processes:
                if process.popen.poll() is not None:
                    raise RuntimeError(f"Kyverno's {process.name} controller exited; see logs")
            listing = await self.client.call(
                "GET", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
                f"?labelSelector={WEBHOOKS}",
            )  # fmt: skip
            return bool(listing["items"]) and await asyncio.to_thread(self._serves_tls)

        return await wait_until(registered, 180, "Kyverno's webhooks", 0.5)

    def _serves_tls(self) -> bool:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with (
                socket.create_connection(("127.0.0.1", self.webhook_port), timeout=5) as raw,
                context.wrap_socket(raw),
            ):
                return True
        except OSError:
            return False


@dataclass
class PeerRun:
    """What one policy API's run needs: the plane, the bench's namespaces, the settings."""

    kyverno: Kyverno
    client: Client
    apps: list[str]
    selector: dict[str, str]
    w: float | None
    rate: float
    duration: float
    drift: int
    phases: Phases


async def measure(run: PeerRun, kind: str) -> dict[str, Any]:
    """One policy API on a fresh pair of processes; cleaned up before returning."""
    path, build = POLICIES[kind]
    client, objects = run.client, 3 * len(run.apps)
    progress = run.phases.begin(f"Kyverno {kind}", unit="objects present", total=objects)
    arrivals = [f"kyv-{kind.lower()}-{i:05d}" for i in range(int(run.rate * run.duration))]
    result: dict[str, Any] = {"objects": objects}
    with run.kyverno.running(kind) as processes:
        result["ready_seconds"] = await run.kyverno.ready(processes)
        before = await client.mark()
        watch = PolicyWatch(client, KYVERNO)
        await watch.start()
        try:
            started = time.monotonic()
            await client.call("POST", path, build(run.selector))
            result["seconds"] = await counted(
                watch, objects, started, f"Kyverno {kind} convergence", progress
            )
        finally:
            await watch.stop()
        if run.w:
            result["ratio_to_W"] = result["seconds"] / (objects / run.w)
        await asyncio.sleep(5.0)
        result["writes_convergence"] = await client.writes_since(before)
        log(f"Kyverno {kind}: {objects} objects in {result['seconds']:.1f}s")
        watch = PolicyWatch(client, KYVERNO)
        await watch.start()
        try:
            result["latency_create"] = summary(
                await arrival_latency(
                    watch, arrivals, run.rate, progress,
                    lambda name: client.call("POST", "/api/v1/namespaces",
                                             namespace(name, run.selector)),
                    each_within=600,
                ),
                target_p50=0.25, target_p99=1.0,
            )  # fmt: skip
            result["drift"] = await drift(run, watch)
        finally:
            await watch.stop()
        result["peak_mb"] = {p.name: p.peak_mb() for p in processes}
    await clean_up(run, path, arrivals)
    return result


async def drift(run: PeerRun, watch: PolicyWatch) -> dict[str, Any]:
    """Generated policies deleted one at a time; time until the watch shows them back."""
    rng, latencies = random.Random(42), []
    before = await run.client.mark()
    for _ in range(run.drift):
        ns, name = rng.choice(run.apps), rng.choice(list(GENERATED))
        future = watch.expect(added(ns, name))
        started = time.monotonic()
        await run.client.call("DELETE", f"{NETPOL}/namespaces/{ns}/networkpolicies/{name}")
        latencies.append(await asyncio.wait_for(future, 300) - started)
        await asyncio.sleep(0.05)
    await asyncio.sleep(5.0)
    writes = await run.client.writes_since(before)
    result = summary(latencies, target_p50=None, target_p99=1.0)
    return {**result, "writes": writes, "writes_per_repair": per(writes, run.drift)}


async def clean_up(run: PeerRun, path: str, arrivals: list[str]) -> None:
    """With Kyverno stopped: its policy, its generated objects and bookkeeping, and the
    selector's labels on the namespaces it created, so the next measurement starts clean."""
    client = run.client
    await client.call("DELETE", f"{path}/add-networkpolicy")
    unlabel = {"metadata": {"labels": dict.fromkeys(run.selector)}}
    await gather_limited(
        [client.call("PATCH", f"/api/v1/namespaces/{ns}", unlabel, patch=True)
         for ns in arrivals],
        32,
    )  # fmt: skip
    await gather_limited(
        [client.call("DELETE", f"{NETPOL}/namespaces/{ns}/networkpolicies?labelSelector={KYVERNO}")
         for ns in run.apps + arrivals],
        32,
    )  # fmt: skip
    await client.call("DELETE", f"/apis/kyverno.io/v2/namespaces/{NS}/updaterequests")
    await wait_until(
        lambda: count_is(client, POLICIES_PATH, 0, selector=KYVERNO),
        600,
        "Kyverno's objects removed",
        0.5,
    )


async def measure_both(run: PeerRun) -> dict[str, Any]:
    """Both policy APIs, one after the other, each on a fresh pair of processes."""
    results: dict[str, Any] = {"version": VERSION, "rate": run.rate, "duration": run.duration}
    await run.kyverno.install()
    for kind in POLICIES:
        results[kind] = await measure(run, kind)
    return results
