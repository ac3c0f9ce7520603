"""``make bench``: the operator at scale on the local control plane, against the apiserver's limit.

Every figure comes with the baseline measured in the same run, so results compare across
noisy machines:

* **W** - the best create throughput of a plain async client loop (concurrency 1, 8, 32, 64)
  creating NetworkPolicies against the same apiserver: the physical limit here.
* **Convergence** - N namespaces exist, a profile with the three default policies is created:
  time until the last object exists, against the target 1.5 x (objects / W) + 5 s.
* **Writes** - from kube-apiserver's own ``apiserver_request_total``: first convergence, a no-op
  full resync, an operator restart, and writes to namespaces.
* **Latency** - namespaces created (and others relabelled) at 20/s on top of N: creation to all
  policies present, p50/p99, from a watch (client-side clocks).
* **Drift repair** - random deletions and edits of managed policies: p50/p99 and writes each.
* **Footprint** - operator RSS and CPU while converging and at idle.
* **Calico** - the same profile in the Calico flavor: time until its GlobalNetworkPolicies exist.

Prints a table and writes JSON under ``bench/results/``. ``--quick`` is the smoke run used by
the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from dpo_dev.cluster import ControlPlane

RESULTS = Path(__file__).resolve().parent / "results"
MANAGED = "app.kubernetes.io/managed-by=default-policy-operator"
BENCH_LABEL = {"bench": "yes"}
NETPOL = "/apis/networking.k8s.io/v1"
PROFILES = "/apis/defaultpolicy.dev/v1alpha1/defaultpolicyprofiles"
GNPS = "/apis/crd.projectcalico.org/v1/globalnetworkpolicies"
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Client:
    """A plain aiohttp client with the admin token: the baseline loop and the bench's eyes."""

    def __init__(self, plane: ControlPlane) -> None:
        self.server = plane.server
        self.headers = {"Authorization": f"Bearer {plane.admin_token}"}
        context = ssl.create_default_context(cafile=str(plane.ca_file))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=128),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, patch: bool = False) -> Any:
        headers = dict(self.headers)
        if patch:
            headers["Content-Type"] = "application/merge-patch+json"
        async with self.session.request(
            method, self.server + path, json=body, headers=headers
        ) as response:
            data = await response.json(content_type=None)
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {data}")
            return data

    async def count(self, path: str, selector: str = MANAGED) -> int:
        """Objects matching ``selector`` (metadata only, paginated: cheap for the apiserver)."""
        headers = {
            **self.headers,
            "Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        }
        total, token = 0, ""
        while True:
            query = f"?labelSelector={selector}&limit=500" + (f"&continue={token}" if token else "")
            async with self.session.get(self.server + path + query, headers=headers) as response:
                page = await response.json(content_type=None)
            total += len(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return total

    async def writes(self) -> dict[str, float]:
        async with self.session.get(self.server + "/metrics", headers=self.headers) as response:
            text = await response.text()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            verb = re.search(r'verb="(\w+)"', line)
            resource = re.search(r'resource="(\w+)"', line)
            code = re.search(r'code="(\d+)"', line)
            if code and not code.group(1).startswith("2"):
                continue  # refused (429 from API Priority and Fairness, 409...): not a write
            if verb and resource and verb.group(1) in WRITE_VERBS:
                key = resource.group(1)
                totals[key] = totals.get(key, 0.0) + float(line.rpartition(" ")[2])
        return totals


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    keys = ("networkpolicies", "globalnetworkpolicies", "namespaces", "defaultpolicyprofiles")
    return {k: int(after.get(k, 0) - before.get(k, 0)) for k in keys}


async def gather_limited(coros: list[Awaitable[Any]], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Awaitable[Any]) -> None:
        async with semaphore:
            await coro

    await asyncio.gather(*(run(c) for c in coros))


def netpol(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def profile(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "defaultpolicy.dev/v1alpha1",
        "kind": "DefaultPolicyProfile",
        "metadata": {"name": name},
        "spec": spec,
    }


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


async def measure_w(client: Client, quick: bool) -> dict[str, Any]:
    """Create throughput of a plain async loop at several concurrencies; W is the best."""
    rates: dict[str, float] = {}
    for concurrency in (1, 8, 32, 64):
        count = (60 if concurrency == 1 else 300) if quick else (400 if concurrency == 1 else 3000)
        ns = f"bench-w-{concurrency}"
        await client.call("POST", "/api/v1/namespaces", namespace(ns, {}))
        started = time.monotonic()
        await gather_limited(
            [
                client.call("POST", f"{NETPOL}/namespaces/{ns}/networkpolicies", netpol(f"p{i}"))
                for i in range(count)
            ],
            concurrency,
        )
        rates[str(concurrency)] = count / (time.monotonic() - started)
        log(f"W at concurrency {concurrency}: {rates[str(concurrency)]:.0f} creates/s")
    return {"by_concurrency": rates, "W": max(rates.values())}


@dataclass
class Operator:
    """``dpo run`` as a child process, with its footprint read from /proc."""

    kubeconfig: Path
    log_path: Path
    resync: float
    metrics_port: int = 0
    health_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    def start(self) -> float:
        self.metrics_port, self.health_port = free_port(), free_port()
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "default_policy_operator.cli", "run",
             "--kubeconfig", str(self.kubeconfig), "--bind-address", "127.0.0.1",
             "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
             "--resync-period", str(self.resync), "--log-level", "WARNING", *self.extra],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        while not self.http("/readyz", self.health_port):
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited; see {self.log_path}")
            time.sleep(0.1)
        return time.monotonic() - started

    def http(self, path: str, port: int) -> str:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def metric(self, name: str, **labels: str) -> float:
        text = self.http("/metrics", self.metrics_port)
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.split("{")[0].split(" ")[0] == name
            and all(f'{k}="{v}"' in line for k, v in labels.items())
        )

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    probe: Callable[[], Awaitable[bool]], limit: float, what: str, interval: float = 0.1
) -> float:
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > limit:
            raise TimeoutError(what)
        await asyncio.sleep(interval)
    return time.monotonic() - started


