"""A real NetworkPolicy dataplane beside the local control plane: pods are network namespaces.

Why: every promise of the operator is about traffic, and these machines (no kubelet, no
container runtime) can still carry real packets between network namespaces and run a real
policy implementation (kube-router's policy controller, see :mod:`dpo_dev.kube_router`).

Layout, all of it inside namespaces this module creates (named ``<prefix>node`` and
``<prefix>p<N>``), so the host's interfaces, routes and firewall are never touched:

* the "node" namespace: kube-router (which rewrites the whole filter table on every sync), the
  apiserver forwarder (:mod:`dpo_dev.nsforward`), ``ip_forward=1``, ICMP rate limit off, the
  node IP on its loopback and a default route of its own (proxy ARP answers nothing without);
* one namespace per pod: ``eth0`` of a veth pair with ``10.250.x.y/32`` and a default route via
  ``169.254.1.1`` (Calico-style routed /32; the node side answers by proxy ARP), running
  :mod:`dpo_dev.podserver`. Its Pod object carries ``status.podIP`` and ``hostIP`` = node IP,
  which is what kube-router needs to filter it.

Teardown kills every process living in those namespaces and deletes them (the veths go with
them); ``down`` does the same from the state file, for ``python -m dpo_dev dataplane down``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from dpo_dev import kube_router, netns
from dpo_dev.cluster import SERVICE_CLUSTER_IP_RANGE, ClusterError, Log, _stderr_log
from dpo_dev.podserver import Outcome, probe

NODE_IP = "10.250.0.1"
NODE_NAME = "dpo-node"
#: The label every Pod object of a topology carries, so ``down`` can find them.
TOPOLOGY_LABEL = "dataplane.dpo.dev/topology"
HEALTH_PORT = 20244
READY_TIMEOUT = 60.0
_GATEWAY = "169.254.1.1"
_DEV_DIR = Path(__file__).resolve().parents[1]


class DataplaneError(ClusterError):
    """The dataplane could not be set up or torn down."""


@dataclass(frozen=True)
class PodNet:
    """A pod as the dataplane made it: its namespace handle, address and labels."""

    namespace: str
    name: str
    ip: str
    netns: str
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def identity(self) -> str:
        return f"{self.namespace}/{self.name}"


class KubeApi:
    """Just enough of an API client for Nodes and Pods, from a token kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = str(cluster["server"])
        self.token = str(config["users"][0]["user"]["token"])
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.context = ssl.create_default_context(cadata=ca)

    @property
    def port(self) -> int:
        return int(self.server.rpartition(":")[2])

    def request(
        self, method: str, path: str, body: Any = None, patch: bool = False
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = (
                "application/merge-patch+json" if patch else "application/json"
            )
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context, timeout=30
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return response.status, json.loads(raw or b"null")

    def must(self, method: str, path: str, body: Any = None, patch: bool = False) -> Any:
        status, answer = self.request(method, path, body, patch)
        if status >= 300:
            raise DataplaneError(f"{method} {path}: HTTP {status}: {answer}")
        return answer


def prefix_for(workdir: Path) -> str:
    """Namespace-name prefix of the topology kept in ``workdir`` (stable, so ``down`` finds it)."""
    return "dp" + hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:6] + "-"


