"""End-to-end: the CalicoNetworkPolicy flavor and switches between every pair of flavors
(issue #12, items 1, 2 and 6), against the real Calico CRDs (crd.projectcalico.org/v1, from the
Calico module the control plane installs them from).

A switch is checked exactly, not by sampling: the test watches the four kinds of policy from
one resourceVersion on, and every resourceVersion of one etcd is a point in a single history,
so merging the event streams by resourceVersion replays the cluster's history of the
profile's objects in the order it happened. After every event of that history the namespace
must hold a deny-all in force (a NetworkPolicy or Calico NetworkPolicy in it, or a
GlobalNetworkPolicy or ClusterNetworkPolicy whose selector selects it). The ClusterNetworkPolicy
CRD comes from sigs.k8s.io/network-policy-api v0.3.0.

Here the writers usually land a plan's creates before its deletes anyway, so this test alone
would rarely catch a broken ordering rule; ``tests/core/test_flavor_handover.py`` checks the
rule against every order of writes. This one shows the real API and operator keep to it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from default_policy_operator.core.objects import calico_policy_name, cluster_policy_name
from tests.calico_selector import evaluate
from tests.netpol import selector_matches
from tests.support import (
    CNPS,
    GNPS,
    MANAGED,
    Api,
    OperatorProcess,
    calico_policy_path,
    wait_for,
)

pytestmark = pytest.mark.e2e

FLAVORS = (
    "NetworkPolicy",
    "CalicoNetworkPolicy",
    "CalicoGlobalNetworkPolicy",
    "ClusterNetworkPolicy",
)
BUILTINS = ("deny-all", "allow-dns", "allow-kube-system")
HANDOVER_SETTLE = 3.0  # dpo run's default


@pytest.fixture
def tag(unique_name: str, api: Api, operator_process: OperatorProcess) -> str:
    return unique_name


def np_path(namespace: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"


class History:
    """Every change to the profile's objects of the three kinds from one point on, in order."""

    def __init__(self, api: Api, tag: str, namespace: str, profiles: str = "") -> None:
        self.api, self.tag, self.namespace = api, tag, namespace
        self.paths = (np_path(namespace), calico_policy_path(namespace), GNPS, CNPS)
        self.selector = urllib.parse.quote(f"defaultpolicy.dev/profile in ({profiles or tag})")
        self.live: dict[tuple[str, str], dict[str, Any]] = {}
        listed = [api.request("GET", f"{p}?labelSelector={self.selector}") for p in self.paths]
        self.start = max(int(page["metadata"]["resourceVersion"]) for page in listed)
        for path, page in zip(self.paths, listed, strict=True):
            for item in page["items"]:
                self.live[path, item["metadata"]["name"]] = item
        #: (resourceVersion, event type, path, object, monotonic time received)
        self.events: list[tuple[int, str, str, dict[str, Any], float]] = []
        self._lock = threading.Lock()
        self._ended = {path: threading.Event() for path in self.paths}
        self._threads = [
            threading.Thread(target=self._watch, args=(path,), daemon=True) for path in self.paths
        ]
        for thread in self._threads:
            thread.start()

    def _watch(self, path: str) -> None:
        query = f"watch=true&resourceVersion={self.start}&labelSelector={self.selector}"
        request = urllib.request.Request(f"{self.api.server}{path}?{query}&timeoutSeconds=120")
        request.add_header("Authorization", f"Bearer {self.api.token}")
        with urllib.request.urlopen(request, context=self.api.context, timeout=150) as stream:
            for line in stream:
                event = json.loads(line)
                body = event["object"]
                if body["metadata"]["name"].startswith("marker-"):
                    self._ended[path].set()
                    return
                with self._lock:
                    version = int(body["metadata"]["resourceVersion"])
                    self.events.append((version, event["type"], path, body, time.monotonic()))

    def end(self) -> None:
        """Mark the end of each stream with an object of its kind, and wait for the marks."""
        labels = {"defaultpolicy.dev/profile": self.tag}  # matches ``profiles`` by design
        meta = {"name": f"marker-{self.tag}", "labels": labels}
        self.api.create(self.paths[0], {"apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy", "metadata": meta,
            "spec": {"podSelector": {"matchLabels": {"none": "none"}}}})  # fmt: skip
        calico = {"selector": "has(none)", "types": ["Ingress"]}
        self.api.create(self.paths[1], {"apiVersion": "crd.projectcalico.org/v1",
            "kind": "NetworkPolicy", "metadata": meta, "spec": calico})  # fmt: skip
        self.api.create(self.paths[2], {"apiVersion": "crd.projectcalico.org/v1",
            "kind": "GlobalNetworkPolicy", "metadata": meta, "spec": calico})  # fmt: skip
        nothing = {"namespaces": {"matchLabels": {"none": "none"}}}
        self.api.create(self.paths[3], {"apiVersion": "policy.networking.k8s.io/v1beta1",
            "kind": "ClusterNetworkPolicy", "metadata": meta,
            "spec": {"tier": "Baseline", "priority": 999, "subject": nothing}})  # fmt: skip
        for ended in self._ended.values():
            assert ended.wait(60), "a watch never delivered its end mark"
        for cluster_scoped in self.paths[2:]:
            self.api.delete(f"{cluster_scoped}/marker-{self.tag}")

    def uncovered(self) -> tuple[int, list[int]]:
        """Replay the history: (events replayed, resourceVersions after which nothing denied)."""
        gaps = []
        for version, kind, path, body, _ in sorted(self.events, key=lambda e: e[0]):
            key = (path, body["metadata"]["name"])
            if kind == "DELETED":
                self.live.pop(key, None)
            else:
                self.live[key] = body
            if not self.covered():
                gaps.append(version)
        return len(self.events), gaps

    def settled_for(self) -> float:
        """Seconds between the last write of the new kinds and the first delete of the old
        kind: how long the new cover had been live before the old one started to go."""
        ordered = sorted(self.events, key=lambda e: e[0])
        first_delete = next(e for e in ordered if e[1] == "DELETED")
        old_path = first_delete[2]
        before = [e for e in ordered if e[0] < first_delete[0] and e[2] != old_path]
        return first_delete[4] - max(e[4] for e in before)

    def covered(self) -> bool:
        nps, cnps, gnps, knps = self.paths
        if (nps, "dpo-deny-all") in self.live or (cnps, "default.dpo-deny-all") in self.live:
            return True
        deny = self.live.get((gnps, calico_policy_name(self.tag, "deny-all")))
        labels = {"dpo-test": self.tag, "projectcalico.org/name": self.namespace}
        if deny is not None and evaluate(deny["spec"]["namespaceSelector"], labels):
            return True
        baseline = self.live.get((knps, cluster_policy_name(self.tag, "deny-all")))
        labels = {"dpo-test": self.tag, "kubernetes.io/metadata.name": self.namespace}
        return baseline is not None and selector_matches(
            baseline["spec"]["subject"]["namespaces"], labels
        )


