"""The local dataplane with Calico Felix as the policy engine in place of kube-router.

Everything but the engine is :class:`dpo_dev.dataplane.Dataplane`'s: the node namespace, the
apiserver forwarder, pods as namespaces with routed /32 veths, Pod objects with a Running
status. What Felix needs on top:

* Calico v3.31.0's CRDs and the objects calico-node would have created
  (:func:`dpo_dev.felix.datastore_objects`: ClusterInformation ``datastoreReady``,
  FelixConfiguration, an IPPool over the pod addresses, the three tiers);
* the node-side veth named as the Calico CNI plugin names it, ``cali`` + the first 11 hex
  digits of ``sha1("<namespace>.<pod>")``: Felix finds a workload's interface by that name
  alone, and drops traffic from ``cali*`` interfaces it does not know;
* readiness judged by what Felix programmed, not by its health endpoint (which says ready
  before the datastore is): the filter table holds ``cali-FORWARD`` once Felix has applied its
  first in-sync snapshot, and ``cali-tw-<veth>`` / ``cali-fw-<veth>`` once a pod is enforced.

Felix runs under a tiny shell supervisor in the node namespace (it exits on purpose, status
129, to reload changed configuration; calico-node's runit restarts it likewise). Each exit is
logged as ``dpo: calico-felix exited with status N``, so :meth:`FelixDataplane.restarts`
counts them. It also runs with a private ``/var/lib`` (a directory of the work directory
bind-mounted in the mount namespace ``ip netns exec`` gives it), because Felix writes
``/var/lib/calico/mtu`` and the host's ``/var/lib`` is not ours to write.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from pathlib import Path
from typing import Any

from dpo_dev import felix, netns
from dpo_dev.cluster import _load_crd_names, ensure_binaries
from dpo_dev.dataplane import Dataplane, DataplaneError, PodNet

#: The IPPool covering every address :class:`Dataplane` hands out (pods and the node).
POOL_CIDR = "10.250.0.0/16"
FELIX_HEALTH_PORT = 20245
_EXITED = "dpo: calico-felix exited with status"
#: Restart Felix whenever it exits; one second between restarts, so a crash loop cannot spin.
_SUPERVISOR = "\n".join(
    [
        'mount --bind "$1" /var/lib || exit 1',
        f'while :; do "$2"; echo "{_EXITED} $?"; sleep 1; done',
    ]
)
_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def veth_name(namespace: str, pod: str) -> str:
    """libcalico-go's ``VethNameForWorkload``: the name Felix expects for a pod's interface."""
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


class FelixDataplane(Dataplane):
    """:class:`Dataplane` with Calico Felix v3.31.0 enforcing policy instead of kube-router."""

    #: Felix drops denied packets, so every blocked probe waits out its timeout. A veth
    #: answers an allowed connection in well under a millisecond; 0.2 s keeps a matrix of
    #: blocked flows quick and still leaves a wide margin on a loaded machine.
    drops_denied = True
    probe_timeout = 0.2

    felix: subprocess.Popen[bytes] | None = None
    #: Seconds from Felix's start to its first in-sync programming, for reports.
    start_seconds: float | None = None

    def _ensure_engine(self) -> Path:
        return felix.ensure_felix(self._log)

    def _start_engine(self, binary: Path) -> None:
        self._install_crds()
        self._create_datastore_objects()
        self.start_felix(binary)

    def start_felix(self, binary: Path | None = None) -> None:
        """Start Felix (supervised); returns once it has programmed its base chains."""
        binary = binary or felix.felix_path()
        status_dir = self.workdir / "felix-status"
        var_lib = self.workdir / "felix-var-lib"
        for directory in (status_dir, var_lib):
            directory.mkdir(parents=True, exist_ok=True)
        env = felix.environment(self.kubeconfig, self.node_name, FELIX_HEALTH_PORT, status_dir)
        argv = ["sh", "-c", _SUPERVISOR, "felix-supervisor", str(var_lib), str(binary)]
        started = time.monotonic()
        self.felix = self._spawn(self.node_netns, argv, "felix", env=env)
        self._wait(lambda: self._programmed("cali-FORWARD"), "Felix's first programming")
        self.start_seconds = time.monotonic() - started

    def restarts(self) -> int:
        """How often Felix has exited so far (the supervisor restarted it each time)."""
        log = self.workdir / "felix.log"
        return log.read_text(errors="replace").count(_EXITED) if log.is_file() else 0

    def _install_crds(self) -> None:
        """Calico v3.31.0's CRDs, replacing older copies of the same ones; waits until served."""
        files = felix.crd_files(self._log)
        kubectl = ensure_binaries(self._log).kubectl
        apply = [str(kubectl), f"--kubeconfig={self.kubeconfig}", "apply", "--server-side"]
        apply += ["--force-conflicts", "--field-manager=dpo-felix-dataplane"]
        result = subprocess.run(
            [*apply, *(arg for path in files for arg in ("-f", str(path)))],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DataplaneError(f"installing Calico's CRDs failed: {result.stderr.strip()}")
        for name in _load_crd_names(files):
            self._wait(lambda name=name: self._established(name), f"CRD {name}")

    def _established(self, name: str) -> bool:
        status, body = self.api.request("GET", f"{_CRDS}/{name}")
        conditions = (body or {}).get("status", {}).get("conditions", []) if status == 200 else []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    def _create_datastore_objects(self) -> None:
        """Create them; one already there (a cluster another dataplane used) is an error."""
        for body in felix.datastore_objects(POOL_CIDR):
            self.api.must("POST", _calico_path(body), body)

    def stop(self) -> None:
        super().stop()
        self.felix = None
        for body in felix.datastore_objects(POOL_CIDR):
            with contextlib.suppress(OSError, DataplaneError):
                self.api.request("DELETE", f"{_calico_path(body)}/{body['metadata']['name']}")

    # -- pods -------------------------------------------------------------------------------

    def _host_side(self, pod: PodNet) -> str:
        return veth_name(pod.namespace, pod.name)

    def _pod_ready(self, pod: PodNet) -> bool:
        """The responder answers and Felix enforces the pod (its chains both ways exist)."""
        iface = self._host_side(pod)
        return self._programmed(f"cali-tw-{iface}", f"cali-fw-{iface}") and self._node_reaches(pod)

    def _programmed(self, *chains: str) -> bool:
        """Whether the node's filter table holds all ``chains`` (a Felix liveness check too)."""
        if self.felix is not None and self.felix.poll() is not None:
            tail = (self.workdir / "felix.log").read_text(errors="replace")[-3000:]
            raise DataplaneError(f"Felix's supervisor exited {self.felix.returncode}:\n{tail}")
        listing = subprocess.run(
            netns.exec_argv(self.node_netns, ["iptables-nft-save", "-t", "filter"]),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        present = {line[1:].split()[0] for line in listing.splitlines() if line.startswith(":")}
        return all(chain in present for chain in chains)


def _calico_path(body: dict[str, Any]) -> str:
    return f"/apis/crd.projectcalico.org/v1/{body['kind'].lower()}s"
