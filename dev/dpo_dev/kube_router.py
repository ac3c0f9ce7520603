"""kube-router's network-policy controller, built from the Go module proxy and cached.

Why kube-router: it is a real Kubernetes NetworkPolicy implementation (iptables + ipset) that
runs without a kubelet or a container runtime, and the proxy serves it (v2.1.0 only; every
other version answers 403). It is built like kube-apiserver in :mod:`dpo_dev.cluster`: a
wrapper module, ``go get``, ``go build``, the binary cached under a versioned name (with a
lock file of its own, so two processes never build it twice). Only the policy controller runs
(``--run-firewall=true --run-router=false --run-service-proxy=false``): the router needs a CNI
config file, the service proxy needs IPVS, which these machines lack.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dpo_dev.cluster import (
    Log,
    _build_binary,
    _exclusive_lock,
    _go_get,
    _is_executable,
    _run_go,
    _stderr_log,
    cache_dir,
)

KUBE_ROUTER_VERSION = "v2.1.0"
KUBE_ROUTER_MODULE = "github.com/cloudnativelabs/kube-router/v2"
_VERSION_PACKAGE = f"{KUBE_ROUTER_MODULE}/pkg/version"


def kube_router_path() -> Path:
    return cache_dir() / "bin" / f"kube-router-{KUBE_ROUTER_VERSION}"


def ensure_kube_router(log: Log = _stderr_log) -> Path:
    """The cached kube-router binary, built first if missing (~7 min cold on 2 cores)."""
    out = kube_router_path()
    if _is_executable(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Its own lock: nothing to share with the apiserver build, so no reason to wait for it.
    with _exclusive_lock(out.parent / ".kube-router.build.lock", log):
        if not _is_executable(out):  # another process may have built it meanwhile
            _build(out, log)
    return out


def _build(out: Path, log: Log) -> None:
    with tempfile.TemporaryDirectory(prefix="dpo-kube-router-build-") as tmp:
        work = Path(tmp)
        _run_go(["mod", "init", "dpo-kube-router-build"], work)
        package = f"{KUBE_ROUTER_MODULE}/cmd/kube-router"
        _go_get([f"{package}@{KUBE_ROUTER_VERSION}"], work, "kube-router", log)
        ldflags = f"-s -w -X {_VERSION_PACKAGE}.Version={KUBE_ROUTER_VERSION}"
        _build_binary(
            "kube-router", package, KUBE_ROUTER_VERSION, ldflags, out, work, ["--version"], log
        )


def command(
    binary: Path, kubeconfig: Path, node_name: str, service_range: str, health_port: int
) -> list[str]:
    """The kube-router command line: the policy controller alone, syncing on every event.

    The periodic full resync is kept long (events trigger a sync at once); the tests never
    wait for it, so a missed event would show up as a failure instead of being papered over.
    """
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        f"--service-cluster-ip-range={service_range}",
        "--iptables-sync-period=5m",
        f"--health-port={health_port}",
        "--enable-ipv6=false",
        "--v=1",
    ]