def flavor_in_place(api: Api, tag: str, namespace: str, flavor: str) -> bool:
    """Exactly ``flavor``'s built-ins, and nothing of the other flavors."""
    nps = set(api.policies(namespace, MANAGED))
    cnps = set(api.calico_policies(namespace, MANAGED))
    gnps = set(api.gnps(tag))
    knps = set(api.cluster_policies(tag))
    want = {
        "NetworkPolicy": ({f"dpo-{p}" for p in BUILTINS}, set(), set(), set()),
        "CalicoNetworkPolicy": (set(), {f"default.dpo-{p}" for p in BUILTINS}, set(), set()),
        "CalicoGlobalNetworkPolicy": (
            set(), set(), {calico_policy_name(tag, p) for p in BUILTINS}, set()),
        "ClusterNetworkPolicy": (
            set(), set(), set(), {cluster_policy_name(tag, p) for p in BUILTINS}),
    }[flavor]  # fmt: skip
    return (nps, cnps, gnps, knps) == want


def test_calico_network_policies_land_in_exactly_the_governed_namespaces(
    api: Api, tag: str
) -> None:
    api.namespace(f"{tag}-in", {"dpo-test": tag})
    api.namespace(f"{tag}-exempt", {"dpo-test": tag, "defaultpolicy.dev/exempt": "true"})
    api.namespace(f"{tag}-out", {"other": tag})
    api.profile(
        tag,
        {
            "namespaceSelector": {"matchLabels": {"dpo-test": tag}},
            "flavor": "CalicoNetworkPolicy",
            "policies": {"allowSameNamespace": {"ingress": True}},
            "customPolicies": [{"name": "allow-redis", "template": REDIS}],
        },
    )
    names = {f"default.dpo-{p}" for p in (*BUILTINS, "allow-same-namespace", "allow-redis")}
    wait_for(
        lambda: set(api.calico_policies(f"{tag}-in", MANAGED)) == names,
        what="Calico NetworkPolicies in the governed namespace",
    )
    stored = api.calico_policies(f"{tag}-in", MANAGED)
    assert stored["default.dpo-deny-all"]["spec"]["types"] == ["Ingress", "Egress"]
    assert stored["default.dpo-deny-all"]["spec"]["order"] == 2000
    assert stored["default.dpo-allow-redis"]["spec"]["selector"] == "service == 'redis'"
    assert stored["default.dpo-allow-same-namespace"]["spec"]["ingress"] == [
        {"action": "Allow", "source": {"selector": "all()"}}
    ]
    for namespace in (f"{tag}-exempt", f"{tag}-out", "kube-system"):
        assert api.calico_policies(namespace, MANAGED) == {}
    assert api.policies(f"{tag}-in", MANAGED) == {}, "the Calico flavor writes no NetworkPolicy"
    # Drift on the Calico kind is repaired like on the others.
    api.delete(calico_policy_path(f"{tag}-in", "default.dpo-deny-all"))
    wait_for(
        lambda: "default.dpo-deny-all" in api.calico_policies(f"{tag}-in", MANAGED),
        what="the deleted Calico deny-all to come back",
    )


