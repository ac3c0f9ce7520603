"""Resilience: watches resumed from a compacted resourceVersion get 410 Gone (issue #7, part 3).

The operator runs through :class:`tests.faultproxy.FaultProxy` (a transparent TLS proxy until a
test installs faults) against a control plane of this module's own, with a resync period far
longer than the test (600 s), so whatever it catches up on comes from its watches, not from a
full resync.

How the 410 is forced, the way it happens in a cluster: the proxy ends the operator's watch
streams cleanly (what the server does when a watch's ``timeoutSeconds`` is up) and holds the
watches the operator resumes with, while the cluster changes; etcd's history is then compacted to
its current revision (``/v3/kv/compaction`` on etcd's gRPC gateway) and the apiserver restarted,
so its watch cache starts after the compaction. When the proxy lets the held watches through,
they ask for a resourceVersion that is gone: the apiserver answers with a ``410 Gone`` ERROR
event (the proxy sees it in the stream) and the operator must re-list -- and work out from the
new list what it missed. (There is no ``--watch-timeout`` flag to make the watches expire
sooner; the restart makes them resume from an expired version instead.) A plain partition
(connections reset) makes the operator re-list too, since it re-lists after any broken stream:
the second test deletes a managed object during one and checks that the re-list notices.
"""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dpo_dev.cluster import ControlPlane
from tests.faultproxy import FaultProxy, Record, Rule
from tests.nothing_lost import wait_nothing_lost
from tests.resilience import (
    assert_alive,
    compact,
    covered,
    create_namespaces,
    wait_answers,
    wait_until,
)
from tests.support import MANAGED, Api, OperatorProcess

pytestmark = pytest.mark.e2e

PROD, DEV = {"env": "prod"}, {"env": "dev"}
BASE = 40  # base-00..19 prod, base-20..39 dev
PARTITION = Rule("reset", watches=None)  # every request, new connections included
BLIND = Rule("stall", seconds=math.inf, watches=True)  # watches held unanswered, the rest works