class Dataplane:
    """kube-router in a node namespace plus pods as namespaces, against one apiserver.

    A context manager; :meth:`stop` is idempotent and also cleans up after a failed start.
    """

    #: Whether the engine drops denied packets silently. kube-router rejects them, so a blocked
    #: probe is answered at once by an ICMP error and :attr:`probe_timeout` is only a bound.
    drops_denied = False
    #: Seconds a probe waits for an answer (connect, then each receive).
    probe_timeout = 0.5

    def __init__(
        self, kubeconfig: Path, workdir: Path, *, node_name: str = NODE_NAME, log: Log = _stderr_log
    ) -> None:
        self.kubeconfig = Path(kubeconfig).resolve()
        self.workdir = Path(workdir).resolve()
        self.node_name = node_name
        self.prefix = prefix_for(self.workdir)
        self.node_netns = f"{self.prefix}node"
        self.api = KubeApi(self.kubeconfig)
        self.pods: dict[str, PodNet] = {}
        self._log = log
        self._children: list[subprocess.Popen[bytes]] = []
        self._next_index = 1
        self.kube_router: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Dataplane:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Node namespace, apiserver forwarder, Node object, the policy engine (ready on return)."""
        check_host()
        binary = self._ensure_engine()
        self.workdir.mkdir(parents=True, exist_ok=True)
        down(self.workdir)  # whatever an earlier run left with the same prefix
        try:
            self._make_node()
            self._start_forwarder()
            self._register_node()
            self._start_engine(binary)
            self._save()
        except BaseException:
            self.stop()
            raise

    # The policy engine: kube-router here; a subclass puts another one in its place
    # (:class:`dpo_dev.felix_dataplane.FelixDataplane`), with everything else shared.

    def _ensure_engine(self) -> Path:
        """The engine's binary, built first if missing (before any namespace exists)."""
        return kube_router.ensure_kube_router(self._log)

    def _start_engine(self, binary: Path) -> None:
        self.start_kube_router(binary)

    def _host_side(self, pod: PodNet) -> str:
        """The node-side veth name: any unique name will do for kube-router."""
        return pod.netns.removeprefix(self.prefix)

    def _pod_ready(self, pod: PodNet) -> bool:
        """The responder answers the node (which kube-router never filters)."""
        return self._node_reaches(pod)

    def stop(self) -> None:
        """Kill what runs in our namespaces, delete them and our API objects. Idempotent."""
        for pod in list(self.pods.values()):
            self._delete_pod_object(pod)
        self.pods.clear()
        _teardown(self.prefix)
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
        self._children.clear()
        self.kube_router = None
        with contextlib.suppress(OSError, DataplaneError):
            self.api.request("DELETE", f"/api/v1/nodes/{self.node_name}")
        (self.workdir / "dataplane.json").unlink(missing_ok=True)

    def _make_node(self) -> None:
        netns.create(self.node_netns)
        # A default route of its own: proxy ARP only answers for addresses routed elsewhere.
        netns.ip_batch(
            self.node_netns, [f"addr add {NODE_IP}/32 dev lo", "route add default dev lo"]
        )
        netns.sysctl(self.node_netns, "net.ipv4.ip_forward", "1")
        # Blocked probes are answered by ICMP rejects; rate limiting would turn them into
        # timeouts and slow every "blocked" verdict down.
        netns.sysctl(self.node_netns, "net.ipv4.icmp_ratelimit", "0")

    def _spawn(self, netns_name: str, argv: list[str], log_name: str, **kw: Any) -> Any:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_DEV_DIR), *sys.path[1:]])}
        env.update(kw.pop("env", {}))
        with (self.workdir / f"{log_name}.log").open("ab") as log_file:
            child = subprocess.Popen(
                netns.exec_argv(netns_name, argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                **kw,
            )
        self._children.append(child)
        return child

    def _start_forwarder(self) -> None:
        with open("/proc/thread-self/ns/net", "rb") as home:
            argv = [sys.executable, "-m", "dpo_dev.nsforward", f"--port={self.api.port}"]
            argv.append(f"--upstream-netns-fd={home.fileno()}")
            self._spawn(self.node_netns, argv, "nsforward", pass_fds=(home.fileno(),))
        self._wait(lambda: self._node_connects(self.api.port), "the apiserver forwarder")

    def _node_connects(self, port: int) -> bool:
        sock = netns.socket_in(self.node_netns)
        with sock, contextlib.suppress(OSError):
            sock.settimeout(1)
            sock.connect(("127.0.0.1", port))
            return True
        return False

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {TOPOLOGY_LABEL: self.prefix.rstrip("-")},
            },
        }
        status, answer = self.api.request("POST", "/api/v1/nodes", body)
        if status not in (201, 409):
            raise DataplaneError(f"creating Node {self.node_name}: HTTP {status}: {answer}")
        addresses = [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": self.node_name},
        ]
        self.api.must(
            "PATCH",
            f"/api/v1/nodes/{self.node_name}/status",
            {"status": {"addresses": addresses}},
            patch=True,
        )

    def start_kube_router(self, binary: Path | None = None) -> None:
        """Start kube-router (again); returns once its health endpoint answers."""
        binary = binary or kube_router.kube_router_path()
        argv = kube_router.command(
            binary, self.kubeconfig, self.node_name, SERVICE_CLUSTER_IP_RANGE, HEALTH_PORT
        )
        env = {"NODE_NAME": self.node_name}
        self.kube_router = self._spawn(self.node_netns, argv, "kube-router", env=env)
        self._wait(self._kube_router_healthy, "kube-router's health endpoint")

    def _kube_router_healthy(self) -> bool:
        if self.kube_router is not None and self.kube_router.poll() is not None:
            tail = (self.workdir / "kube-router.log").read_text(errors="replace")[-3000:]
            raise DataplaneError(f"kube-router exited {self.kube_router.returncode}:\n{tail}")
        sock = netns.socket_in(self.node_netns)
        with sock, contextlib.suppress(OSError):
            sock.settimeout(1)
            sock.connect(("127.0.0.1", HEALTH_PORT))
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return b" 200 " in sock.recv(64)
        return False

    def _wait(self, ready: Any, what: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise DataplaneError(
                    f"{what} not ready after {timeout:.0f} s (logs in {self.workdir})"
                )
            time.sleep(0.05)

    # -- pods -------------------------------------------------------------------------------

    def add_pod(self, namespace: str, name: str, labels: Mapping[str, str] | None = None) -> PodNet:
        """A namespace + veth + responder, and its Pod object with a Running status."""
        return self.add_pods([(namespace, name, labels or {})])[0]

    def add_pods(self, specs: Sequence[tuple[str, str, Mapping[str, str]]]) -> list[PodNet]:
        """Several pods (namespace, name, labels); their responders start in parallel."""
        pods = [self._start_pod(*spec) for spec in specs]
        for pod in pods:
            self._wait(lambda pod=pod: self._pod_ready(pod), f"{pod.identity} to be ready")
        self._save()
        return pods

    def _start_pod(self, namespace: str, name: str, labels: Mapping[str, str]) -> PodNet:
        index = self._next_index
        self._next_index += 1
        pod = PodNet(
            namespace=namespace,
            name=name,
            ip=f"10.250.{1 + index // 250}.{1 + index % 250}",
            netns=f"{self.prefix}p{index}",
            labels=dict(labels),
        )
        self.pods[pod.identity] = pod
        self._wire(pod, self._host_side(pod))
        argv = [sys.executable, "-m", "dpo_dev.podserver"]
        argv += [f"--identity={pod.identity}", f"--address={pod.ip}"]
        self._spawn(pod.netns, argv, "podservers")
        self._create_pod_object(pod)
        return pod

    def _wire(self, pod: PodNet, host_side: str) -> None:
        netns.create(pod.netns)
        # Ping probes use ICMP "ping sockets", allowed only to the groups listed here.
        netns.sysctl(pod.netns, "net.ipv4.ping_group_range", "0 2147483647")
        netns.ip("link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns",
                 pod.netns, netns=self.node_netns)  # fmt: skip
        netns.ip_batch(
            pod.netns,
            [
                f"addr add {pod.ip}/32 dev eth0",
                "link set eth0 up",
                f"route add {_GATEWAY} dev eth0 scope link",
                f"route add default via {_GATEWAY} dev eth0",
            ],
        )
        netns.ip_batch(
            self.node_netns, [f"link set {host_side} up", f"route add {pod.ip}/32 dev {host_side}"]
        )
        netns.sysctl(self.node_netns, f"net.ipv4.conf.{host_side}.proxy_arp", "1")
        netns.sysctl(self.node_netns, f"net.ipv4.neigh.{host_side}.proxy_delay", "0")

    def _node_reaches(self, pod: PodNet) -> bool:
        """The node may always reach a pod (kube-router never filters it): a liveness check."""
        return probe(self.node_netns, pod.ip, "TCP", 80, 1.0, pod.identity) is Outcome.OPEN

    def _create_pod_object(self, pod: PodNet) -> None:
        labels = {**pod.labels, TOPOLOGY_LABEL: self.prefix.rstrip("-")}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
            "spec": {
                "nodeName": self.node_name,
                "containers": [{"name": "app", "image": "dataplane.invalid/podserver:0"}],
            },
        }
        base = f"/api/v1/namespaces/{pod.namespace}/pods"
        self.api.must("POST", base, body)
        status = {
            "phase": "Running",
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
        }
        self.api.must("PATCH", f"{base}/{pod.name}/status", {"status": status}, patch=True)

    def _delete_pod_object(self, pod: PodNet) -> None:
        # No kubelet confirms a graceful deletion: without grace 0 the Pod would stay forever.
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}?gracePeriodSeconds=0"
        with contextlib.suppress(OSError, DataplaneError):
            self.api.request("DELETE", path)

    def remove_pod(self, pod: PodNet) -> None:
        """Delete the Pod object first (so kube-router never sees a live, unknown address)."""
        self._delete_pod_object(pod)
        _kill_and_delete(pod.netns)
        self.pods.pop(pod.identity, None)
        self._save()

    def probe(
        self,
        source: PodNet,
        destination: PodNet,
        protocol: str,
        port: int,
        timeout: float | None = None,
    ) -> Outcome:
        """One fresh flow from ``source`` to ``destination``'s pod IP."""
        wait = self.probe_timeout if timeout is None else timeout
        return probe(source.netns, destination.ip, protocol, port, wait, destination.identity)

    def _save(self) -> None:
        state = {
            "prefix": self.prefix,
            "kubeconfig": str(self.kubeconfig),
            "node": self.node_name,
            "pods": [asdict(pod) for pod in self.pods.values()],
        }
        (self.workdir / "dataplane.json").write_text(json.dumps(state, indent=2) + "\n")