class PolicyWatch:
    """Watches managed NetworkPolicies and records when each (namespace, name) event arrives."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: dict[str, set[str]] = {}
        self.events: list[tuple[float, str, str, str, dict[str, Any]]] = []
        self.waiters: list[
            tuple[Callable[[str, str, str, dict[str, Any]], bool], asyncio.Future[float]]
        ] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self.client.call("GET", f"{NETPOL}/networkpolicies?labelSelector={MANAGED}")
        for item in listing["items"]:
            meta = item["metadata"]
            self.seen.setdefault(meta["namespace"], set()).add(meta["name"])
        version = listing["metadata"]["resourceVersion"]
        self.task = asyncio.create_task(self._run(version))

    async def _run(self, version: str) -> None:
        url = (f"{self.client.server}{NETPOL}/networkpolicies?watch=true&labelSelector={MANAGED}"
               f"&resourceVersion={version}&allowWatchBookmarks=true")  # fmt: skip
        async with self.client.session.get(
            url, headers=self.client.headers, timeout=aiohttp.ClientTimeout(total=None)
        ) as response:
            async for line in response.content:
                now = time.monotonic()
                event = json.loads(line)
                if event["type"] == "BOOKMARK":
                    continue
                meta = event["object"]["metadata"]
                ns, name = meta["namespace"], meta["name"]
                if event["type"] == "DELETED":
                    self.seen.get(ns, set()).discard(name)
                else:
                    self.seen.setdefault(ns, set()).add(name)
                for predicate, future in list(self.waiters):
                    if not future.done() and predicate(event["type"], ns, name, event["object"]):
                        future.set_result(now)
                        self.waiters.remove((predicate, future))

    def expect(
        self, predicate: Callable[[str, str, str, dict[str, Any]], bool]
    ) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.append((predicate, future))
        return future

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def arrival_latency(
    watch: PolicyWatch, names: list[str], rate: float, act: Callable[[str], Awaitable[Any]]
) -> list[float]:
    """Perform ``act`` on each name at ``rate``/s; time until its namespace holds 3 policies."""
    latencies: list[float] = []

    async def one(name: str) -> None:
        future = watch.expect(
            lambda _t, ns, _n, _o: ns == name and len(watch.seen.get(name, ())) >= 3
        )
        started = time.monotonic()
        await act(name)
        latencies.append(await asyncio.wait_for(future, 60) - started)

    tasks = []
    begin = time.monotonic()
    for i, name in enumerate(names):
        tasks.append(asyncio.create_task(one(name)))
        await asyncio.sleep(max(0.0, begin + (i + 1) / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return latencies


async def drift_repairs(
    client: Client, watch: PolicyWatch, namespaces: list[str], count: int
) -> list[float]:
    """Random deletions and edits, one at a time; time until the watch shows the repair."""
    latencies = []
    rng = random.Random(42)
    for i in range(count):
        ns = rng.choice(namespaces)
        name = rng.choice(["dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"])
        path = f"{NETPOL}/namespaces/{ns}/networkpolicies/{name}"
        if i % 2 == 0:
            future = watch.expect(
                lambda t, n, m, _o, ns=ns, name=name: t == "ADDED" and (n, m) == (ns, name)
            )
            started = time.monotonic()
            await client.call("DELETE", path)
        else:
            future = watch.expect(
                lambda t, n, m, o, ns=ns, name=name: (
                    t == "MODIFIED"
                    and (n, m) == (ns, name)
                    and o["spec"].get("podSelector") != {"matchLabels": {"bench": "edit"}}
                )
            )
            started = time.monotonic()
            edit = {"spec": {"podSelector": {"matchLabels": {"bench": "edit"}}}}
            await client.call("PATCH", path, edit, patch=True)
        latencies.append(await asyncio.wait_for(future, 30) - started)
        await asyncio.sleep(0.05)
    return latencies


async def run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"namespaces": n}
    plane = ControlPlane(workdir / f"plane-{n}")
    plane.start()
    client = Client(plane)
    operator = Operator(plane.kubeconfig, workdir / f"operator-{n}.log", resync=args.resync)
    watch = PolicyWatch(client)
    try:
        result["W"] = await measure_w(client, args.quick)
        w = result["W"]["W"]
        log(f"creating {n} namespaces (+{args.rate * args.duration:.0f} for the latency runs)")
        extra = int(args.rate * args.duration)
        await gather_limited(
            [client.call("POST", "/api/v1/namespaces", namespace(f"app-{i:05d}", {"bench": "yes"}))
             for i in range(n)]
            + [client.call("POST", "/api/v1/namespaces", namespace(f"late-{i:05d}", {}))
               for i in range(extra)],
            32,
        )  # fmt: skip
        result["startup_seconds_empty"] = operator.start()
        cpu0 = operator.cpu_seconds()
        before = await client.writes()
        spec = {"namespaceSelector": {"matchLabels": {"bench": "yes"}}}
        profiler = start_profiler(operator, workdir / f"profile-{n}.svg") if args.profile else None
        await client.call("POST", PROFILES, profile("bench", spec))
        objects = 3 * n
        converge = await wait_until(
            lambda: _count_is(client, f"{NETPOL}/networkpolicies", objects),
            3600,
            "convergence",
            interval=0.5,
        )
        cpu_converge = operator.cpu_seconds() - cpu0
        if profiler is not None:
            result["profile"] = stop_profiler(profiler, args.out / f"profile-converge-{n}.svg")
        target = 1.5 * objects / w + 5
        result["convergence"] = {
            "objects": objects, "seconds": converge, "target_seconds": target,
            "ratio_to_W": converge / (objects / w), "met": converge <= target,
            "cpu_seconds": cpu_converge,
        }  # fmt: skip
        log(f"converged {objects} objects in {converge:.1f}s (target {target:.1f}s)")
        await wait_until(lambda: _profile_ready(client, "bench"), 120, "Ready")
        await asyncio.sleep(2.0)
        result["writes_first_convergence"] = delta(await client.writes(), before)
        result["rss_mb_converged"] = operator.rss_mb()
        cpu1 = operator.cpu_seconds()
        await asyncio.sleep(10.0)
        result["cpu_idle_percent"] = (operator.cpu_seconds() - cpu1) / 10.0 * 100

        log("no-op full resync")
        before = await client.writes()
        first = operator.metric("dpo_last_full_resync_timestamp_seconds")
        await wait_until(
            lambda: _async(operator.metric("dpo_last_full_resync_timestamp_seconds") > first),
            args.resync * 3 + 60, "a full resync",
        )  # fmt: skip
        await asyncio.sleep(3.0)
        result["writes_noop_resync"] = delta(await client.writes(), before)

        log("operator restart")
        before = await client.writes()
        operator.stop()
        result["restart_seconds_to_ready"] = operator.start()
        await asyncio.sleep(5.0)
        result["writes_restart"] = delta(await client.writes(), before)
        result["rss_mb_after_restart"] = operator.rss_mb()

        await watch.start()
        log(f"latency: namespaces created at {args.rate}/s for {args.duration}s")
        names = [f"new-{i:05d}" for i in range(extra)]
        created = await arrival_latency(
            watch, names, args.rate,
            lambda name: client.call("POST", "/api/v1/namespaces", namespace(name, BENCH_LABEL)),
        )  # fmt: skip
        log(f"latency: namespaces relabelled at {args.rate}/s for {args.duration}s")
        relabelled = await arrival_latency(
            watch, [f"late-{i:05d}" for i in range(extra)], args.rate,
            lambda name: client.call("PATCH", f"/api/v1/namespaces/{name}",
                                     {"metadata": {"labels": {"bench": "yes"}}}, patch=True),
        )  # fmt: skip
        result["latency_create"] = summary(created, target_p50=0.25, target_p99=1.0)
        result["latency_relabel"] = summary(relabelled, target_p50=0.25, target_p99=1.0)

        log(f"drift: {args.drift} random deletions and edits")
        writes0 = operator.metric("dpo_api_writes_total", resource="networkpolicies")
        repairs = await drift_repairs(client, watch, [f"app-{i:05d}" for i in range(n)], args.drift)
        await asyncio.sleep(1.0)
        result["drift"] = summary(repairs, target_p50=None, target_p99=1.0)
        result["drift"]["writes_per_repair"] = (
            operator.metric("dpo_api_writes_total", resource="networkpolicies") - writes0
        ) / args.drift
        result["rss_mb_final"] = operator.rss_mb()

        log("Calico flavor")
        calico = {**spec, "priority": 10, "flavor": "CalicoGlobalNetworkPolicy"}
        await client.call("POST", PROFILES, profile("bench-calico", calico))
        gnp = await wait_until(lambda: _count_is(client, GNPS, 3), 600, "Calico objects")
        handover = await wait_until(lambda: _count_is(client, f"{NETPOL}/networkpolicies", 0),
                                    3600, "NetworkPolicies handed over")  # fmt: skip
        result["calico"] = {"gnp_seconds": gnp, "networkpolicy_cleanup_seconds": handover + gnp,
                            "deleted_objects": objects + 3 * 2 * extra}  # fmt: skip
    finally:
        await watch.stop()
        operator.stop()
        await client.close()
        plane.stop()
    return result


PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def start_profiler(operator: Operator, path: Path) -> subprocess.Popen[bytes]:
    """py-spy on the operator while it converges (``pip install py-spy``)."""
    assert operator.process is not None
    return subprocess.Popen(
        [PY_SPY, "record", "--pid", str(operator.process.pid), "--rate", "50",
         "--output", str(path), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_profiler(profiler: subprocess.Popen[bytes], keep: Path) -> str:
    profiler.send_signal(signal.SIGINT)
    profiler.wait(timeout=60)
    source = Path(str(profiler.args[-2]))
    keep.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        keep.write_bytes(source.read_bytes())
        return str(keep)
    return "py-spy produced nothing"


async def _async(value: bool) -> bool:
    return value


async def _count_is(client: Client, path: str, want: int) -> bool:
    return await client.count(path) == want


async def _profile_ready(client: Client, name: str) -> bool:
    profile = await client.call("GET", f"{PROFILES}/{name}")
    conditions = (profile.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def summary(values: list[float], target_p50: float | None, target_p99: float) -> dict[str, Any]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return {
        "count": len(values), "p50": p50, "p99": p99, "max": max(values, default=float("nan")),
        "mean": statistics.fmean(values) if values else float("nan"),
        "target_p50": target_p50, "target_p99": target_p99,
        "met": (target_p50 is None or p50 <= target_p50) and p99 <= target_p99,
    }  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    rows = [("figure", *(f"N={r['namespaces']}" for r in results))]

    def add(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        rows.append((label, *(fn(r) for r in results)))

    add("W (creates/s, best of c=1,8,32,64)", lambda r: f"{r['W']['W']:.0f}")
    add("converge 3N objects (s)", lambda r: f"{r['convergence']['seconds']:.1f}")
    add("  target 1.5*objects/W+5 (s)", lambda r: f"{r['convergence']['target_seconds']:.1f}")
    add("  ratio to objects/W", lambda r: f"{r['convergence']['ratio_to_W']:.2f}")
    add(
        "writes first convergence (np/ns/dpp)",
        lambda r: "{networkpolicies}/{namespaces}/{defaultpolicyprofiles}".format(
            **r["writes_first_convergence"]
        ),
    )
    add(
        "writes no-op resync (np/ns/dpp)",
        lambda r: "{networkpolicies}/{namespaces}/{defaultpolicyprofiles}".format(
            **r["writes_noop_resync"]
        ),
    )
    add(
        "writes restart (np/ns/dpp)",
        lambda r: "{networkpolicies}/{namespaces}/{defaultpolicyprofiles}".format(
            **r["writes_restart"]
        ),
    )
    add("restart to ready (s)", lambda r: f"{r['restart_seconds_to_ready']:.1f}")
    add(
        "new ns -> policies p50/p99 (ms)",
        lambda r: (
            f"{r['latency_create']['p50'] * 1000:.0f}/{r['latency_create']['p99'] * 1000:.0f}"
        ),
    )
    add(
        "relabel -> policies p50/p99 (ms)",
        lambda r: (
            f"{r['latency_relabel']['p50'] * 1000:.0f}/{r['latency_relabel']['p99'] * 1000:.0f}"
        ),
    )
    add(
        "drift repair p50/p99/max (ms)",
        lambda r: "/".join(f"{r['drift'][k] * 1000:.0f}" for k in ("p50", "p99", "max")),
    )
    add("  writes per repair", lambda r: f"{r['drift']['writes_per_repair']:.2f}")
    add(
        "RSS converged / final (MB)",
        lambda r: f"{r['rss_mb_converged']:.0f} / {r['rss_mb_final']:.0f}",
    )
    add(
        "CPU converging (s) / idle (%)",
        lambda r: f"{r['convergence']['cpu_seconds']:.1f} / {r['cpu_idle_percent']:.1f}",
    )
    add("Calico: GNPs present (s)", lambda r: f"{r['calico']['gnp_seconds']:.1f}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000", help="comma-separated namespace counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=50, short phases")
    parser.add_argument("--rate", type=float, default=20.0, help="namespaces per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--drift", type=int, default=200, help="drift operations")
    parser.add_argument("--resync", type=float, default=30.0, help="operator resync period (s)")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator (if installed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.duration, args.drift, args.resync = "50", 2.0, 10, 5.0
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        for n in sizes:
            log(f"=== N = {n} ===")
            results.append(asyncio.run(run_size(n, args, Path(tmp))))
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
               "kernel": os.uname().release}  # fmt: skip
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(table(results))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
