"""Test-side helpers: a deliberately independent API client and a running operator process.

The client here is a few lines of ``urllib`` with the admin token, not the operator's own
``kube`` module, so a bug in the operator's client cannot hide itself by being symmetric.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dpo_dev.cluster import ControlPlane

T = TypeVar("T")

PROFILES = "/apis/defaultpolicy.dev/v1alpha1/defaultpolicyprofiles"
GNPS = "/apis/crd.projectcalico.org/v1/globalnetworkpolicies"
CNPS = "/apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies"
MANAGED = "app.kubernetes.io/managed-by=default-policy-operator"


def calico_policy_path(namespace: str, name: str = "") -> str:
    """Where Calico's namespaced NetworkPolicies (or one of them) live in the v1 CRD."""
    path = f"/apis/crd.projectcalico.org/v1/namespaces/{namespace}/networkpolicies"
    return f"{path}/{name}" if name else path


class ApiStatus(Exception):
    def __init__(self, code: int, body: str) -> None:
        self.code = code
        self.body = body
        super().__init__(f"{code}: {body[:500]}")


class Api:
    """Minimal synchronous JSON client for tests."""

    def __init__(self, plane: ControlPlane, token: str | None = None) -> None:
        self.server = plane.server
        self.token = token or plane.admin_token
        self.context = ssl.create_default_context(cafile=str(plane.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiStatus(exc.code, exc.read().decode()) from None

    def get(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except ApiStatus as exc:
            if exc.code == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str) -> None:
        try:
            self.request("DELETE", path)
        except ApiStatus as exc:
            if exc.code != 404:
                raise

    # -- conveniences ------------------------------------------------------------------

    def namespace(self, name: str, labels: dict[str, str] | None = None, **annotations: str) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels or {}, "annotations": annotations},
        }
        return self.create("/api/v1/namespaces", body)

    def label_namespace(self, name: str, labels: dict[str, str | None]) -> Any:
        return self.patch(f"/api/v1/namespaces/{name}", {"metadata": {"labels": labels}})

    def profile(self, name: str, spec: dict[str, Any]) -> Any:
        body = {
            "apiVersion": "defaultpolicy.dev/v1alpha1",
            "kind": "DefaultPolicyProfile",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.create(PROFILES, body)

    def get_profile(self, name: str) -> Any:
        return self.get(f"{PROFILES}/{name}")

    def patch_profile(self, name: str, spec: dict[str, Any]) -> Any:
        return self.patch(f"{PROFILES}/{name}", {"spec": spec})

    def delete_profile(self, name: str) -> None:
        self.delete(f"{PROFILES}/{name}")

    def policies(self, namespace: str, selector: str = "") -> dict[str, dict[str, Any]]:
        query = f"?labelSelector={urllib.parse.quote(selector)}" if selector else ""
        items = self.request(
            "GET", f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies{query}"
        )["items"]
        return {item["metadata"]["name"]: item for item in items}

    def policy_path(self, namespace: str, name: str) -> str:
        return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"

    def calico_policies(self, namespace: str, selector: str = "") -> dict[str, dict[str, Any]]:
        """Calico's namespaced NetworkPolicies in ``namespace`` (the v1 CRD)."""
        query = f"?labelSelector={urllib.parse.quote(selector)}" if selector else ""
        items = self.request("GET", f"{calico_policy_path(namespace)}{query}")["items"]
        return {item["metadata"]["name"]: item for item in items}

    def cluster_policies(self, profile: str) -> dict[str, dict[str, Any]]:
        """The ClusterNetworkPolicies labelled as ``profile``'s."""
        query = urllib.parse.quote(f"defaultpolicy.dev/profile={profile}")
        items = self.request("GET", f"{CNPS}?labelSelector={query}")["items"]
        return {item["metadata"]["name"]: item for item in items}

    def gnps(self, profile: str) -> dict[str, dict[str, Any]]:
        query = urllib.parse.quote(f"defaultpolicy.dev/profile={profile}")
        items = self.request("GET", f"{GNPS}?labelSelector={query}")["items"]
        return {item["metadata"]["name"]: item for item in items}

    def events_for(self, name: str) -> list[dict[str, Any]]:
        query = urllib.parse.quote(f"involvedObject.name={name}")
        items: list[dict[str, Any]] = self.request(
            "GET", f"/api/v1/namespaces/default/events?fieldSelector={query}"
        )["items"]
        return items


def service_account_kubeconfig(
    plane: ControlPlane, admin: Api, namespace: str, account: str, path: Path
) -> str:
    """Write ``path``: the plane's kubeconfig with a TokenRequest token of ``account`` (for
    running the operator as its shipped identity); return the token."""
    review = admin.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    token: str = review["status"]["token"]
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return token


def wait_for(
    probe: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: last {value!r}")
        time.sleep(interval)
        value = probe()
    return value


def condition(profile: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for entry in ((profile or {}).get("status") or {}).get("conditions") or []:
        if entry["type"] == kind:
            return dict(entry)
    return {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OperatorProcess:
    """``dpo run`` as a child process, as a user would run it against a cluster."""

    def __init__(self, kubeconfig: Path, log_path: Path, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra = extra
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable, "-m", "default_policy_operator.cli", "run",
            "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--bind-address", "127.0.0.1",
            "--namespace", "dpo-system",
            *self.extra,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_for(self.ready, timeout=60, what="operator readiness")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"operator exited {self.process.returncode}:\n{self.log_tail()}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def log_tail(self, limit: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-limit:]

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
