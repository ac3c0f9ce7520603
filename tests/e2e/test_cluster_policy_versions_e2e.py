"""The ClusterNetworkPolicy flavor where only ``v1alpha2`` is served (issue #12, item 4).

sigs.k8s.io/network-policy-api v0.3.0 serves v1beta1 and v1alpha2 with one schema; a cluster
on an older release of it serves v1alpha2 only. The CRD here is v0.3.0's with v1beta1 switched
off (``served: false``, storage on v1alpha2), and the operator is started with
``--cluster-network-policy-api-version policy.networking.k8s.io/v1alpha2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from default_policy_operator.core.objects import cluster_policy_name
from dpo_dev.cluster import ControlPlane, network_policy_api_crd_file
from tests.support import MANAGED, Api, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

V1ALPHA2 = "policy.networking.k8s.io/v1alpha2"
PATH = f"/apis/{V1ALPHA2}/clusternetworkpolicies"


def v1alpha2_only() -> str:
    crd = yaml.safe_load(network_policy_api_crd_file().read_text())
    for version in crd["spec"]["versions"]:
        alpha = version["name"] == "v1alpha2"
        version["served"], version["storage"] = alpha, alpha
    return str(yaml.safe_dump(crd))


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("cnp-alpha")
    with ControlPlane(work / "plane") as plane:
        plane.apply_yaml(v1alpha2_only())
        api = Api(plane)
        wait_for(lambda: api.get("/apis/policy.networking.k8s.io/v1beta1") is None,
                 what="v1beta1 no longer served")  # fmt: skip
        operator = OperatorProcess(
            plane.kubeconfig,
            work / "operator.log",
            "--cluster-network-policy-api-version",
            V1ALPHA2,
        )
        operator.start()
        try:
            yield api
        finally:
            operator.stop()


def managed(api: Api) -> dict[str, dict[str, Any]]:
    items = api.request("GET", f"{PATH}?labelSelector={MANAGED}")["items"]
    return {item["metadata"]["name"]: item for item in items}


def test_cluster_network_policies_are_written_through_v1alpha2(alpha: Api) -> None:
    alpha.namespace("team-a", {"cnp": "alpha"})
    alpha.profile("alpha", {"namespaceSelector": {"matchLabels": {"cnp": "alpha"}},
                            "flavor": "ClusterNetworkPolicy"})  # fmt: skip
    names = {
        cluster_policy_name("alpha", p) for p in ("deny-all", "allow-dns", "allow-kube-system")
    }
    stored = wait_for(lambda: managed(alpha) if set(managed(alpha)) == names else None,
                      what="v1alpha2 ClusterNetworkPolicies")  # fmt: skip
    assert {body["apiVersion"] for body in stored.values()} == {V1ALPHA2}
    deny = stored[cluster_policy_name("alpha", "deny-all")]
    alpha.delete(f"{PATH}/{deny['metadata']['name']}")
    wait_for(
        lambda: (
            managed(alpha).get(deny["metadata"]["name"], {}).get("metadata", {}).get("uid")
            not in (None, deny["metadata"]["uid"])
        ),
        what="the deleted deny-all re-created",
    )