REDIS = """\
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
spec:
  selector: service == 'redis'
  types: [Ingress]
  ingress:
    - action: Allow
      protocol: TCP
      source:
        selector: service == 'nodejs'
      destination:
        ports: [6379]
"""


@pytest.mark.parametrize(
    ("before", "after"),
    list(itertools.permutations(FLAVORS, 2)),
    ids=[f"{a}->{b}" for a, b in itertools.permutations(FLAVORS, 2)],
)
def test_a_flavor_switch_keeps_a_deny_all_in_force(
    api: Api, tag: str, before: str, after: str
) -> None:
    namespace = f"{tag}-ns"
    api.namespace(namespace, {"dpo-test": tag})
    spec: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"dpo-test": tag}}}
    api.profile(tag, {**spec, "flavor": before})
    wait_for(lambda: flavor_in_place(api, tag, namespace, before), what=f"{before} in place")
    history = History(api, tag, namespace)
    assert history.covered()
    api.patch_profile(tag, {"flavor": after})
    wait_for(lambda: flavor_in_place(api, tag, namespace, after), what=f"{after} in place")
    history.end()
    replayed, gaps = history.uncovered()
    settled = history.settled_for()
    print(
        f"\n{before} -> {after}: {replayed} events replayed, {len(gaps)} without a deny-all, "
        f"the new cover live {settled:.2f} s before the old one started to go"
    )
    assert replayed >= 6, "the switch should have created and deleted three objects each"
    assert gaps == [], f"no deny-all in force after resourceVersion(s) {gaps}"
    # engines watch each kind on its own stream: the new one gets --handover-settle (3 s) to
    # reach them first (less a margin for when this test's watches deliver)
    assert settled > HANDOVER_SETTLE - 0.5, f"the old cover went {settled:.2f} s after the new"


