"""Helpers shared by the fault-injection tests: probes, bulk setup, etcd and apiserver access."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dpo_dev.cluster import ControlPlane
from tests.support import MANAGED, Api, ApiStatus, OperatorProcess

BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}


def http_status(url: str, timeout: float = 3.0) -> int:
    """The status of a GET, 0 when nothing answered."""
    return http_get(url, timeout)[0]


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET; (0, reason) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, repr(exc)


class HealthPoller:
    """Polls an operator's ``/healthz`` in the background and keeps every (time, status)."""

    def __init__(self, operator: OperatorProcess, interval: float = 0.5) -> None:
        self.url = f"http://127.0.0.1:{operator.health_port}/healthz"
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.reasons: dict[str, int] = {}  # body (or error) of the answers that were not 200
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-poller", daemon=True)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, body = http_get(self.url)
            self.samples.append((time.monotonic(), status))
            if status != 200:
                reason = f"{status} {body.strip()[:80]}"
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            self._stop.wait(self.interval)

    def failures(self) -> list[tuple[float, int]]:
        return [(t, s) for t, s in self.samples if s != 200]

    def summary(self) -> str:
        bad = self.failures()
        why = "; ".join(f"{n}x {reason}" for reason, n in self.reasons.items())
        return f"{len(self.samples)} /healthz probes, {len(bad)} not 200" + (
            f": {why}" if why else ""
        )


def create_namespaces(
    api: Api, names: Iterable[str], labels: dict[str, str], workers: int = 8
) -> None:
    """Create namespaces in parallel (a few hundred take a few seconds)."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda name: api.namespace(name, labels), names))


def managed_count(api: Api) -> int:
    """Managed NetworkPolicies in the whole cluster."""
    query = urllib.parse.quote(MANAGED)
    items = api.request("GET", f"/apis/networking.k8s.io/v1/networkpolicies?labelSelector={query}")
    return len(items["items"])


def covered(api: Api, namespace: str) -> bool:
    """Whether the namespace holds the built-ins; False while the apiserver cannot say (down,
    or answering 429/5xx while etcd comes back)."""
    try:
        return set(api.policies(namespace, MANAGED)) == BUILTINS
    except OSError:
        return False
    except ApiStatus as exc:
        if exc.code == 429 or exc.code >= 500:
            return False
        raise


def answers(plane: ControlPlane) -> bool:
    """Whether the apiserver serves a read from etcd (not only from its cache) right now."""
    try:
        status, _ = plane.request("GET", "/api/v1/namespaces/default?resourceVersion=", timeout=2)
    except OSError:
        return False
    return status == 200


def wait_answers(plane: ControlPlane, timeout: float = 90.0) -> float:
    """Poll until the apiserver answers; returns the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while not answers(plane):
        if time.monotonic() > deadline:
            raise AssertionError(f"the apiserver did not answer within {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic()


def wait_until(probe: Any, timeout: float, interval: float = 0.2, what: str = "") -> float:
    """Poll ``probe`` until truthy; returns the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


# -- etcd (its gRPC gateway: etcdctl is not built) --------------------------------------------


def etcd_call(plane: ControlPlane, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        plane.etcd_endpoint + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def etcd_revision(plane: ControlPlane) -> int:
    # key "\0" (base64 "AA=="), limit 1: the cheapest range that returns the header's revision
    header = etcd_call(plane, "/v3/kv/range", {"key": "AA==", "limit": 1})["header"]
    return int(header["revision"])


def compact(plane: ControlPlane) -> int:
    """Compact etcd's history up to the current revision (physically); returns that revision."""
    revision = etcd_revision(plane)
    etcd_call(plane, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


# -- apiserver metrics -------------------------------------------------------------------------


def apiserver_metric(api: Api, name: str, **labels: str) -> float:
    """Sum of an apiserver metric's samples whose labels include ``labels``."""
    request = urllib.request.Request(api.server + "/metrics")
    request.add_header("Authorization", f"Bearer {api.token}")
    with urllib.request.urlopen(request, context=api.context, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{.*\}})? ")
    for line in text.splitlines():
        if pattern.match(line) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rpartition(" ")[2])
    return total


def assert_alive(operator: OperatorProcess) -> None:
    """The operator never exits on its own."""
    assert operator.process is not None
    code = operator.process.poll()
    assert code is None, f"the operator exited with {code}:\n{operator.log_tail()}"
