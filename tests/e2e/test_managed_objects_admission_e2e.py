"""Managed objects are guarded by a ValidatingAdmissionPolicy: nobody takes them out of management.

``manifests/admission`` is applied to a real apiserver of this module's own (no operator and no
garbage collector run there, so the objects under test stay exactly as made). Requests are made
as other users through impersonation, as in ``test_admission_e2e.py``: a namespace editor with
RBAC to edit and delete network policies is refused any UPDATE (labels included) and any DELETE
of a managed object -- one with the operator's label, or with an ownerReference to a profile --
and keeps full control of everything else; admins, the operator's ServiceAccount and
kube-controller-manager's clean-up identities are allowed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpo_dev.cluster import ControlPlane
from tests.support import GNPS, Api, ApiStatus, wait_for

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
POLICY = "default-policy-operator-managed-objects"
ADMINS = "defaultpolicy.dev:policy-admins"
MANAGED_BY = "app.kubernetes.io/managed-by"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1"}
NAMESPACE = "team-a"


def operator_account() -> str:
    """The shipped ServiceAccount's user name, read from manifests/rbac (not restated here)."""
    account = yaml.safe_load((MANIFESTS / "rbac" / "service_account.yaml").read_text())
    meta = account["metadata"]
    return f"system:serviceaccount:{meta['namespace']}:{meta['name']}"


NAMESPACE_CONTROLLER = "system:serviceaccount:kube-system:namespace-controller"
GARBAGE_COLLECTOR = "system:serviceaccount:kube-system:generic-garbage-collector"


class As:
    """Requests as another user, impersonated with the admin's token."""

    def __init__(self, api: Api, user: str, group: str | None = None) -> None:
        self.api = api
        self.headers = {"Impersonate-User": user}
        if group is not None:
            self.headers["Impersonate-Group"] = group

    def request(self, method: str, path: str, body: Any = None, patch: bool = False) -> Any:
        content_type = "application/merge-patch+json" if patch else "application/json"
        return self.api.request(method, path, body, content_type, headers=self.headers)

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, patch=True)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def denied(call: Any, *args: Any) -> str:
    """Run a request that the policy must refuse; return the refusal's message."""
    with pytest.raises(ApiStatus) as refused:
        call(*args)
    assert refused.value.code == 403, refused.value.body
    assert POLICY in refused.value.body, f"refused, but not by the policy: {refused.value.body}"
    return refused.value.body


def np_path(name: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies/{name}"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A control plane with the admission policies in force and a namespace editor's RBAC."""
    with ControlPlane(tmp_path_factory.mktemp("admission-plane")) as plane:
        admin = Api(plane)
        plane.kubectl("apply", "-k", str(MANIFESTS / "admission"))
        admin.namespace(NAMESPACE)
        rules = [
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "verbs": ["get", "list", "create", "update", "patch", "delete"],
            },
            {
                "apiGroups": ["crd.projectcalico.org"],
                "resources": ["globalnetworkpolicies"],
                "verbs": ["get", "list", "create", "update", "patch", "delete"],
            },
        ]
        admin.create(
            f"{RBAC}/clusterroles",
            {**ROLE, "kind": "ClusterRole", "metadata": {"name": "policy-editor"}, "rules": rules},
        )
        users = ["editor", "admin-user", operator_account(), NAMESPACE_CONTROLLER]
        admin.create(
            f"{RBAC}/clusterrolebindings",
            {
                **ROLE,
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "policy-editor"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "policy-editor",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}
                    for user in [*users, GARBAGE_COLLECTOR]
                ],
            },
        )
        probe = make(admin, "probe")

        def in_force() -> bool:
            try:
                As(admin, "editor").delete(np_path(probe) + "?dryRun=All")
            except ApiStatus as exc:
                return exc.code == 403 and POLICY in exc.body
            return False

        wait_for(in_force, timeout=30, interval=0.2, what="the managed-objects policy in force")
        yield admin