def test_cluster_network_policies_select_exactly_the_governed_namespaces(
    api: Api, tag: str
) -> None:
    api.namespace(f"{tag}-in", {"dpo-test": tag})
    api.namespace(f"{tag}-excluded", {"dpo-test": tag})
    api.namespace(f"{tag}-exempt", {"dpo-test": tag, "defaultpolicy.dev/exempt": "true"})
    api.namespace(f"{tag}-out", {"other": tag})
    api.profile(
        tag,
        {
            "namespaceSelector": {"matchLabels": {"dpo-test": tag}},
            "flavor": "ClusterNetworkPolicy",
            "excludeNamespaces": [f"{tag}-excluded"],
            "clusterNetworkPolicy": {"dnsTier": "Admin"},
        },
    )
    names = {cluster_policy_name(tag, p) for p in BUILTINS}
    stored = wait_for(
        lambda: api.cluster_policies(tag) if set(api.cluster_policies(tag)) == names else None,
        what="ClusterNetworkPolicies",
    )
    tiers = {b["metadata"]["labels"]["defaultpolicy.dev/policy"]: b["spec"]["tier"]
             for b in stored.values()}  # fmt: skip
    assert tiers == {"deny-all": "Baseline", "allow-dns": "Admin", "allow-kube-system": "Baseline"}
    namespaces = api.request("GET", "/api/v1/namespaces")["items"]
    for body in stored.values():
        subject = body["spec"]["subject"]["namespaces"]
        selected = {
            n["metadata"]["name"]
            for n in namespaces
            if selector_matches(subject, n["metadata"].get("labels") or {})
        }
        assert selected == {f"{tag}-in"}, body["metadata"]["name"]


STAGED_KNPS = "/apis/crd.projectcalico.org/v1/namespaces/{}/stagedkubernetesnetworkpolicies"


def test_a_stage_preview_keeps_enforcement_and_enforce_takes_over_without_a_gap(
    api: Api, tag: str
) -> None:
    """Mode Stage (issue #12, item 5) on the real staged CRD: a higher-priority Stage profile
    writes StagedKubernetesNetworkPolicies and leaves the enforcing profile's deny-all alone;
    switched to Enforce it takes the namespace over in place, the staged objects going last."""
    namespace, low = f"{tag}-ns", f"{tag}-low"
    api.namespace(namespace, {"dpo-test": tag})
    selector = {"namespaceSelector": {"matchLabels": {"dpo-test": tag}}}
    api.profile(low, selector)
    wait_for(lambda: flavor_in_place(api, low, namespace, "NetworkPolicy"), what="low in place")
    history = History(api, tag, namespace, profiles=f"{tag},{low}")
    api.profile(tag, {**selector, "priority": 10, "mode": "Stage"})
    staged_path = STAGED_KNPS.format(namespace)

    def staged() -> set[str]:
        items = api.request("GET", f"{staged_path}?labelSelector={MANAGED}")["items"]
        return {item["metadata"]["name"] for item in items}

    wait_for(lambda: staged() == {f"dpo-{p}" for p in BUILTINS}, what="the staged preview")
    owners = {p["metadata"]["labels"]["defaultpolicy.dev/profile"]
              for p in api.policies(namespace, MANAGED).values()}  # fmt: skip
    assert owners == {low}, "the preview took enforcement away"
    api.patch_profile(tag, {"mode": "Enforce"})
    wait_for(lambda: staged() == set(), what="the staged objects gone")
    owners = {p["metadata"]["labels"]["defaultpolicy.dev/profile"]
              for p in api.policies(namespace, MANAGED).values()}  # fmt: skip
    assert owners == {tag}
    history.end()
    replayed, gaps = history.uncovered()
    print(f"\nStage -> Enforce: {replayed} events replayed, {len(gaps)} without a deny-all")
    assert replayed >= 3
    assert gaps == [], f"no deny-all in force after resourceVersion(s) {gaps}"
