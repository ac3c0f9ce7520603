"""End-to-end: deleting a governed namespace is not drift (issue 10, item 6).

These run on the plane that also runs kube-controller-manager, so a deleted namespace goes
through what a real cluster does: it gets a ``deletionTimestamp``, the namespace controller
deletes everything in it (the operator's ``dpo-*`` NetworkPolicies included), and then the
namespace disappears. Meanwhile NamespaceLifecycle admission refuses every create in it with
403. An operator that took those deletions for drift would re-create the policies, be refused,
go Degraded and fire alerts for a namespace its owner simply deleted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.kube.client import KubeApi
from default_policy_operator.kube.credentials import load_credentials
from default_policy_operator.metrics import REGISTRY
from dpo_dev.cluster import ControlPlane
from tests.inline_render import InlineWorld
from tests.support import MANAGED, Api, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e

BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}
#: the NetworkPolicy creates the apiserver refused with 403, whoever sent them
_FORBIDDEN_CREATES = re.compile(
    r'^apiserver_request_total\{(?=[^}]*code="403")(?=[^}]*resource="networkpolicies")'
    r'(?=[^}]*verb="POST")[^}]*\} (\S+)$',
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def plane_api(controller_plane: ControlPlane) -> Api:
    return Api(controller_plane)


@pytest.fixture(scope="module")
def operator(
    controller_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_path = tmp_path_factory.mktemp("namespace-deletion-operator") / "operator.log"
    with OperatorProcess(controller_plane.kubeconfig, log_path) as process:
        yield process


def forbidden_creates(plane: ControlPlane) -> float:
    status, body = plane.request("GET", "/metrics")
    assert status == 200, body
    return sum(float(value) for value in _FORBIDDEN_CREATES.findall(body))


def troubled(status: dict[str, Any] | None) -> bool:
    """Degraded, or not Ready for a reason other than still applying."""
    degraded = condition(status, "Degraded").get("status") == "True"
    return degraded or condition(status, "Ready").get("reason") == "ApplyFailed"


def test_deleting_a_governed_namespace_is_not_drift(
    controller_plane: ControlPlane, plane_api: Api, operator: OperatorProcess, unique_name: str
) -> None:
    profile, namespace = unique_name, f"{unique_name}-ns"
    plane_api.profile(profile, {"namespaceSelector": {"matchLabels": {"dpo-test": unique_name}}})
    plane_api.namespace(namespace, {"dpo-test": unique_name})
    wait_for(lambda: set(plane_api.policies(namespace, MANAGED)) == BUILTINS, what="baseline")
    wait_for(
        lambda: condition(plane_api.get_profile(profile), "Ready").get("status") == "True",
        what="the profile to be Ready",
    )
    drift = operator.metric("dpo_drift_detected_total", profile=profile)
    errors = operator.metric("dpo_reconcile_errors_total")
    forbidden = forbidden_creates(controller_plane)
    log_start = operator.log_path.stat().st_size

    path = f"/api/v1/namespaces/{namespace}"
    plane_api.delete(path)
    statuses: list[dict[str, Any]] = []

    def observe() -> dict[str, Any]:
        """The profile's status now; every one seen is checked below."""
        statuses.append(plane_api.get_profile(profile))
        return statuses[-1].get("status") or {}

    def namespace_gone() -> bool:
        observe()
        return plane_api.get(path) is None

    wait_for(namespace_gone, timeout=60, what="the namespace to disappear")
    # Until the status has caught up with the namespace being gone, keep watching it too.
    wait_for(lambda: observe().get("governedNamespaces") == 0, what="the status to catch up")

    assert [s["status"]["conditions"] for s in statuses if troubled(s)] == []
    assert operator.metric("dpo_drift_detected_total", profile=profile) == drift
    assert operator.metric("dpo_reconcile_errors_total") == errors
    assert forbidden_creates(controller_plane) == forbidden
    log = operator.log_path.read_text(errors="replace")[log_start:]
    assert "being terminated" not in log
    assert "403 Forbidden" not in log


def test_a_create_racing_the_termination_is_not_an_error(
    controller_plane: ControlPlane, plane_api: Api, unique_name: str
) -> None:
    """The watch may show the namespace controller's deletions before the namespace's own
    ``deletionTimestamp``; a re-create then meets NamespaceLifecycle's 403. That is the
    namespace going away, not a failure: no error, no Degraded.

    The reconciler here runs without informers, so its view of the namespace stays the one from
    before the deletion, exactly as while the namespace event is still on its way.
    """
    profile, namespace = unique_name, f"{unique_name}-ns"
    labels = {"dpo-test": unique_name}
    plane_api.profile(profile, {"namespaceSelector": {"matchLabels": labels}})
    # A finalizer of ours holds the namespace in Terminating once the controller has emptied it.
    meta = {"name": namespace, "labels": labels, "finalizers": ["dpo.test/hold"]}
    hold = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
    plane_api.create("/api/v1/namespaces", hold)
    plane_api.delete(f"/api/v1/namespaces/{namespace}")
    try:
        forbidden = forbidden_creates(controller_plane)
        errors = REGISTRY.get_sample_value("dpo_reconcile_errors_total", {"reason": "api_403"})
        stale = Namespace(namespace, labels)  # as before the deletion
        status = asyncio.run(_reconcile_with(stale, controller_plane, plane_api, profile))
        assert forbidden_creates(controller_plane) > forbidden, "no create met the 403"
        after = REGISTRY.get_sample_value("dpo_reconcile_errors_total", {"reason": "api_403"})
        assert after == errors
        assert not troubled({"status": status}), status["conditions"]
    finally:
        plane_api.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"finalizers": None}})
        plane_api.delete_profile(profile)


async def _reconcile_with(
    namespace: Namespace, plane: ControlPlane, plane_api: Api, profile: str
) -> dict[str, Any]:
    """Run a reconciler whose only view of the namespace is ``namespace``; its final status."""
    world = InlineWorld(protected_namespaces(None))
    world.update_profile(plane_api.get_profile(profile))
    world.set_namespace(namespace)
    async with KubeApi(await load_credentials(str(plane.kubeconfig))) as api:
        reconciler = Reconciler(world, api, Settings(workers=2))
        task = asyncio.create_task(reconciler.run())
        try:
            await reconciler.idle(limit=30)
            status: dict[str, Any] = reconciler.status.status_for(
                profile, {}, world.counts()[profile]
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return status