@pytest.fixture(scope="module")
def owner(api: Api) -> dict[str, Any]:
    """An ownerReference to a real profile (a garbage collector would drop a dangling one)."""
    profile = api.profile("baseline", {"namespaceSelector": {"matchLabels": {"none": "x"}}})
    return {
        "apiVersion": "defaultpolicy.dev/v1alpha1",
        "kind": "DefaultPolicyProfile",
        "name": "baseline",
        "uid": profile["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def make(api: Api, name: str, labels: dict[str, str] | None = None, owner: Any = None) -> str:
    """A NetworkPolicy as the operator would make it (its labels; an owner if given)."""
    meta: dict[str, Any] = {
        "name": f"{name}-{secrets.token_hex(3)}",
        "namespace": NAMESPACE,
        "labels": {
            MANAGED_BY: "default-policy-operator",
            "defaultpolicy.dev/profile": "baseline",
            "defaultpolicy.dev/policy": "deny-all",
        }
        if labels is None
        else labels,
    }
    if owner is not None:
        meta["ownerReferences"] = [owner]
    body = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    api.create(f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies", body)
    return str(meta["name"])


def test_an_editor_cannot_take_a_managed_object_out_of_management(
    api: Api, owner: dict[str, Any]
) -> None:
    name = make(api, "dpo-deny-all", owner=owner)
    path = np_path(name)
    editor = As(api, "editor")
    message = denied(editor.patch, path, {"metadata": {"labels": {MANAGED_BY: None}}})
    assert "editor" in message
    denied(editor.patch, path, {"metadata": {"labels": {MANAGED_BY: "me"}}})
    denied(editor.patch, path, {"metadata": {"labels": {"defaultpolicy.dev/profile": None}}})
    denied(editor.patch, path, {"metadata": {"ownerReferences": None}})
    denied(editor.patch, path, {"spec": {"policyTypes": ["Egress"]}})
    denied(editor.patch, path, {"metadata": {"annotations": {"note": "mine now"}}})
    body = api.get(path)
    del body["metadata"]["labels"][MANAGED_BY]
    denied(editor.request, "PUT", path, body)
    denied(editor.delete, path)
    live = api.get(path)
    assert live["metadata"]["labels"][MANAGED_BY] == "default-policy-operator"
    assert live["spec"]["policyTypes"] == ["Ingress"]
    assert live["metadata"]["ownerReferences"] == [owner]


def test_an_object_whose_label_is_gone_is_still_guarded_by_its_owner(
    api: Api, owner: dict[str, Any]
) -> None:
    """An object stripped of its label before the policy was installed is still the
    operator's (it repairs it), so the editor cannot delete or keep editing it either."""
    name = make(api, "dpo-allow-dns", labels={"team": "a"}, owner=owner)
    editor = As(api, "editor")
    denied(editor.patch, np_path(name), {"metadata": {"labels": {"team": "b"}}})
    denied(editor.delete, np_path(name))
    assert api.get(np_path(name)) is not None


def test_the_editor_keeps_full_control_of_their_own_policies(api: Api) -> None:
    """Neither a look-alike label value nor an ownerReference to something else counts."""
    own = make(api, "team-policy", labels={"team": "a"})
    lookalike = make(api, "other", labels={MANAGED_BY: "helm"})
    foreign_owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x", "uid": "u-1"}
    owned = make(api, "owned", labels={}, owner=foreign_owner)
    editor = As(api, "editor")
    for name in (own, lookalike, owned):
        editor.patch(np_path(name), {"metadata": {"labels": {"edited": "yes"}}})
        assert api.get(np_path(name))["metadata"]["labels"]["edited"] == "yes"
        editor.delete(np_path(name))
        assert api.get(np_path(name)) is None


@pytest.mark.parametrize(
    ("user", "group"),
    [("admin-user", ADMINS), ("root", "system:masters"), (operator_account(), None)],
)
def test_admins_and_the_operator_may_edit_release_and_delete(
    api: Api, owner: dict[str, Any], user: str, group: str | None
) -> None:
    me = As(api, user, group)
    name = make(api, "dpo-deny-all", owner=owner)
    me.patch(np_path(name), {"spec": {"policyTypes": ["Ingress", "Egress"]}})
    # What the operator's Orphan deletion policy does: release the object.
    me.patch(np_path(name), {"metadata": {"labels": {MANAGED_BY: None}, "ownerReferences": None}})
    assert MANAGED_BY not in api.get(np_path(name))["metadata"]["labels"]
    me.delete(np_path(make(api, "dpo-allow-dns", owner=owner)))


def test_the_same_user_without_the_admin_group_is_refused(api: Api, owner: dict[str, Any]) -> None:
    name = make(api, "dpo-deny-all", owner=owner)
    denied(As(api, "admin-user").delete, np_path(name))
    As(api, "admin-user", ADMINS).delete(np_path(name))


@pytest.mark.parametrize("controller", [NAMESPACE_CONTROLLER, GARBAGE_COLLECTOR])
def test_kube_controller_manager_still_cleans_up(
    api: Api, owner: dict[str, Any], controller: str
) -> None:
    """The namespace controller deletes everything in a namespace being deleted; the garbage
    collector deletes or orphans what a deleted profile owned."""
    me = As(api, controller)
    if controller == GARBAGE_COLLECTOR:  # orphaning: the owner reference goes
        name = make(api, "dpo-deny-all", owner=owner)
        me.patch(np_path(name), {"metadata": {"ownerReferences": None}})
        assert "ownerReferences" not in api.get(np_path(name))["metadata"]
    me.delete(np_path(make(api, "dpo-deny-all", owner=owner)))


def test_calico_global_network_policies_are_guarded_too(api: Api) -> None:
    name = f"default.dpo-baseline-deny-all-{secrets.token_hex(3)}"
    api.create(
        GNPS,
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name, "labels": {MANAGED_BY: "default-policy-operator"}},
            "spec": {"selector": "all()", "types": ["Ingress"]},
        },
    )
    editor = As(api, "editor")
    denied(editor.patch, f"{GNPS}/{name}", {"metadata": {"labels": {MANAGED_BY: None}}})
    denied(editor.delete, f"{GNPS}/{name}")
    As(api, "admin-user", ADMINS).delete(f"{GNPS}/{name}")
    assert api.get(f"{GNPS}/{name}") is None
