"""The operator's pod meets the ``restricted`` Pod Security Standard, by the apiserver's own word.

The pod template of ``manifests/deploy``'s Deployment is created as a Pod in a fresh namespace
that enforces ``restricted``; the apiserver's PodSecurity admission must admit it. As controls,
the same pod made slightly less strict must be rejected, with PodSecurity's message.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpo_dev.cluster import ControlPlane
from tests.support import Api, ApiStatus

pytestmark = pytest.mark.e2e

DEPLOYMENT = Path(__file__).resolve().parents[2] / "manifests" / "deploy" / "deployment.yaml"


def operator_pod(namespace: str, name: str) -> dict[str, Any]:
    deployment = next(
        d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d and d["kind"] == "Deployment"
    )
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": name, "namespace": namespace},
        "spec": template["spec"],
    }


@pytest.fixture
def restricted(api: Api, unique_name: str) -> str:
    """A fresh namespace enforcing ``restricted``, with the operator's ServiceAccount in it.

    The local apiserver runs without the ServiceAccount admission plugin (no controller-manager
    mints tokens), so the account is not strictly needed; it is created to match a cluster.
    """
    name = f"{unique_name}-restricted"
    api.namespace(
        name,
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    account = operator_pod(name, "x")["spec"]["serviceAccountName"]
    api.create(
        f"/api/v1/namespaces/{name}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
    )
    return name


def create(api: Api, pod: dict[str, Any]) -> Any:
    return api.create(f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods", pod)


def test_operator_pod_is_admitted_under_restricted(api: Api, restricted: str) -> None:
    pod = operator_pod(restricted, "operator")
    created = create(api, pod)
    container = created["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert created["spec"]["securityContext"]["runAsUser"] == 65532


def test_without_run_as_non_root_it_is_rejected(api: Api, restricted: str) -> None:
    pod = operator_pod(restricted, "root-allowed")
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    del pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
    with pytest.raises(ApiStatus) as rejected:
        create(api, pod)
    assert rejected.value.code == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "runAsNonRoot" in message


def test_with_privilege_escalation_it_is_rejected(api: Api, restricted: str) -> None:
    pod = operator_pod(restricted, "escalating")
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiStatus) as rejected:
        create(api, pod)
    assert rejected.value.code == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "allowPrivilegeEscalation" in message


def test_admitted_in_its_own_namespace(
    api: Api, control_plane: ControlPlane, unique_name: str
) -> None:
    """In dpo-system as manifests/deploy creates it (enforcing restricted), too."""
    control_plane.kubectl("apply", "-f", str(DEPLOYMENT.parent / "namespace.yaml"))
    namespace = api.get("/api/v1/namespaces/dpo-system")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = operator_pod("dpo-system", unique_name)
    create(api, pod)
    api.delete(f"/api/v1/namespaces/dpo-system/pods/{unique_name}")
