"""The namespace label ``defaultpolicy.dev/exempt`` is guarded by a ValidatingAdmissionPolicy.

``manifests/admission`` is applied to the real apiserver; requests are then made as other users
through impersonation (the admin token with ``Impersonate-User``/``Impersonate-Group``): a user
who may create and patch namespaces (RBAC granted here) but is no exempt-admin is refused any
change of the label and allowed everything else; a member of ``defaultpolicy.dev:exempt-admins``
(and ``system:masters``, the admin itself) is allowed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpo_dev.cluster import ControlPlane
from tests.support import Api, ApiStatus, wait_for

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
EXEMPT = "defaultpolicy.dev/exempt"
ADMINS = "defaultpolicy.dev:exempt-admins"
POLICY = "default-policy-operator-exempt-label"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


class As:
    """Requests as another user, impersonated with the admin's token."""

    def __init__(self, api: Api, user: str, *groups: str) -> None:
        self.api = api
        self.user = user
        self.headers = {"Impersonate-User": user}
        if groups:
            # urllib sends one header per name: several groups would need several headers.
            assert len(groups) == 1
            self.headers["Impersonate-Group"] = groups[0]

    def request(self, method: str, path: str, body: Any = None, patch: bool = False) -> Any:
        content_type = "application/merge-patch+json" if patch else "application/json"
        return self.api.request(method, path, body, content_type, headers=self.headers)

    def create_namespace(self, name: str, labels: dict[str, str], dry_run: bool = False) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }
        query = "?dryRun=All" if dry_run else ""
        return self.request("POST", f"/api/v1/namespaces{query}", body)

    def label(self, name: str, labels: dict[str, str | None]) -> Any:
        body = {"metadata": {"labels": labels}}
        return self.request("PATCH", f"/api/v1/namespaces/{name}", body, patch=True)


def denied(call: Any, *args: Any, **kwargs: Any) -> str:
    """Run a request that the policy must refuse; return the refusal's message."""
    with pytest.raises(ApiStatus) as refused:
        call(*args, **kwargs)
    assert refused.value.code == 403, refused.value.body
    assert ADMINS in refused.value.body, f"refused, but not by the policy: {refused.value.body}"
    assert POLICY in refused.value.body
    return refused.value.body


def labels_of(api: Api, name: str) -> dict[str, str]:
    labels: dict[str, str] = api.get(f"/api/v1/namespaces/{name}")["metadata"].get("labels", {})
    return labels


@pytest.fixture(scope="module")
def tag() -> str:
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def users(control_plane: ControlPlane, tag: str) -> Iterator[tuple[str, str]]:
    """Two users who may create, update and patch namespaces; the policy is in force."""
    unique_name = tag
    api = Api(control_plane)
    control_plane.kubectl("apply", "-k", str(MANIFESTS / "admission"))
    user, admin_user = f"{unique_name}-user", f"{unique_name}-exempt-admin"
    role = f"dpo-test-{unique_name}-namespace-editor"
    api.create(
        f"{RBAC}/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": [
                        "namespaces",
                        "namespaces/status",
                        "namespaces/finalize",
                    ],
                    "verbs": ["get", "create", "update", "patch"],
                }
            ],
        },
    )
    api.create(
        f"{RBAC}/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}
                for name in (user, admin_user)
            ],
        },
    )
    # A new policy takes a moment to reach the admission plugin: wait until it refuses.
    probe = As(api, user)

    def in_force() -> bool:
        try:
            probe.create_namespace(f"{unique_name}-probe", {EXEMPT: "true"}, dry_run=True)
        except ApiStatus as exc:
            return exc.code == 403 and ADMINS in exc.body
        return False

    wait_for(in_force, timeout=30, interval=0.2, what="the exempt-label policy to be in force")
    try:
        yield user, admin_user
    finally:
        api.delete(f"{RBAC}/clusterrolebindings/{role}")
        api.delete(f"{RBAC}/clusterroles/{role}")


