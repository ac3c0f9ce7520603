"""Leader election: two replicas of ``dpo run --leader-elect``, at most one of them writing.

This module runs its own control plane: the session's shared operator (no leader election)
would reconcile our profiles too and make "only the leader writes" unmeasurable. Every test
uses a Lease of its own and a profile selecting ``dpo-test=<its tag>``.

Timings are the defaults (lease 15 s, renew deadline 10 s, retry period 2 s); the handover
times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import atexit
import selectors
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpo_dev.cluster import ControlPlane
from tests.support import MANAGED, Api, ApiStatus, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

LEASE_NAMESPACE = "dpo-leader-election"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}
LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0


class Replica(OperatorProcess):
    """``dpo run --leader-elect``; ``start`` returns once it is alive, not once it is ready
    (a standby never is)."""

    def __init__(self, kubeconfig: Path, log_path: Path, lease: str) -> None:
        super().__init__(
            kubeconfig,
            log_path,
            "--leader-elect",
            "--leader-election-namespace", LEASE_NAMESPACE,
            "--leader-election-id", lease,
        )  # fmt: skip
        self._starting = False

    def start(self) -> None:
        self._starting = True
        try:
            super().start()
        finally:
            self._starting = False

    def ready(self) -> bool:
        if self._starting:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"replica exited {self.process.returncode}:\n{self.log_tail()}"
                )
            return self.probe("healthz") == 200
        return super().ready()

    def probe(self, path: str) -> int:
        """HTTP status of ``/healthz`` or ``/readyz``; 0 when nothing answers."""
        try:
            url = f"http://127.0.0.1:{self.health_port}/{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def leading(self) -> bool:
        """Ready, and says so in ``dpo_leader``."""
        return self.probe("readyz") == 200 and self.metric("dpo_leader") == 1

    def writes(self) -> float:
        return self.metric("dpo_api_writes_total")

    def policy_writes(self) -> float:
        return self.writes() - self.metric("dpo_api_writes_total", resource="leases")


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("leader-plane"))
    atexit.register(plane.stop)
    try:
        plane.start()
        Api(plane).namespace(LEASE_NAMESPACE)
        yield plane
    finally:
        plane.stop()
        atexit.unregister(plane.stop)


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture
def replicas(
    plane: ControlPlane, unique_name: str, tmp_path: Path
) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas of one Lease (``<tag>``), started together: they race for it."""
    pair = (
        Replica(plane.kubeconfig, tmp_path / "a.log", unique_name),
        Replica(plane.kubeconfig, tmp_path / "b.log", unique_name),
    )
    for replica in pair:
        atexit.register(replica.stop)
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(replica.start) for replica in pair]:
                started.result()
        yield pair
    finally:
        for replica in pair:
            replica.stop(signal.SIGKILL)
            atexit.unregister(replica.stop)


def profile(api: Api, tag: str) -> None:
    api.profile(tag, {"namespaceSelector": {"matchLabels": {"dpo-test": tag}}})


def covered(api: Api, namespace: str) -> bool:
    return set(api.policies(namespace, MANAGED)) == BUILTINS


def lease(api: Api, name: str) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"{LEASES}/{name}") or {}
    return body.get("spec") or {}


def write_lease(api: Api, name: str, **spec: Any) -> None:
    """Overwrite fields of the Lease (read-modify-write, again on a conflict)."""
    for _ in range(5):
        current = api.get(f"{LEASES}/{name}")
        current["spec"].update(spec)
        try:
            api.request("PUT", f"{LEASES}/{name}", current)
            return
        except ApiStatus as exc:
            if exc.code != 409:
                raise
    raise AssertionError(f"could not write lease {name}")


def the_leader(pair: tuple[Replica, Replica], timeout: float = 60) -> tuple[Replica, Replica]:
    """(leader, standby), once exactly one replica is ready and reports dpo_leader 1."""

    def probe() -> tuple[Replica, Replica] | None:
        a, b = pair
        if a.leading() and not b.leading():
            return a, b
        if b.leading() and not a.leading():
            return b, a
        return None

    found: tuple[Replica, Replica] = wait_for(probe, timeout=timeout, what="exactly one leader")
    return found


