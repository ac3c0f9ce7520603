"""The README's other commands, as a newcomer runs them: the demo, and the benchmark's smoke run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.harness import NETPOL, Client, netpol
from bench.phases import PHASES

from dpo_dev import netns
from dpo_dev.cluster import ControlPlane, down
from dpo_dev.dataplane import prefix_for
from tests.support import Api, ApiStatus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_demo_shows_the_operator_at_work(tmp_path: Path) -> None:
    """`make demo` runs this module; --once stops after the demonstration instead of Ctrl-C."""
    result = subprocess.run(
        [sys.executable, "-m", "dpo_dev.demo", "--once", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    table = out.split("Which profile governs each namespace")[1].split("NAME ")[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.strip()}
    assert rows["shop-search"][2] == "baseline"
    assert rows["shop-payments"][2] == "strict-payments"
    assert rows["sandbox-alice"][2] == "-"  # excluded by glob
    assert rows["legacy-batch"][2] == "-"  # exempt
    assert "dpo_drift_repaired_total: 0 -> 1" in out
    assert "stopped the operator, kube-apiserver and etcd" in out
    assert down(tmp_path) is False, "the demo left its control plane running"
    if os.geteuid() != 0:
        assert "packets: no dataplane here (the dataplane needs root" in out
        return
    assert packet_rows(out) == PACKETS, out
    repair = re.search(
        r"dpo-deny-all back in the API after (\d+) ms; .* was OPEN for (\d+) ms", out
    )
    assert repair is not None, out
    assert int(repair[1]) < 1000, repair[0]  # the README's promise: repaired within a second
    assert "removed the dataplane's pods, kube-router and their network namespaces" in out
    assert netns.names(prefix_for(tmp_path / "dataplane")) == [], "the demo left network namespaces"


#: What the README promises for the demo's flows: before any profile, with the sample profiles,
#: and after shop-search's own NetworkPolicy opens TCP 80 to its web pod.
PACKETS = {
    "shop-search/web -> shop-payments/db TCP/5432": ["OPEN", "BLOCKED", "BLOCKED"],
    "shop-search/web -> kube-system/coredns UDP/53": ["OPEN", "OPEN", "OPEN"],
    "shop-search/web -> kube-system/coredns TCP/80": ["OPEN", "BLOCKED", "BLOCKED"],
    "kube-system/metrics-server -> shop-search/web TCP/80": ["OPEN", "OPEN", "OPEN"],
    "kube-system/metrics-server -> shop-payments/db TCP/5432": ["OPEN", "BLOCKED", "BLOCKED"],
    "sandbox-alice/notebook -> shop-search/web TCP/80": ["OPEN", "BLOCKED", "OPEN"],
    "sandbox-alice/notebook -> shop-search/web TCP/8080": ["OPEN", "BLOCKED", "BLOCKED"],
    "sandbox-alice/notebook -> shop-payments/db TCP/5432": ["OPEN", "BLOCKED", "BLOCKED"],
}


def packet_rows(out: str) -> dict[str, list[str]]:
    """The last probe table the demo printed: flow -> one verdict per phase."""
    table = out.split("add their own NetworkPolicy")[1].split("==>")[0]
    rows = {}
    for line in table.splitlines():
        if " -> " in line:
            words = line.split()
            rows[" ".join(words[:4])] = words[4:7]
    return rows


@pytest.fixture
def quiet_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of the test's own: the counter is cluster-wide, and on the session's
    plane the session operator's writes and Events (a repair's, a resync's) land in it too."""
    with ControlPlane(tmp_path / "plane") as plane:
        yield plane


async def test_bench_counts_others_writes_from_the_apiserver_not_its_own(
    quiet_plane: ControlPlane, unique_name: str
) -> None:
    """The bench's write figures are apiserver_request_total minus what the bench sent itself:
    another client's creates, Events and refused attempts show; the bench's own do not."""
    api = Api(quiet_plane)
    api.namespace(unique_name)
    path = f"{NETPOL}/namespaces/{unique_name}/networkpolicies"
    client = Client(quiet_plane)
    try:
        before = await client.mark()
        for name in ("own-1", "own-2"):
            await client.call("POST", path, netpol(name))
        with pytest.raises(RuntimeError, match="409"):
            await client.call("POST", path, netpol("own-1"))
        api.create(path, netpol("other-1"))
        with pytest.raises(ApiStatus):
            api.create(path, netpol("other-1"))
        api.create(f"/api/v1/namespaces/{unique_name}/events", event(unique_name))
        writes = await client.writes_since(before)
    finally:
        await client.close()
    assert (writes["networkpolicies"], writes["events"]) == (1, 1)
    assert writes["refused_by"] == {"networkpolicies 409": 1}


