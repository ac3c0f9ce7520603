"""The bench's instruments: an API client that tallies its own writes, the operator as a child
process with its footprint from /proc, and a watch that timestamps managed policies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import aiohttp
import orjson

from bench.writes import Key, attribute, own_key, parse_request_totals
from dpo_dev.cluster import ControlPlane
from dpo_dev.progress import Progress, say

MANAGED = "app.kubernetes.io/managed-by=default-policy-operator"
NETPOL = "/apis/networking.k8s.io/v1"


def log(text: str) -> None:
    say(f"[bench {time.strftime('%H:%M:%S')}] {text}")


@dataclass(frozen=True)
class Mark:
    """The apiserver's write counters and the bench's own tally at one moment."""

    totals: Counter[Key]
    own: Counter[Key]


class Client:
    """A plain aiohttp client with the admin token: the Python floor and the bench's eyes.

    Every write it sends is tallied by the key the apiserver counts it under, so the writes
    between two marks can be attributed to everyone else (the operator).
    """

    def __init__(self, plane: ControlPlane) -> None:
        self.server = plane.server
        self.headers = {"Authorization": f"Bearer {plane.admin_token}"}
        context = ssl.create_default_context(cafile=str(plane.ca_file))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=128),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        self.own: Counter[Key] = Counter()

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, patch: bool = False) -> Any:
        headers = dict(self.headers)
        if patch:
            headers["Content-Type"] = "application/merge-patch+json"
        async with self.session.request(
            method, self.server + path, json=body, headers=headers
        ) as response:
            key = own_key(method, path, response.status)
            if key is not None:
                self.own[key] += 1
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

    async def mark(self) -> Mark:
        async with self.session.get(self.server + "/metrics", headers=self.headers) as response:
            text = await response.text()
        return Mark(parse_request_totals(text), Counter(self.own))

    async def writes_since(self, before: Mark) -> dict[str, Any]:
        """Writes since ``before`` that the bench did not send (see bench.writes.attribute)."""
        now = await self.mark()
        return attribute(now.totals, before.totals, now.own - before.own)


async def gather_limited(
    coros: list[Awaitable[Any]], limit: int, progress: Progress | None = None
) -> None:
    """Await ``coros``, ``limit`` at a time, counting each one done on ``progress``."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Awaitable[Any]) -> None:
        async with semaphore:
            await coro
        if progress is not None:
            progress.advance()

    await asyncio.gather(*(run(c) for c in coros))


def netpol(name: str) -> dict[str, Any]:
    """Deny-all; bench/floor/main.go's denyAll is the same object."""
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


