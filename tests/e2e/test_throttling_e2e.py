"""Resilience: API Priority and Fairness squeezes the operator to a trickle (issue #7, part 4a).

A control plane of this module's own gets ``manifests/rbac`` and the operator runs with a token
of its ServiceAccount (``system:masters``, the admin's group, is exempt from API Priority and
Fairness, so the operator needs an identity of its own for a FlowSchema to match). A FlowSchema
sends every resource request of that ServiceAccount to a PriorityLevelConfiguration with a tiny
share of the server's concurrency (``nominalConcurrencyShares: 1``: one seat here), nothing
to lend or borrow, and queuing off (``limitResponse: Reject``), so whatever does not find a free
seat at once is refused with 429 and Retry-After. A rollout over 80 namespaces then has to get
through that: the operator must back off and retry, converge, never exit, and keep /healthz 200.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dpo_dev.cluster import ControlPlane
from tests.nothing_lost import wait_nothing_lost
from tests.resilience import HealthPoller, apiserver_metric, assert_alive, create_namespaces
from tests.support import Api, OperatorProcess, wait_for

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAMESPACE, ACCOUNT = "dpo-system", "default-policy-operator"
LEVEL = "dpo-squeeze"
NAMESPACES = 80
PROD = {"env": "prod"}

SQUEEZE = [
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": LEVEL},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    },
    {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": LEVEL},
        "spec": {
            "priorityLevelConfiguration": {"name": LEVEL},
            "matchingPrecedence": 500,  # before every default schema but exempt/probes
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": ACCOUNT, "namespace": NAMESPACE},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                }
            ],
        },
    },
]


@dataclass
class Squeezed:
    plane: ControlPlane
    api: Api
    operator: OperatorProcess


def token_kubeconfig(plane: ControlPlane, api: Api, path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of the operator's ServiceAccount."""
    review = api.create(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": ACCOUNT, "user": {"token": review["status"]["token"]}}]
    for context in config["contexts"]:
        context["context"]["user"] = ACCOUNT
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def squeezed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Squeezed]:
    work = tmp_path_factory.mktemp("apf")
    # A smaller server-wide concurrency (150 seats, default 600) leaves the squeezed level one.
    small = ["--max-requests-inflight=100", "--max-mutating-requests-inflight=50"]
    with ControlPlane(work / "plane", extra_apiserver_args=small) as plane:
        plane.kubectl("apply", "-f", str(MANIFESTS / "deploy" / "namespace.yaml"))
        plane.kubectl("apply", "-k", str(MANIFESTS / "rbac"))
        api = Api(plane)
        create_namespaces(api, [f"apf-{i:03d}" for i in range(NAMESPACES)], PROD)
        kubeconfig = token_kubeconfig(plane, api, work / "kubeconfig")
        operator = OperatorProcess(kubeconfig, work / "operator.log", "--resync-period", "30")
        operator.start()
        try:
            yield Squeezed(plane, api, operator)
        finally:
            operator.stop()


def squeeze_active(api: Api) -> bool:
    schema = api.request("GET", f"/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/{LEVEL}")
    conditions = (schema.get("status") or {}).get("conditions") or []
    judged = any(c["type"] == "Dangling" and c["status"] == "False" for c in conditions)
    seats = apiserver_metric(api, "apiserver_flowcontrol_nominal_limit_seats", priority_level=LEVEL)
    return judged and seats > 0


def test_throttled_by_priority_and_fairness_still_converges(squeezed: Squeezed) -> None:
    plane, api, operator = squeezed.plane, squeezed.api, squeezed.operator
    plane.apply_yaml(yaml.safe_dump_all(SQUEEZE))
    # The apiserver's APF controller picks the new objects up from its informer; it has once it
    # has judged the FlowSchema's reference (condition Dangling) and sized the level's seats.
    wait_for(lambda: squeeze_active(api), timeout=30, what="the FlowSchema in force")
    with HealthPoller(operator) as health:
        started = time.monotonic()
        api.profile("baseline", {"namespaceSelector": {"matchLabels": PROD}})
        verdict = wait_nothing_lost(api, timeout=60)
        converged = time.monotonic()
    assert_alive(operator)
    operator_429 = operator.metric("dpo_api_errors_total", code="429")
    rejected = apiserver_metric(
        api, "apiserver_flowcontrol_rejected_requests_total", priority_level=LEVEL
    )
    seats = apiserver_metric(api, "apiserver_flowcontrol_nominal_limit_seats", priority_level=LEVEL)
    dispatched = apiserver_metric(
        api, "apiserver_flowcontrol_dispatched_requests_total", priority_level=LEVEL
    )
    print(
        "\n[API Priority and Fairness squeeze]"
        f"\n  rollout: {NAMESPACES} namespaces, {3 * NAMESPACES} NetworkPolicies"
        f"\n  converged in (s): {converged - started:.1f}"
        f"\n  apiserver: {rejected:.0f} requests rejected (429), {dispatched:.0f} dispatched"
        f" at priority level {LEVEL} ({seats:.0f} seat(s))"
        f"\n  operator: dpo_api_errors_total{{code=429}} = {operator_429:.0f}"
        f"\n  healthz: {health.summary()}"
        f"\n  final check: {verdict.summary()}"
    )
    assert rejected > 0, "the FlowSchema never rejected anything: nothing was tested"
    assert operator_429 > 0
    assert health.samples
    assert health.failures() == [], health.summary()