@dataclass
class Setup:
    plane: ControlPlane
    api: Api
    proxy: FaultProxy
    operator: OperatorProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("gone")
    with (
        ControlPlane(work / "plane") as plane,
        FaultProxy(plane.server, plane.ca_file, work / "proxy") as proxy,
    ):
        api = Api(plane)
        create_namespaces(api, [f"base-{i:02d}" for i in range(BASE // 2)], PROD)
        create_namespaces(api, [f"base-{i:02d}" for i in range(BASE // 2, BASE)], DEV)
        api.profile("baseline", {"namespaceSelector": {"matchLabels": PROD}})
        kubeconfig = proxy.kubeconfig(plane.kubeconfig, work / "kubeconfig")
        operator = OperatorProcess(kubeconfig, work / "operator.log", "--resync-period", "600")
        operator.start()
        try:
            wait_nothing_lost(api, timeout=60)
            yield Setup(plane, api, proxy, operator)
        finally:
            operator.stop()


def last_watch_version(proxy: FaultProxy, path: str) -> str:
    """The resourceVersion the operator last (re)started its watch of ``path`` from."""
    watches = [r for r in proxy.records() if r.watch and r.path == path]
    versions = [urllib.parse.parse_qs(r.query).get("resourceVersion", [""])[0] for r in watches]
    versions = [v for v in versions if v]
    assert versions, f"no watch of {path} with a resourceVersion went through the proxy"
    return versions[-1]


def watch_status(api: Api, path: str, version: str) -> int:
    """What the apiserver says to a watch from ``version``: 410 when it has been compacted."""
    query = urllib.parse.urlencode(
        {"watch": "true", "resourceVersion": version, "timeoutSeconds": 1}
    )
    request = urllib.request.Request(f"{api.server}{path}?{query}")
    request.add_header("Authorization", f"Bearer {api.token}")
    with urllib.request.urlopen(request, context=api.context, timeout=10) as response:
        for line in response:
            event = json.loads(line)
            if event["type"] == "ERROR":
                return int(event["object"]["code"])
    return 200


def expire_watches(s: Setup) -> tuple[str, int]:
    """Compact etcd to now and restart the apiserver: every watch kopf holds is now too old."""
    version = last_watch_version(s.proxy, "/api/v1/namespaces")
    revision = compact(s.plane)
    s.plane.restart_apiserver(signal.SIGKILL)
    wait_answers(s.plane)
    return version, revision


def lists(records: list[Record], path: str) -> list[Record]:
    """The operator's (paginated) lists of ``path``."""
    return [r for r in records if not r.watch and r.path == path and "limit=" in r.query]


def test_relist_after_410_misses_nothing(setup: Setup) -> None:
    s, api = setup, setup.api
    resyncs_before = s.operator.metric("dpo_last_full_resync_timestamp_seconds")
    # Blind the operator: its watch streams end cleanly (as at their server-side timeout) and the
    # proxy holds the watches it resumes with; its other requests still go through.
    s.proxy.set_rules(BLIND)
    s.proxy.end_watches()
    cut = time.monotonic()
    # The churn the operator's watches do not see.
    created = [f"gap-{i:02d}" for i in range(20)]
    create_namespaces(api, created, PROD)
    joined = [f"base-{i:02d}" for i in range(20, 30)]  # dev -> prod
    left = [f"base-{i:02d}" for i in range(5)]  # prod -> dev: their policies must go
    for name in joined:
        api.label_namespace(name, {"env": "prod"})
    for name in left:
        api.label_namespace(name, {"env": "dev"})
    version, revision = expire_watches(s)
    assert watch_status(api, "/api/v1/namespaces", version) == 410, (version, revision)
    expired_before = len(s.proxy.expired)
    s.proxy.clear()
    healed = time.monotonic()

    caught_up = wait_until(
        lambda: (
            all(covered(api, n) for n in created + joined)
            and not any(api.policies(n, MANAGED) for n in left)
        ),
        60,
        0.5,
        "the churn during the partition to be reconciled",
    )
    verdict = wait_nothing_lost(api, timeout=30)
    assert_alive(s.operator)
    expired = s.proxy.expired[expired_before:]
    relists = lists(s.proxy.records(healed), "/api/v1/namespaces")
    print(
        "\n[410 Gone after compaction + apiserver restart]"
        f"\n  watches held (s): {healed - cut:.1f}; etcd compacted at revision {revision}; the"
        f" operator resumed namespaces from resourceVersion {version}"
        f"\n  410 Gone events seen by the proxy after the heal: {len(expired)}"
        f" ({sorted({p for _, p, _ in expired})})"
        f"\n  re-lists of namespaces after the heal: {len(relists)}"
        f"\n  churn reconciled after the heal (s): {caught_up - healed:.1f}"
        f"\n  final check: {verdict.summary()}"
    )
    assert any(path == "/api/v1/namespaces" for _, path, _ in expired), s.proxy.expired
    assert relists, "the operator did not re-list namespaces after the 410"
    # Nothing came from a full resync: the watches' re-list did it all.
    assert s.operator.metric("dpo_last_full_resync_timestamp_seconds") == resyncs_before


def test_object_deleted_during_the_gap_is_restored(setup: Setup) -> None:
    s, api = setup, setup.api
    s.proxy.set_rules(PARTITION)
    s.proxy.drop_connections()
    api.delete(api.policy_path("base-10", "dpo-deny-all"))
    time.sleep(2.0)
    s.proxy.clear()
    healed = time.monotonic()
    wait_until(
        lambda: lists(s.proxy.records(healed), "/apis/networking.k8s.io/v1/networkpolicies"),
        45,
        0.5,
        "the operator to re-list NetworkPolicies",
    )
    # A re-list only replays what exists: the operator must notice what vanished meanwhile.
    restored = wait_until(
        lambda: covered(api, "base-10"), 20, 0.5, "base-10/dpo-deny-all to be re-created"
    )
    print(f"\n[object deleted during the gap] re-created {restored - healed:.1f}s after the heal")
    assert s.operator.metric("dpo_last_full_resync_timestamp_seconds") == 0  # not by a resync
    wait_nothing_lost(api, timeout=20)
    assert_alive(s.operator)