#: what the Prometheus text format appends to a family's name in its samples' names
SAMPLE_SUFFIXES = ("_count", "_sum", "_bucket", "_total", "_created")


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels`` in a /metrics page: 0 while a labelled
    series has not been observed yet, an error when the page has no such family at all, so
    that a misspelled or renamed metric cannot read as a steady zero."""
    lines = text.splitlines()
    declared = {line.split(" ")[2] for line in lines if line.startswith("# TYPE ")}
    if declared.isdisjoint({name, *(name.removesuffix(s) for s in SAMPLE_SUFFIXES)}):
        raise KeyError(f"no metric family {name} on the page")
    return sum(
        float(line.rpartition(" ")[2])
        for line in lines
        if line.split("{")[0].split(" ")[0] == name
        and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


#: the operator's full resyncs: when the last one finished (wall clock), how many finished, and
#: the seconds they took in all; all three are set only once a resync's re-list is done
RESYNC_FINISHED = "dpo_last_full_resync_timestamp_seconds"
RESYNC_COUNT = "dpo_reconcile_duration_seconds_count"
RESYNC_SECONDS = "dpo_reconcile_duration_seconds_sum"


class Metrics(Protocol):
    def metric(self, name: str, **labels: str) -> float: ...


async def resync_in_window(
    operator: Metrics, finished_before: float, window_end: float, grace: float, poll: float = 1.0
) -> bool:
    """Whether a full resync ran during a window that ended at ``window_end`` (wall clock):
    one finished inside it (the last finish moved from ``finished_before``), or one that
    finishes within ``grace`` seconds after it had begun before the window's end.

    The second case matters at 20,000 namespaces, where a re-list takes seconds: a resync that
    began inside an idle-CPU window and ended after it used to pass as idleness.
    """
    if operator.metric(RESYNC_FINISHED) != finished_before:
        return True
    count = operator.metric(RESYNC_COUNT, trigger="resync")
    seconds = operator.metric(RESYNC_SECONDS, trigger="resync")
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        await asyncio.sleep(poll)
        finished = operator.metric(RESYNC_COUNT, trigger="resync") - count
        if finished > 1:  # their durations are summed: say yes rather than guess which began when
            return True
        if finished:
            took = operator.metric(RESYNC_SECONDS, trigger="resync") - seconds
            return operator.metric(RESYNC_FINISHED) - took < window_end
    return False


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
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.http("/metrics", self.metrics_port), name, **labels)

    def memory_mb(self, field_name: str) -> float:
        """``VmRSS`` (now) or ``VmHWM`` (the process's peak so far) from /proc, in MB."""
        assert self.process is not None
        return memory_mb(self.process.pid, field_name)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop(self.process, sig)


def memory_mb(pid: int, field_name: str) -> float:
    """A memory line of /proc/<pid>/status (``VmRSS``, ``VmHWM``...) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 20) -> None:
    """Signal a child process and wait for it; kill it after ``grace`` seconds."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


Predicate = Callable[[str, str, str, dict[str, Any]], bool]


class PolicyWatch:
    """Watches NetworkPolicies (the operator's, or ``selector``'s; in one ``namespace``, or
    all) and records when each (namespace, name) event arrives."""

    def __init__(self, client: Client, selector: str = MANAGED, namespace: str = "") -> None:
        self.client = client
        self.selector = selector
        where = f"/namespaces/{namespace}" if namespace else ""
        self.path = f"{NETPOL}{where}/networkpolicies"
        self.seen: dict[str, set[str]] = {}
        #: objects in ``seen``, kept as events arrive (summing the sets per event is O(N))
        self.count = 0
        self.waiters: list[tuple[Predicate, asyncio.Future[float]]] = []
        self.counters: list[tuple[int, asyncio.Future[float], Progress | None]] = []
        self.task: asyncio.Task[None] | None = None
        #: how often the stream had to be resumed (reported: each one is a gap the bench heard
        #: of late, never a gap in the operator's work)
        self.restarts = 0

    async def start(self) -> None:
        version = await self._list()
        self.task = asyncio.create_task(self._run(version))

    async def _list(self) -> str:
        path = f"{self.path}?labelSelector={self.selector}"
        listing = await self.client.call("GET", path)
        self.seen = {}
        for item in listing["items"]:
            meta = item["metadata"]
            self.seen.setdefault(meta["namespace"], set()).add(meta["name"])
        self.count = len(listing["items"])
        self._counted(time.monotonic())
        return str(listing["metadata"]["resourceVersion"])

    async def _run(self, version: str) -> None:
        """Watch from ``version``, and again from the last version seen whenever the server ends
        the stream: under a flood of events (tens of thousands in a hand-over) the apiserver
        drops a watcher that falls behind, and a bench that stopped hearing would time out
        waiting for policies that exist. A 410 (too old to resume) starts from a fresh list."""
        while True:
            version = await self._watch(version) or await self._list()
            self.restarts += 1

    async def _watch(self, version: str) -> str:
        """One watch stream; returns the last resourceVersion seen, or "" after a 410."""
        url = (f"{self.client.server}{self.path}?watch=true"
               f"&labelSelector={self.selector}&resourceVersion={version}"
               "&allowWatchBookmarks=true")  # fmt: skip
        async with self.client.session.get(
            url, headers=self.client.headers, timeout=aiohttp.ClientTimeout(total=None)
        ) as response:
            async for line in response.content:
                now = time.monotonic()
                event = orjson.loads(line)
                if event["type"] == "ERROR":
                    return ""
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._seen_event(event, now)
        return version

    def _seen_event(self, event: dict[str, Any], now: float) -> None:
        meta = event["object"]["metadata"]
        ns, name = meta["namespace"], meta["name"]
        names = self.seen.setdefault(ns, set())
        if event["type"] == "DELETED":
            if name in names:
                names.discard(name)
                self.count -= 1
        elif name not in names:
            names.add(name)
            self.count += 1
        self._counted(now)
        for predicate, future in list(self.waiters):
            if not future.done() and predicate(event["type"], ns, name, event["object"]):
                future.set_result(now)
                self.waiters.remove((predicate, future))

    def _counted(self, now: float) -> None:
        for entry in list(self.counters):
            want, future, progress = entry
            if progress is not None:
                progress.update(self.count)
            if not future.done() and self.count == want:
                future.set_result(now)
                self.counters.remove(entry)

    def count_reaches(self, want: int, progress: Progress | None = None) -> asyncio.Future[float]:
        """The arrival time of the event after which ``want`` objects exist (at once if now)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.counters.append((want, future, progress))
        self._counted(time.monotonic())
        return future

    def expect(self, predicate: Predicate) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.append((predicate, future))
        return future

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


def added(ns: str, name: str) -> Predicate:
    """The watch shows (ns, name) created: a deletion repaired."""
    return lambda kind, n, m, _o: kind == "ADDED" and (n, m) == (ns, name)


async def counted(
    watch: PolicyWatch,
    want: int,
    started: float,
    what: str,
    progress: Progress | None = None,
    check: Callable[[], Awaitable[object]] | None = None,
    limit: float = 3600,
) -> float:
    """Seconds from ``started`` until ``watch`` counts ``want`` objects, confirmed by a list.

    Timed by the arrival of the watch event that completes the count, not by polling. Listing
    every half second is load on the apiserver that the floor W never carries: at 5,000
    namespaces it cost the apiserver 2.2 s of CPU and the convergence figure 2.2 s; at 20,000
    a list of 60,000 objects takes seconds, and the figure rounds up to the poll as well.
    ``check``, awaited every second while waiting, may raise to end the wait early.
    """
    reached = watch.count_reaches(want, progress)
    deadline = time.monotonic() + limit
    while not reached.done():
        if watch.task is not None and watch.task.done():
            raise RuntimeError(f"{what}: the bench's watch ended") from watch.task.exception()
        if check is not None:
            await check()
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.wait({reached}, timeout=1.0)
    if not await count_is(watch.client, watch.path, want, None, watch.selector):
        raise RuntimeError(f"{what}: the watch counted {want} objects, a list disagrees")
    return reached.result() - started


async def count_is(
    client: Client,
    path: str,
    want: int,
    progress: Progress | None = None,
    selector: str = MANAGED,
) -> bool:
    """Whether ``want`` objects are present; the count goes to ``progress`` as well."""
    count = await client.count(path, selector)
    if progress is not None:
        progress.update(count)
    return count == want


async def arrival_latency(
    watch: PolicyWatch,
    names: list[str],
    rate: float,
    progress: Progress,
    act: Any,
    policies: int = 3,
    until: asyncio.Event | None = None,
    each_within: float = 60.0,
) -> list[float]:
    """Perform ``act`` on each name at ``rate``/s (until ``until`` is set, if given); time until
    its namespace holds ``policies`` policies (at most ``each_within`` seconds each)."""
    latencies: list[float] = []

    async def one(name: str) -> None:
        future = watch.expect(
            lambda _t, ns, _n, _o: ns == name and len(watch.seen.get(name, ())) >= policies
        )
        started = time.monotonic()
        await act(name)
        latencies.append(await asyncio.wait_for(future, each_within) - started)
        progress.advance()

    tasks = []
    begin = time.monotonic()
    for i, name in enumerate(names):
        if until is not None and until.is_set():
            break
        tasks.append(asyncio.create_task(one(name)))
        await asyncio.sleep(max(0.0, begin + (i + 1) / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return latencies


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float], target_p50: float | None, target_p99: float) -> dict[str, Any]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return {
        "count": len(values), "p50": p50, "p99": p99, "max": max(values, default=float("nan")),
        "mean": statistics.fmean(values) if values else float("nan"),
        "target_p50": target_p50, "target_p99": target_p99,
        "met": (target_p50 is None or p50 <= target_p50) and p99 <= target_p99,
    }  # fmt: skip


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
    source = Path(str(cast(list[str], profiler.args)[-2]))
    keep.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        keep.write_bytes(source.read_bytes())
        return str(keep)
    return "py-spy produced nothing"
