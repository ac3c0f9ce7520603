"""``dpo audit`` and ``dpo diff`` against a real apiserver tell the truth.

A control plane of this module's own: the operator converges a profile with an empty selector
(so every namespace but the protected ones is governed), then stops, so the cluster holds
still while the commands are run as a user would run them (``python -m ... audit``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from dpo_dev.cluster import ControlPlane
from tests.support import MANAGED, Api, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e

TEAMS = ("team-a", "team-b")
BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}


class Cluster:
    """The control plane, an admin client, and the two commands as a user runs them."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.api = Api(plane)

    def dpo(self, command: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
        """Run ``dpo <command> -o json``; its exit code and rows."""
        done = subprocess.run(
            [sys.executable, "-m", "default_policy_operator.cli", command,
             "--kubeconfig", str(self.plane.kubeconfig), "-o", "json", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    def audit(self, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
        code, rows = self.dpo("audit", *args)
        return code, {row["namespace"]: row for row in rows}

    def diff(self, *args: str) -> tuple[int, list[tuple[str, str, str]]]:
        code, rows = self.dpo("diff", *args)
        return code, [(row["verb"], row["namespace"], row["name"]) for row in rows]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with ControlPlane(tmp_path_factory.mktemp("inspection-plane")) as plane:
        api = Api(plane)
        for name in ("dpo-system", *TEAMS):
            api.namespace(name)
        api.profile("baseline", {})
        log = tmp_path_factory.mktemp("inspection-operator") / "operator.log"
        with OperatorProcess(plane.kubeconfig, log):  # --namespace dpo-system
            for name in (*TEAMS, "default"):
                wait_for(lambda n=name: set(api.policies(n, MANAGED)) == BUILTINS,
                         timeout=30, what=f"{name} covered")  # fmt: skip
            wait_for(lambda: condition(api.get_profile("baseline"), "Ready").get("status")
                     == "True", what="Ready")  # fmt: skip
        yield Cluster(plane)


def test_a_converged_cluster_audits_clean_and_diffs_empty(cluster: Cluster) -> None:
    code, rows = cluster.audit()
    assert code == 0, rows
    assert rows["team-a"] == {
        "namespace": "team-a", "state": "governed", "profile": "baseline",
        "missing": 0, "drifted": 0, "conflicts": 0,
    }  # fmt: skip
    assert cluster.diff() == (0, [])


def test_the_operators_namespace_is_protected(cluster: Cluster) -> None:
    """Not governed (the operator never writes there), so neither missing nor uncovered."""
    _, rows = cluster.audit()
    assert rows["dpo-system"]["state"] == "protected"
    assert rows["kube-system"]["state"] == "protected"
    # Another operator namespace: dpo-system is governed like any namespace, and the
    # operator (which protected it) wrote nothing there.
    code, rows = cluster.audit("--namespace", "elsewhere")
    assert code == 1
    assert rows["dpo-system"]["state"] == "governed"
    assert rows["dpo-system"]["missing"] == 3
    _, actions = cluster.diff("--namespace", "elsewhere")
    assert sorted(actions) == sorted(("create", "dpo-system", n) for n in BUILTINS)


def test_a_teams_own_policy_is_not_a_conflict(cluster: Cluster) -> None:
    api = cluster.api
    path = "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies"
    api.create(path, network_policy("allow-frontend"))
    try:
        code, rows = cluster.audit()
        assert code == 0, rows
        assert rows["team-a"]["conflicts"] == 0
        assert cluster.diff() == (0, [])
    finally:
        api.delete(f"{path}/allow-frontend")


def test_a_managed_name_held_by_someone_else_is_a_conflict(cluster: Cluster) -> None:
    """Someone else's dpo-deny-all in a governed namespace: the operator would not write it."""
    api = cluster.api
    api.namespace("team-c")  # new, and no operator running: nothing of ours there yet
    path = "/apis/networking.k8s.io/v1/namespaces/team-c/networkpolicies"
    api.create(path, network_policy("dpo-deny-all"))
    try:
        code, rows = cluster.audit()
        assert code == 1
        assert rows["team-c"]["conflicts"] == 1
        assert rows["team-c"]["missing"] == 2  # the two it would create
        assert rows["team-a"]["conflicts"] == 0
        code, actions = cluster.diff()
        assert code == 1
        assert sorted(actions) == [
            ("create", "team-c", "dpo-allow-dns"),
            ("create", "team-c", "dpo-allow-kube-system"),
        ]  # and not dpo-deny-all: the operator leaves it alone
    finally:
        # Exempt: no longer governed, so neither missing nor in conflict.
        api.label_namespace("team-c", {"defaultpolicy.dev/exempt": "true"})
    code, rows = cluster.audit()
    assert (code, rows["team-c"]["state"]) == (0, "exempt")


def test_a_deleted_managed_policy_is_missing_and_diff_shows_the_create(cluster: Cluster) -> None:
    api = cluster.api
    path = api.policy_path("team-b", "dpo-allow-dns")
    saved = api.get(path)
    api.delete(path)
    try:
        code, rows = cluster.audit()
        assert code == 1
        assert (rows["team-b"]["missing"], rows["team-b"]["conflicts"]) == (1, 0)
        assert cluster.diff() == (1, [("create", "team-b", "dpo-allow-dns")])
    finally:
        meta = saved["metadata"]
        for field in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            meta.pop(field, None)
        api.create("/apis/networking.k8s.io/v1/namespaces/team-b/networkpolicies", saved)
    assert cluster.audit()[0] == 0


def test_an_empty_selector_is_said_in_the_status(cluster: Cluster) -> None:
    entry = condition(cluster.api.get_profile("baseline"), "SelectsAllNamespaces")
    assert (entry["status"], entry["reason"]) == ("True", "EmptyNamespaceSelector")


def network_policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Ingress"]},
    }