# -- host checks and teardown ---------------------------------------------------------------


def check_host() -> None:
    """Root, ``ip``, ``iptables`` and ``ipset``: say what is missing instead of failing later."""
    if os.geteuid() != 0:
        raise DataplaneError("the dataplane needs root (network namespaces, iptables)")
    missing = [tool for tool in ("ip", "iptables", "ipset") if not _on_path(tool)]
    if missing:
        raise DataplaneError(
            f"missing {', '.join(missing)}: run `make tools` (Debian: iptables ipset iproute2)"
        )


def _on_path(tool: str) -> bool:
    return any(
        os.access(Path(d) / tool, os.X_OK)
        for d in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]
    )


def _kill_and_delete(netns_name: str) -> None:
    """SIGKILL every process in the namespace (never ourselves), then delete it."""
    for pid in netns.pids(netns_name):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    netns.delete(netns_name)


def _teardown(prefix: str) -> bool:
    """Remove every namespace named ``prefix*`` with whatever runs in it; True if any."""
    found = netns.names(prefix)
    for name in found:
        _kill_and_delete(name)
    return bool(found)


def down(workdir: Path) -> bool:
    """Tear down the topology recorded in ``workdir`` (namespaces, processes, API objects)."""
    workdir = Path(workdir).resolve()
    state_file = workdir / "dataplane.json"
    removed = _teardown(prefix_for(workdir))
    with contextlib.suppress(FileNotFoundError):
        state = json.loads(state_file.read_text())
        with contextlib.suppress(OSError, DataplaneError, ssl.SSLError, KeyError):
            _delete_objects(KubeApi(Path(state["kubeconfig"])), state)
        state_file.unlink()
        removed = True
    return removed


