"""The local dataplane tooling: ``dataplane up``/``probe``/``down`` and what it leaves behind.

The packet tests trust that a topology is isolated from the host and fully removed; this pins
that down: the host's firewall rules and interfaces are identical before and after, and after
``down`` no namespace, process, Pod or Node of the topology remains.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dpo_dev import dataplane, netns
from dpo_dev.cluster import ControlPlane
from dpo_dev.podserver import Outcome

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root"),
]


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _host_state() -> tuple[str, str]:
    """The host's own filter rules and interface names."""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    rules = "\n".join(line for line in rules.splitlines() if not line.startswith("#"))
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return rules, "\n".join(sorted(line.split(":")[1] for line in links.splitlines()))


@pytest.mark.parametrize("engine", ["kube-router", "calico"])
def test_up_probe_down_leaves_nothing_behind(tmp_path: Path, engine: str) -> None:
    host_before = _host_state()
    with ControlPlane(tmp_path / "plane") as plane:
        topology = dataplane.up(plane.workdir, engine=engine)
        prefix = topology.prefix
        created = netns.names(prefix)
        assert len(created) == 1 + len(dataplane.DEMO_PODS)
        pids = [pid for name in created for pid in netns.pids(name)]
        assert len(pids) >= 2 + len(dataplane.DEMO_PODS)  # the engine, forwarder, responders
        assert _host_state() == host_before
        flow = ("dataplane-b/client", "dataplane-a/web")
        assert dataplane.probe_from_state(plane.workdir, *flow, "TCP", 80) is Outcome.OPEN
        assert dataplane.probe_from_state(plane.workdir, *flow, "TCP", 1) is Outcome.REFUSED
        if engine == "calico":
            assert any("calico-felix" in _command(pid) for pid in pids), "Felix is not running"

        assert dataplane.down(plane.workdir)
        assert netns.names(prefix) == []
        assert [pid for pid in pids if _running(pid)] == []
        status, pods = plane.request(
            "GET", f"/api/v1/pods?labelSelector={dataplane.TOPOLOGY_LABEL}"
        )
        assert status == 200
        assert pods["items"] == []
        assert plane.request("GET", f"/api/v1/nodes/{dataplane.NODE_NAME}")[0] == 404
        assert not dataplane.down(plane.workdir)  # idempotent
    assert _host_state() == host_before