def event(namespace: str) -> dict[str, object]:
    return {
        "metadata": {"generateName": "bench-"},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": "p"},
        "reason": "Bench",
        "message": "counted",
        "type": "Normal",
    }


def test_bench_smoke_run_prints_and_writes_figures(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (report,) = tmp_path.glob("bench-*-quick.json")
    data = json.loads(report.read_text())
    (run,) = data["results"]
    assert run["W_py"]["W"] > 0
    floor = run["W"]
    assert (floor["W"] is None and "skipped" in floor) or floor["W"] > 0, floor
    if floor["W"] is not None:  # measured watched, and beside it unwatched
        assert floor["W_unobserved"] > 0, floor
        assert floor["W_operator_objects"] > 0, floor
        assert len(floor["W_watched_runs"]) == 2, floor
        assert floor["W"] == max(floor["W_watched_runs"]), floor
        assert run["convergence"]["ratio_to_W_unobserved"] > 0
    # read from a family that must be on the operator's page (bench.harness.metric_value)
    assert run["convergence"]["resyncs"] >= 0
    assert run["convergence"]["objects"] == 3 * run["namespaces"]
    compact = run["compact"]
    assert compact["objects"] == compact["writes"]["networkpolicies"] == run["namespaces"]
    assert "Compact layout: converge N objects" in result.stdout
    first = run["writes_first_convergence"]
    assert first["networkpolicies"] == 3 * run["namespaces"]
    assert "namespaces" not in first["by_resource"]
    assert run["writes_noop_resync"]["networkpolicies"] == 0
    assert run["writes_restart"]["networkpolicies"] == 0
    drift = run["drift"]
    assert drift["writes_per_repair"]["networkpolicies"] == 1.0
    assert drift["deleted"]["count"] + drift["edited"]["count"] == drift["count"]
    assert drift["deleted"]["count"] >= 1, drift
    assert drift["edited"]["count"] >= 1, drift
    assert run["drift_burst"]["count"] == 100
    assert run["drift_burst"]["writes_per_repair"]["networkpolicies"] == 1.0
    rollout = run["rollout"]
    assert rollout["seconds"] > 0
    assert rollout["latency_create"]["count"] >= 1, "no namespace arrived during the rollout"
    assert "rollout: namespaces / seconds to Ready" in result.stdout
    templated = run["templated"]
    assert templated["writes"]["networkpolicies"] == templated["objects"] > run["namespaces"]
    for flavor in ("calico", "cluster_network_policy"):
        takeover = run[flavor]
        assert takeover["takeover_writes"]["networkpolicies"] == takeover["deleted_objects"]
    assert {row["flavor"] for row in run["selector_growth"]} == {
        "CalicoGlobalNetworkPolicy",
        "ClusterNetworkPolicy",
    }
    memory = run["memory"]
    assert memory["peak_mb"] >= max(memory["peak_by_phase"].values()) > 0
    assert memory["peak_mb"] >= memory["rss_mb_converged"]
    assert "converge 3N objects" in result.stdout
    readme = subprocess.run(
        [sys.executable, "-m", "bench.readme", str(report)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
    )  # fmt: skip
    assert f"| N = {run['namespaces']} | target |" in readme.stdout
    assert f"| Compact layout: converge N objects | {compact['objects']} in " in readme.stdout
    size = f"[bench] N={run['namespaces']}"  # progress goes to stderr; one size: not numbered
    for index, name in enumerate(PHASES, start=1):
        assert f"{size}, phase {name} ({index}/{len(PHASES)}): started" in result.stderr
    converge = f"phase converge ({PHASES.index('converge') + 1}/{len(PHASES)})"
    objects = run["convergence"]["objects"]
    assert f"{converge}: {objects}/{objects} objects present" in result.stderr
