"""The Calico flavors through ``projectcalico.org/v3`` (issue #12, item 3).

Calico 3.32 serves its v3 API as CRDs, without the Calico API server. The Go module proxy
serves no Calico version whose module carries those CRDs, so this test installs the unmodified
copies in ``../shared/crds/calico`` (read in place, never copied into the repository) and is
skipped, saying so, where they are absent. The operator runs with
``--calico-api-version projectcalico.org/v3``: the one setting that decides the API. A profile
that names the other API is refused with a message and writes nothing (before, every write
failed with 400).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from default_policy_operator.core.objects import calico_policy_name
from dpo_dev.cluster import ControlPlane, default_calico_fallback_dir
from tests.support import MANAGED, Api, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e

V3 = "/apis/projectcalico.org/v3"
V3_CRDS = ("projectcalico.org_networkpolicies.yaml", "projectcalico.org_globalnetworkpolicies.yaml")
BUILTINS = ("deny-all", "allow-dns", "allow-kube-system")


def v3_crd_files() -> list[Path]:
    files = [default_calico_fallback_dir() / name for name in V3_CRDS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"no projectcalico.org/v3 CRDs to test against: {missing}")
    return files


@pytest.fixture(scope="module")
def v3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    files = v3_crd_files()
    work = tmp_path_factory.mktemp("calico-v3")
    with ControlPlane(work / "plane") as plane:
        for path in files:
            plane.kubectl("apply", "-f", str(path))
        plane.kubectl(
            "wait", "--for=condition=established", "--timeout=60s",
            "crd/networkpolicies.projectcalico.org", "crd/globalnetworkpolicies.projectcalico.org",
        )  # fmt: skip
        operator = OperatorProcess(
            plane.kubeconfig, work / "operator.log", "--calico-api-version", "projectcalico.org/v3"
        )
        operator.start()
        try:
            yield Api(plane)
        finally:
            operator.stop()


def with_ready(api: Api, name: str, **expected: str) -> dict[str, Any] | None:
    """The profile, once its Ready condition shows ``expected``."""
    profile = api.get_profile(name)
    ready = condition(profile, "Ready")
    return profile if all(ready.get(k) == v for k, v in expected.items()) else None


def managed(api: Api, path: str) -> dict[str, dict[str, Any]]:
    items = api.request("GET", f"{path}?labelSelector={MANAGED}")["items"]
    return {item["metadata"]["name"]: item for item in items}


def test_calico_network_policies_are_written_through_v3(v3: Api) -> None:
    v3.namespace("team-a", {"v3": "namespaced"})
    v3.profile("namespaced", {"namespaceSelector": {"matchLabels": {"v3": "namespaced"}},
                              "flavor": "CalicoNetworkPolicy"})  # fmt: skip
    path = f"{V3}/namespaces/team-a/networkpolicies"
    names = {f"default.dpo-{p}" for p in BUILTINS}
    stored = wait_for(lambda: managed(v3, path) if set(managed(v3, path)) == names else None,
                      what="v3 Calico NetworkPolicies")  # fmt: skip
    assert {p["apiVersion"] for p in stored.values()} == {"projectcalico.org/v3"}
    assert {p["spec"]["order"] for p in stored.values()} == {2000}
    # Drift through the v3 API is seen and repaired like any other.
    v3.delete(f"{path}/default.dpo-deny-all")
    wait_for(lambda: "default.dpo-deny-all" in managed(v3, path), what="the deny-all back")
    profile = wait_for(lambda: with_ready(v3, "namespaced", status="True"), what="Ready")
    assert profile["status"]["managedObjects"] == 3


def test_global_network_policies_are_written_through_v3(v3: Api) -> None:
    v3.namespace("team-g", {"v3": "global"})
    v3.profile("global", {"namespaceSelector": {"matchLabels": {"v3": "global"}},
                          "flavor": "CalicoGlobalNetworkPolicy"})  # fmt: skip
    names = {calico_policy_name("global", p) for p in BUILTINS}
    path = f"{V3}/globalnetworkpolicies"
    stored = wait_for(
        lambda: managed(v3, path) if names <= set(managed(v3, path)) else None,
        what="v3 GlobalNetworkPolicies",
    )
    assert stored[calico_policy_name("global", "deny-all")]["spec"]["types"] == [
        "Ingress",
        "Egress",
    ]


def test_a_profile_naming_the_other_calico_api_is_refused_and_writes_nothing(v3: Api) -> None:
    v3.namespace("team-x", {"v3": "mismatch"})
    v3.profile("mismatch", {"namespaceSelector": {"matchLabels": {"v3": "mismatch"}},
                            "flavor": "CalicoNetworkPolicy",
                            "calico": {"apiVersion": "crd.projectcalico.org/v1"}})  # fmt: skip
    profile = wait_for(lambda: with_ready(v3, "mismatch", reason="InvalidSpec"), what="refusal")
    message = condition(profile, "Ready")["message"]
    assert "--calico-api-version" in message
    assert "crd.projectcalico.org/v1" in message
    assert managed(v3, f"{V3}/namespaces/team-x/networkpolicies") == {}