def assert_standby(replica: Replica) -> None:
    assert replica.probe("readyz") == 503
    assert replica.probe("healthz") == 200
    assert replica.metric("dpo_leader") == 0
    assert replica.writes() == 0


# -- the tests ------------------------------------------------------------------------------


def test_one_leader_only_it_writes_and_a_killed_leader_is_replaced(
    admin: Api, replicas: tuple[Replica, Replica], unique_name: str
) -> None:
    tag = unique_name
    leader, standby = the_leader(replicas)
    holder = lease(admin, tag)
    assert f"_{leader.pid}_" in holder["holderIdentity"], holder
    assert holder["leaseDurationSeconds"] == LEASE_DURATION
    # The standby says so at its first try after the lease exists, up to a retry period later
    # (or more, on a loaded machine): poll, do not read the log once (CI caught it not yet said).
    wait_for(
        lambda: "holds the lease" in standby.log_tail(),
        timeout=LEASE_DURATION,
        what="the standby to report the holder",
    )

    # Work arrives: only the leader writes; the standby stays at zero writes of any kind.
    profile(admin, tag)
    for i in range(3):
        admin.namespace(f"{tag}-{i}", {"dpo-test": tag})
    for i in range(3):
        wait_for(lambda i=i: covered(admin, f"{tag}-{i}"), timeout=30, what=f"{tag}-{i}")
    # (its counter moves when a write's answer is back, maybe after the policy shows)
    wait_for(lambda: leader.policy_writes() >= 9, what="the leader's nine writes counted")
    deadline = time.monotonic() + 2 * 2.0 + 1  # a couple of retry periods more
    while time.monotonic() < deadline:
        assert leader.leading()
        assert_standby(standby)
        time.sleep(0.5)

    # SIGKILL: no release. The standby must wait out the lease, then take over and converge.
    killed = time.monotonic()
    leader.stop(signal.SIGKILL)
    admin.namespace(f"{tag}-after", {"dpo-test": tag})
    wait_for(standby.leading, timeout=60, what="the standby to take over")
    took_over = time.monotonic() - killed
    wait_for(lambda: covered(admin, f"{tag}-after"), timeout=60 - took_over, what="convergence")
    converged = time.monotonic() - killed
    print(f"\nSIGKILL handover: leader after {took_over:.1f}s, converged after {converged:.1f}s")
    assert converged < 60
    assert took_over >= LEASE_DURATION - 2.0, "took over before the lease could have expired"
    after = lease(admin, tag)
    assert f"_{standby.pid}_" in after["holderIdentity"]
    assert after["leaseTransitions"] == holder["leaseTransitions"] + 1
    # the new namespace's policies, by the new leader
    wait_for(lambda: standby.policy_writes() >= 3, what="the new leader's writes counted")


def test_sigterm_releases_the_lease_for_a_fast_handover(
    admin: Api, replicas: tuple[Replica, Replica], unique_name: str
) -> None:
    tag = unique_name
    profile(admin, tag)
    leader, standby = the_leader(replicas)
    assert_standby(standby)

    stopping = time.monotonic()
    leader.stop(signal.SIGTERM)
    stopped = time.monotonic() - stopping
    assert leader.process is not None
    assert leader.process.returncode == 0, leader.log_tail()
    assert "released the lease" in leader.log_tail()
    admin.namespace(f"{tag}-after", {"dpo-test": tag})
    wait_for(standby.leading, timeout=30, what="the standby to take over")
    took_over = time.monotonic() - stopping
    wait_for(lambda: covered(admin, f"{tag}-after"), timeout=30, what="convergence")
    converged = time.monotonic() - stopping
    print(
        f"\nSIGTERM handover: old leader gone after {stopped:.1f}s, new leader after "
        f"{took_over:.1f}s, converged after {converged:.1f}s"
    )
    assert took_over < 10, "a released lease is taken within a retry period or two"

    # A standby stops at once on SIGTERM (it holds nothing to release).
    spare = Replica(standby.kubeconfig, standby.log_path.with_name("c.log"), tag)
    spare.start()
    try:
        assert_standby(spare)
        began = time.monotonic()
        spare.stop(signal.SIGTERM)
        assert spare.process is not None
        assert spare.process.returncode == 0
        assert time.monotonic() - began < 5
    finally:
        spare.stop(signal.SIGKILL)
    assert standby.leading()