def test_user_cannot_create_an_exempt_namespace(api: Api, users: tuple[str, str]) -> None:
    user, _ = users
    name = f"{user}-new"
    message = denied(As(api, user).create_namespace, name, {EXEMPT: "true", "team": "a"})
    assert user in message
    assert api.get(f"/api/v1/namespaces/{name}") is None
    As(api, user).create_namespace(name, {"team": "a"})  # without the label: fine
    assert labels_of(api, name)["team"] == "a"


def test_user_cannot_add_change_or_remove_the_label(api: Api, users: tuple[str, str]) -> None:
    user, _ = users
    plain, exempt = f"{user}-plain", f"{user}-exempt"
    me = As(api, user)
    me.create_namespace(plain, {"team": "a"})
    api.namespace(exempt, {EXEMPT: "true", "team": "a"})  # the admin (system:masters) may

    denied(me.label, plain, {EXEMPT: "true"})
    denied(me.label, plain, {EXEMPT: ""})
    denied(me.label, exempt, {EXEMPT: "false"})
    denied(me.label, exempt, {EXEMPT: None})
    # A full update (PUT) is an UPDATE too.
    body = api.get(f"/api/v1/namespaces/{exempt}")
    del body["metadata"]["labels"][EXEMPT]
    denied(me.request, "PUT", f"/api/v1/namespaces/{exempt}", body)
    # Nor are the subresources a way around it: a PUT to namespaces/status or
    # namespaces/finalize writes the object's labels too (test_system_masters_may_change_it).
    for subresource in ("status", "finalize"):
        body = api.get(f"/api/v1/namespaces/{exempt}")
        del body["metadata"]["labels"][EXEMPT]
        denied(me.request, "PUT", f"/api/v1/namespaces/{exempt}/{subresource}", body)
    assert labels_of(api, plain).get(EXEMPT) is None
    assert labels_of(api, exempt)[EXEMPT] == "true"

    # Everything else stays allowed, on both namespaces.
    for name in (plain, exempt):
        me.label(name, {"team": "b", "tier": "gold"})
        me.request(
            "PATCH",
            f"/api/v1/namespaces/{name}",
            {"metadata": {"annotations": {"owner": "someone"}}},
            patch=True,
        )
        assert labels_of(api, name)["team"] == "b"
        assert labels_of(api, name)["tier"] == "gold"
        me.label(name, {"tier": None})
        assert "tier" not in labels_of(api, name)
    # Re-stating the same value is no change.
    me.label(exempt, {EXEMPT: "true", "team": "c"})
    assert labels_of(api, exempt) == {
        EXEMPT: "true",
        "team": "c",
        "kubernetes.io/metadata.name": exempt,
    }


def test_exempt_admins_may_set_change_and_remove_it(api: Api, users: tuple[str, str]) -> None:
    _, admin_user = users
    me = As(api, admin_user, ADMINS)
    name = f"{admin_user}-ns"
    me.create_namespace(name, {EXEMPT: "true"})
    me.label(name, {EXEMPT: "false"})
    assert labels_of(api, name)[EXEMPT] == "false"
    me.label(name, {EXEMPT: None})
    assert EXEMPT not in labels_of(api, name)
    me.label(name, {EXEMPT: "true"})
    assert labels_of(api, name)[EXEMPT] == "true"
    # The same user without the group is refused: it is the group that counts.
    denied(As(api, admin_user).label, name, {EXEMPT: None})


def test_system_masters_may_change_it(api: Api, users: tuple[str, str], tag: str) -> None:
    name = f"{tag}-masters"
    api.namespace(name, {EXEMPT: "true"})
    api.label_namespace(name, {EXEMPT: None})
    assert EXEMPT not in labels_of(api, name)
    impersonated = As(api, f"{tag}-root", "system:masters")
    impersonated.label(name, {EXEMPT: "true"})
    assert labels_of(api, name)[EXEMPT] == "true"
    # The subresources really do write labels: why the policy must cover them too.
    for subresource, value in (("status", "false"), ("finalize", "true")):
        body = api.get(f"/api/v1/namespaces/{name}")
        body["metadata"]["labels"][EXEMPT] = value
        api.request("PUT", f"/api/v1/namespaces/{name}/{subresource}", body)
        assert labels_of(api, name)[EXEMPT] == value, subresource