def _delete_objects(api: KubeApi, state: Mapping[str, Any]) -> None:
    for pod in state.get("pods", []):
        path = f"/api/v1/namespaces/{pod['namespace']}/pods/{pod['name']}?gracePeriodSeconds=0"
        api.request("DELETE", path)
    api.request("DELETE", f"/api/v1/nodes/{state['node']}")


# -- ``python -m dpo_dev dataplane up|down|probe`` ------------------------------------------

#: The small topology ``up`` brings: DNS and another kube-system pod, two app namespaces.
DEMO_PODS = (
    ("kube-system", "coredns", {"k8s-app": "kube-dns"}),
    ("kube-system", "metrics-server", {"k8s-app": "metrics-server"}),
    ("dataplane-a", "web", {"app": "web"}),
    ("dataplane-a", "db", {"app": "db"}),
    ("dataplane-b", "client", {"app": "client"}),
)


def up(workdir: Path, log: Log = _stderr_log, engine: str = "kube-router") -> Dataplane:
    """Start the dataplane (``engine``: kube-router, or Calico Felix) and :data:`DEMO_PODS`
    against the cluster in ``workdir``.

    The processes run in their own sessions and outlive the caller; :func:`down` removes them.
    """
    kind: type[Dataplane] = Dataplane
    if engine == "calico":
        from dpo_dev.felix_dataplane import FelixDataplane  # imports this module

        kind = FelixDataplane
    plane = kind(workdir / "kubeconfig", workdir, log=log)
    plane.start()
    try:
        for namespace in sorted({ns for ns, _, _ in DEMO_PODS} - {"kube-system"}):
            status, answer = plane.api.request(
                "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}
            )
            if status not in (201, 409):
                raise DataplaneError(f"creating namespace {namespace}: HTTP {status}: {answer}")
        for namespace, name, labels in DEMO_PODS:
            plane.add_pod(namespace, name, labels)
    except BaseException:
        plane.stop()
        raise
    return plane