def test_a_leader_whose_lease_is_taken_exits_and_a_standby_respects_a_live_holder(
    admin: Api, replicas: tuple[Replica, Replica], unique_name: str
) -> None:
    tag = unique_name
    leader, standby = the_leader(replicas)
    write_lease(admin, tag, holderIdentity="intruder", leaseDurationSeconds=3600)
    taken = time.monotonic()
    assert leader.process is not None
    leader.process.wait(timeout=RENEW_DEADLINE)
    print(f"\nlease taken away: leader exited after {time.monotonic() - taken:.1f}s")
    assert leader.process.returncode == 1
    assert "leader election lost: the lease is now held by intruder" in leader.log_tail()

    # The intruder's lease is live (renewed never, but our clock says 3600 s): stand by.
    time.sleep(2 * 2.0 + 1)
    assert_standby(standby)
    # Released by the intruder: taken over within a retry period or two.
    write_lease(admin, tag, holderIdentity="", leaseDurationSeconds=1)
    wait_for(standby.leading, timeout=30, what="the standby to take the released lease")


class BlackHole(threading.Thread):
    """A TCP relay to the apiserver that can stop relaying (a network partition)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.done = threading.Event()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)

    def run(self) -> None:
        peers: dict[socket.socket, socket.socket] = {}
        while not self.done.is_set():
            if self.cut.is_set():  # nothing is read, accepted or forwarded any more
                time.sleep(0.1)
                continue
            for key, _ in self.selector.select(timeout=0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self.listener:
                    client, _ = sock.accept()
                    server = socket.create_connection(self.upstream)
                    peers[client], peers[server] = server, client
                    self.selector.register(client, selectors.EVENT_READ)
                    self.selector.register(server, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                    if data:
                        peers[sock].sendall(data)
                        continue
                except OSError:
                    pass
                for end in (sock, peers.pop(sock)):
                    peers.pop(end, None)
                    self.selector.unregister(end)
                    end.close()

    def stop(self) -> None:
        self.done.set()


def test_a_partitioned_leader_stops_before_the_standby_takes_over(
    plane: ControlPlane, admin: Api, unique_name: str, tmp_path: Path
) -> None:
    """The renew deadline, for real: the leader's connection to the apiserver goes dark. It must
    exit (status 1) by the renew deadline, before the standby may take over -- never two writers.
    """
    tag = unique_name
    host, port = plane.server.removeprefix("https://").split(":")
    relay = BlackHole((host, int(port)))
    relay.start()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    relayed = tmp_path / "relayed-kubeconfig"
    relayed.write_text(yaml.safe_dump(config))
    relayed.chmod(0o600)
    leader = Replica(relayed, tmp_path / "leader.log", tag)
    standby = Replica(plane.kubeconfig, tmp_path / "standby.log", tag)
    try:
        leader.start()
        wait_for(leader.leading, timeout=60, what="the relayed replica to lead")
        standby.start()
        time.sleep(2 * 2.0 + 1)
        assert_standby(standby)

        relay.cut.set()
        cut = time.monotonic()
        assert leader.process is not None
        leader.process.wait(timeout=RENEW_DEADLINE + 5)
        exited = time.monotonic() - cut
        assert leader.process.returncode == 1, leader.log_tail()
        assert "leader election lost" in leader.log_tail()
        assert standby.metric("dpo_leader") == 0, "took over while the old leader still ran"
        wait_for(standby.leading, timeout=60, what="the standby to take over")
        took_over = time.monotonic() - cut
        print(f"\npartition: leader exited after {exited:.1f}s, standby led after {took_over:.1f}s")
        assert exited <= RENEW_DEADLINE + 1
        assert took_over > exited
    finally:
        relay.stop()
        for replica in (leader, standby):
            replica.stop(signal.SIGKILL)