def probe_from_state(workdir: Path, source: str, destination: str, protocol: str, port: int) -> str:
    """Probe between two pods of the topology recorded in ``workdir`` (``ns/pod`` names)."""
    state = json.loads((Path(workdir).resolve() / "dataplane.json").read_text())
    pods = {f"{p['namespace']}/{p['name']}": p for p in state["pods"]}
    for wanted in (source, destination):
        if wanted not in pods:
            raise DataplaneError(f"no pod {wanted}; known: {', '.join(sorted(pods))}")
    target = pods[destination]
    return probe(pods[source]["netns"], target["ip"], protocol.upper(), port, 1.0, destination)


def add_parser(sub: Any) -> None:
    """The ``dataplane up|down|probe`` subcommand of ``python -m dpo_dev``."""
    parser = sub.add_parser(
        "dataplane", help="kube-router or Calico Felix + pods as network namespaces"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (("up", "start it"), ("down", "remove it"), ("probe", "one fresh flow")):
        action = actions.add_parser(name, help=text)
        action.add_argument("--dir", default=".dpo-cluster", help="the cluster's state directory")
        if name == "up":
            action.add_argument(
                "--engine",
                choices=["kube-router", "calico"],
                default="kube-router",
                help="the policy engine: kube-router, or Calico Felix (v3.31.0)",
            )
        if name == "probe":
            action.add_argument("source", help="namespace/pod")
            action.add_argument("destination", help="namespace/pod")
            action.add_argument("protocol", choices=["TCP", "UDP", "ICMP"], type=str.upper)
            action.add_argument("port", type=int, nargs="?", default=0)


def main(args: Any, workdir: Path) -> int:
    if args.action == "up":
        plane = up(workdir, engine=args.engine)
        for pod in plane.pods.values():
            print(f"{pod.identity:32} {pod.ip:15} {pod.netns}")
        return 0
    if args.action == "down":
        stopped = down(workdir)
        print("stopped" if stopped else f"no dataplane in {workdir}", file=sys.stderr)
        return 0
    print(probe_from_state(workdir, args.source, args.destination, args.protocol, args.port))
    return 0
