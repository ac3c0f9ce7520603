"""Least privilege, proven: the operator runs as its shipped ServiceAccount and is never refused.

A dedicated control plane (this module's own, with an audit log) gets ``manifests/rbac``
applied; the operator runs with a TokenRequest token of the ServiceAccount through a
representative scenario -- both flavors, namespaces labelled in and out, drift repair, a
conflict, profile edits, deletion with Delete and with Orphan, an Audit profile, full resyncs --
and the audit log must show no 403 for that user. The audit log also shows which permissions
were used: every rule of the ClusterRole (and of the events Role) must have been exercised, so
none is there "just in case". Negative checks then ask the apiserver what the same token may
not do.
"""

from __future__ import annotations

import atexit
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from default_policy_operator.core.objects import calico_policy_name, cluster_policy_name
from dpo_dev.cluster import ControlPlane
from tests.support import (
    CNPS,
    GNPS,
    MANAGED,
    Api,
    ApiStatus,
    OperatorProcess,
    calico_policy_path,
    condition,
    wait_for,
)

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAMESPACE = "dpo-system"
ACCOUNT = "default-policy-operator"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
#: Requests the test itself makes with the token carry this User-Agent: they are not the
#: operator's, and the negative checks' 403s are intended.
TEST_AGENT = "dpo-rbac-test"
BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}
CALICO_BUILTINS = {f"default.{name}" for name in BUILTINS}

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [USER]}, {"level": "None"}],
}


@dataclass
class Identity:
    token: str
    kubeconfig: Path
    api: Api


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of this module's own, with an audit log of the operator's requests."""
    plane = ControlPlane(tmp_path_factory.mktemp("rbac-plane"), audit_policy=AUDIT_POLICY)
    atexit.register(plane.stop)
    try:
        plane.start()
        plane.kubectl("apply", "-f", str(MANIFESTS / "deploy" / "namespace.yaml"))
        plane.kubectl("apply", "-k", str(MANIFESTS / "rbac"))
        yield plane
    finally:
        plane.stop()
        atexit.unregister(plane.stop)


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture(scope="module")
def identity(plane: ControlPlane, admin: Api, tmp_path_factory: pytest.TempPathFactory) -> Identity:
    """A token of the ServiceAccount (TokenRequest API) and a kubeconfig that uses it."""
    review = admin.create(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{ACCOUNT}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    token = review["status"]["token"]
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": ACCOUNT, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = ACCOUNT
    path = tmp_path_factory.mktemp("rbac-identity") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    sa = Api(plane, token=token)
    who = sa.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        headers={"User-Agent": TEST_AGENT},
    )
    assert who["status"]["userInfo"]["username"] == USER
    return Identity(token, path, sa)


@pytest.fixture(scope="module")
def operator(
    identity: Identity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """``dpo run`` as the ServiceAccount, resyncing every few seconds so resyncs happen too, and
    with leader election as the Deployment runs it (its Lease in dpo-system)."""
    log = tmp_path_factory.mktemp("rbac-operator") / "operator.log"
    process = OperatorProcess(identity.kubeconfig, log, "--resync-period", "4", "--leader-elect")
    atexit.register(process.stop)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        atexit.unregister(process.stop)


# -- the scenario ---------------------------------------------------------------------------


def _managed(api: Api, namespace: str) -> set[str]:
    return set(api.policies(namespace, MANAGED))


def _wait_names(api: Api, namespace: str, names: set[str]) -> None:
    wait_for(
        lambda: _managed(api, namespace) == names,
        timeout=30,
        what=f"{namespace} to hold exactly {sorted(names)}",
    )


def _wait_ready(api: Api, name: str, **expected: Any) -> dict[str, Any]:
    """Wait until the profile's status, for its current generation, shows ``expected``."""

    def probe() -> dict[str, Any]:
        profile: dict[str, Any] = api.get_profile(name) or {}
        status = profile.get("status") or {}
        current = status.get("observedGeneration") == profile.get("metadata", {}).get("generation")
        ok = current and all(status.get(k) == v for k, v in expected.items())
        return profile if ok else {}

    try:
        return wait_for(probe, timeout=30, what=f"status of {name}: {expected}")
    except AssertionError as exc:
        status = (api.get_profile(name) or {}).get("status")
        raise AssertionError(f"{exc}; status: {status}") from None


def _gnps(api: Api, profile: str) -> dict[str, dict[str, Any]]:
    return api.gnps(profile)


def _unmanaged(bodies: dict[str, dict[str, Any]]) -> bool:
    return all(
        "app.kubernetes.io/managed-by" not in (b["metadata"].get("labels") or {})
        and not b["metadata"].get("ownerReferences")
        for b in bodies.values()
    )


def _selector(tag: str) -> dict[str, Any]:
    return {"matchLabels": {"dpo-test": tag}}


def _wait_calico_names(api: Api, namespace: str, names: set[str]) -> None:
    wait_for(
        lambda: set(api.calico_policies(namespace, MANAGED)) == names,
        timeout=30,
        what=f"Calico NetworkPolicies {sorted(names)} in {namespace}",
    )


def _calico_namespaced_scenario(admin: Api, tag: str) -> None:
    """Calico's namespaced flavor: create next to a foreign object in a managed name (get),
    edit (update), then switch the flavor to NetworkPolicy (delete, after the handover)."""
    profile, namespace = f"{tag}-cnp", f"{tag}-cnp-ns"
    admin.namespace(namespace, {"dpo-test": profile})
    admin.create(
        calico_policy_path(namespace),
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default.dpo-allow-dns", "namespace": namespace},
            "spec": {"selector": "all()", "types": ["Ingress"]},
        },
    )
    admin.profile(
        profile, {"namespaceSelector": _selector(profile), "flavor": "CalicoNetworkPolicy"}
    )
    _wait_calico_names(admin, namespace, CALICO_BUILTINS - {"default.dpo-allow-dns"})
    _wait_ready(admin, profile, conflicts=1)
    admin.patch_profile(profile, {"calico": {"order": 2500}})
    wait_for(
        lambda: (
            {p["spec"]["order"] for p in admin.calico_policies(namespace, MANAGED).values()}
            == {2500}
        ),
        timeout=30,
        what="Calico NetworkPolicies at order 2500",
    )
    admin.patch_profile(profile, {"flavor": "NetworkPolicy"})
    _wait_names(admin, namespace, BUILTINS)
    _wait_calico_names(admin, namespace, set())
    assert set(admin.calico_policies(namespace)) == {"default.dpo-allow-dns"}  # foreign, kept


#: flavor -> (staged resource path under crd.projectcalico.org/v1, namespaced, name of a policy)
STAGED: dict[str, tuple[str, bool, Any]] = {
    "NetworkPolicy": ("stagedkubernetesnetworkpolicies", True, lambda _, p: f"dpo-{p}"),
    "CalicoNetworkPolicy": ("stagednetworkpolicies", True, lambda _, p: f"default.dpo-{p}"),
    "CalicoGlobalNetworkPolicy": ("stagedglobalnetworkpolicies", False, calico_policy_name),
}


def _staged_scenario(admin: Api, tag: str, flavor: str) -> None:
    """Mode Stage in one flavor: create next to a foreign object in a managed name (get), edit
    (update, and delete of a policy no longer wanted), then delete the profile with Orphan
    (patch)."""
    resource, namespaced, name_of = STAGED[flavor]
    profile = f"{tag}-stage-{len(resource)}"  # one per staged kind (their names differ in length)
    namespace = f"{profile}-ns"
    admin.namespace(namespace, {"dpo-test": profile})
    base = "/apis/crd.projectcalico.org/v1" + (f"/namespaces/{namespace}" if namespaced else "")
    path = f"{base}/{resource}"
    kind = "Staged" + {"NetworkPolicy": "KubernetesNetworkPolicy"}.get(
        flavor, flavor.removeprefix("Calico")
    )
    foreign = {
        "name": name_of(profile, "allow-dns"),
        **({"namespace": namespace} if namespaced else {}),
    }
    admin.create(path, {"apiVersion": "crd.projectcalico.org/v1", "kind": kind,
                        "metadata": foreign, "spec": {"stagedAction": "Set"}})  # fmt: skip
    admin.profile(profile, {"namespaceSelector": _selector(profile), "flavor": flavor,
                            "mode": "Stage", "deletionPolicy": "Orphan"})  # fmt: skip

    def staged() -> dict[str, dict[str, Any]]:
        query = urllib.parse.quote(f"defaultpolicy.dev/profile={profile}")
        items = admin.request("GET", f"{path}?labelSelector={query}")["items"]
        return {item["metadata"]["name"]: item for item in items}

    deny, kube = name_of(profile, "deny-all"), name_of(profile, "allow-kube-system")
    wait_for(lambda: set(staged()) == {deny, kube}, timeout=30, what=f"staged {flavor}")
    _wait_ready(admin, profile, conflicts=1)
    admin.patch_profile(profile, {"policies": {"denyAll": {"ingress": False}}})
    wait_for(lambda: set(staged()) == {deny}, timeout=30, what=f"staged {flavor} edited")
    admin.delete_profile(profile)
    wait_for(lambda: admin.get_profile(profile) is None, timeout=30, what=f"{profile} gone")
    kept = admin.get(f"{path}/{deny}")
    assert kept is not None
    assert "app.kubernetes.io/managed-by" not in (kept["metadata"].get("labels") or {})


def _cluster_scenario(admin: Api, tag: str) -> None:
    """The ClusterNetworkPolicy flavor: create next to a foreign object in a managed name
    (get), edit (update), then switch to NetworkPolicy (delete, after the handover)."""
    profile, namespace = f"{tag}-knp", f"{tag}-knp-ns"
    admin.namespace(namespace, {"dpo-test": profile})
    foreign = cluster_policy_name(profile, "allow-dns")
    admin.create(
        CNPS,
        {
            "apiVersion": "policy.networking.k8s.io/v1beta1",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": foreign},
            "spec": {"tier": "Baseline", "priority": 999, "subject": {"namespaces": {
                "matchLabels": {"nothing": "here"}}}},
        },
    )  # fmt: skip
    admin.profile(
        profile, {"namespaceSelector": _selector(profile), "flavor": "ClusterNetworkPolicy"}
    )
    wait_for(lambda: len(admin.cluster_policies(profile)) == 2, timeout=30, what="two CNPs")
    _wait_ready(admin, profile, conflicts=1)
    admin.patch_profile(profile, {"clusterNetworkPolicy": {"priority": 200}})
    wait_for(
        lambda: (
            {p["spec"]["priority"] for p in admin.cluster_policies(profile).values()} == {200, 201}
        ),
        timeout=30,
        what="CNPs at priority 200 and 201",
    )
    admin.patch_profile(profile, {"flavor": "NetworkPolicy"})
    _wait_names(admin, namespace, BUILTINS)
    wait_for(lambda: admin.cluster_policies(profile) == {}, timeout=30, what="CNPs gone")
    assert admin.get(f"{CNPS}/{foreign}") is not None  # the foreign one stays


@pytest.fixture(scope="module")
def scenario(admin: Api, operator: OperatorProcess) -> str:
    """Drive the operator through everything it does; return the tag its objects carry."""
    tag = "rbac"
    ns_in, ns_out, ns_conflict = f"{tag}-in", f"{tag}-out", f"{tag}-conflict"

    # NetworkPolicy flavor, deletionPolicy Delete; a namespace labelled in and out again.
    admin.namespace(ns_in, {"dpo-test": tag, "env": "prod"})
    admin.namespace(ns_out, {"dpo-test": tag, "env": "dev"})
    admin.profile(
        tag,
        {
            "namespaceSelector": {"matchLabels": {"dpo-test": tag, "env": "prod"}},
            "deletionPolicy": "Delete",
        },
    )
    _wait_names(admin, ns_in, BUILTINS)
    _wait_ready(admin, tag, governedNamespaces=1)
    admin.label_namespace(ns_out, {"env": "prod"})
    _wait_names(admin, ns_out, BUILTINS)
    admin.label_namespace(ns_out, {"env": "dev"})
    _wait_names(admin, ns_out, set())

    # Drift: a managed policy deleted behind the operator's back comes back (and an Event).
    old = admin.policies(ns_in)["dpo-deny-all"]["metadata"]["uid"]
    admin.delete(admin.policy_path(ns_in, "dpo-deny-all"))
    wait_for(
        lambda: (
            admin.policies(ns_in).get("dpo-deny-all", {}).get("metadata", {}).get("uid")
            not in (None, old)
        ),
        timeout=30,
        what="the deleted policy to be re-created",
    )
    wait_for(
        lambda: [e for e in admin.events_for(tag) if e["reason"] == "DriftRepaired"],
        timeout=30,
        what="a DriftRepaired event",
    )
    # A second repair is folded into that Event (patched: its count becomes 2).
    admin.delete(admin.policy_path(ns_in, "dpo-allow-dns"))
    wait_for(
        lambda: (
            [e["count"] for e in admin.events_for(tag) if e["reason"] == "DriftRepaired"] == [2]
        ),
        timeout=30,
        what="the DriftRepaired event's count to reach 2",
    )

    # An edit updates the objects in place.
    admin.patch_profile(tag, {"policies": {"denyAll": {"ingress": False}}})
    wait_for(
        lambda: admin.policies(ns_in)["dpo-deny-all"]["spec"]["policyTypes"] == ["Egress"],
        timeout=30,
        what="the edited deny-all",
    )

    # A foreign object in a managed name: looked at (get), reported, left alone.
    admin.namespace(ns_conflict, {"dpo-test": tag, "env": "staging"})
    admin.create(
        f"/apis/networking.k8s.io/v1/namespaces/{ns_conflict}/networkpolicies",
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "dpo-allow-dns", "namespace": ns_conflict},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
    )
    admin.label_namespace(ns_conflict, {"env": "prod"})
    # (allow-kube-system is ingress-only, and ingress is no longer denied: not wanted)
    _wait_names(admin, ns_conflict, {"dpo-deny-all"})
    _wait_ready(admin, tag, conflicts=1)

    # Audit mode writes nothing and reports.
    audit, ns_audit = f"{tag}-audit", f"{tag}-audit-ns"
    admin.namespace(ns_audit, {"dpo-test": audit})
    admin.profile(audit, {"namespaceSelector": _selector(audit), "mode": "Audit"})
    profile = _wait_ready(admin, audit, governedNamespaces=1, driftedObjects=3)
    assert condition(profile, "Ready")["reason"] == "Audited"
    assert _managed(admin, ns_audit) == set()

    # Calico flavor: create (next to a foreign object in a managed name), edit (update), then
    # delete with Delete.
    calico, ns_calico = f"{tag}-calico", f"{tag}-calico-ns"
    admin.namespace(ns_calico, {"dpo-test": calico})
    foreign = calico_policy_name(calico, "allow-dns")
    admin.create(
        GNPS,
        {
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": foreign},
            "spec": {"selector": "all()", "types": ["Ingress"]},
        },
    )
    admin.profile(
        calico,
        {"namespaceSelector": _selector(calico), "flavor": "CalicoGlobalNetworkPolicy"},
    )
    wait_for(lambda: len(_gnps(admin, calico)) == 2, timeout=30, what="two GNPs")
    _wait_ready(admin, calico, conflicts=1)
    wait_for(
        lambda: [e for e in admin.events_for(calico) if e["reason"] == "Conflict"],
        timeout=30,
        what="a Conflict event for the foreign GlobalNetworkPolicy",
    )
    admin.patch_profile(calico, {"calico": {"order": 2500}})
    wait_for(
        lambda: {g["spec"]["order"] for g in _gnps(admin, calico).values()} == {2500},
        timeout=30,
        what="GNPs at order 2500",
    )
    admin.delete_profile(calico)
    wait_for(lambda: admin.get_profile(calico) is None, timeout=30, what=f"{calico} gone")
    assert _gnps(admin, calico) == {}
    assert admin.get(f"{GNPS}/{foreign}") is not None  # the foreign one stays

    _calico_namespaced_scenario(admin, tag)
    _cluster_scenario(admin, tag)
    for flavor in STAGED:
        _staged_scenario(admin, tag, flavor)

    # Orphan, in every flavor: the objects stay, released (patched).
    short = {
        "NetworkPolicy": "np",
        "CalicoNetworkPolicy": "cnp",
        "CalicoGlobalNetworkPolicy": "gnp",
        "ClusterNetworkPolicy": "knp",
    }
    for flavor in short:
        name = f"{tag}-orphan-{short[flavor]}"
        namespace = f"{name}-ns"
        admin.namespace(namespace, {"dpo-test": name})
        admin.profile(
            name,
            {"namespaceSelector": _selector(name), "flavor": flavor, "deletionPolicy": "Orphan"},
        )
        if flavor == "NetworkPolicy":
            _wait_names(admin, namespace, BUILTINS)
        elif flavor == "CalicoNetworkPolicy":
            _wait_calico_names(admin, namespace, CALICO_BUILTINS)
        elif flavor == "ClusterNetworkPolicy":
            wait_for(lambda: len(admin.cluster_policies(name)) == 3, timeout=30, what="CNPs")  # noqa: B023
        else:
            wait_for(lambda: len(_gnps(admin, name)) == 3, timeout=30, what="GNPs")  # noqa: B023
        admin.delete_profile(name)
        wait_for(lambda: admin.get_profile(name) is None, timeout=30, what=f"{name} gone")  # noqa: B023
        if flavor == "NetworkPolicy":
            kept = admin.policies(namespace)
            assert set(kept) == BUILTINS, sorted(kept)
        elif flavor == "CalicoNetworkPolicy":
            kept = admin.calico_policies(namespace)
            assert set(kept) == CALICO_BUILTINS, sorted(kept)
        elif flavor == "ClusterNetworkPolicy":
            kept = {
                p: admin.get(f"{CNPS}/{cluster_policy_name(name, p.removeprefix('dpo-'))}")
                for p in BUILTINS
            }
            assert all(kept.values()), kept
        else:
            kept = {
                f"default.{p}": admin.get(
                    f"{GNPS}/{calico_policy_name(name, p.removeprefix('dpo-'))}"
                )
                for p in BUILTINS
            }
            assert all(kept.values()), kept
        assert _unmanaged(kept)

    # Finally the first profile goes with Delete: its policies go with it.
    admin.delete_profile(tag)
    wait_for(lambda: admin.get_profile(tag) is None, timeout=30, what=f"{tag} gone")
    assert _managed(admin, ns_in) == set()
    assert set(admin.policies(ns_conflict)) == {"dpo-allow-dns"}  # the foreign one stays

    # At least one full resync (lists of everything) has happened meanwhile.
    wait_for(
        lambda: operator.metric("dpo_reconcile_duration_seconds_count", trigger="resync") >= 1,
        timeout=30,
        what="a full resync",
    )
    return tag


# -- what the audit log says ---------------------------------------------------------------


def _operator_events(plane: ControlPlane) -> list[dict[str, Any]]:
    """The operator's requests, one audit event each (a watch still open has no ResponseComplete
    event yet, only ResponseStarted)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in plane.audit_events():
        if event.get("user", {}).get("username") == USER and event.get("userAgent") != TEST_AGENT:
            latest[event["auditID"]] = event  # ResponseComplete comes after ResponseStarted
    return list(latest.values())


def _permission(event: dict[str, Any]) -> tuple[str, str, str, str] | None:
    """(apiGroup, resource[/subresource], verb, namespace) of a resource request."""
    ref = event.get("objectRef")
    if not ref or not ref.get("resource"):
        return None  # discovery (/api, /apis, ...)
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return ref.get("apiGroup", ""), resource, event["verb"], ref.get("namespace", "")


def _granted() -> set[tuple[str, str, str, str]]:
    """What manifests/rbac grants, as (apiGroup, resource, verb, namespace or "" = any)."""
    granted = set()
    for path in sorted((MANIFESTS / "rbac").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in ("ClusterRole", "Role"):
                continue
            namespace = doc["metadata"].get("namespace", "") if doc["kind"] == "Role" else ""
            for rule in doc["rules"]:
                assert "resourceNames" not in rule
                assert "nonResourceURLs" not in rule
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.add((group, resource, verb, namespace))
    return granted


def test_operator_converges_with_zero_403s(
    plane: ControlPlane, operator: OperatorProcess, scenario: str
) -> None:
    events = _operator_events(plane)
    assert len(events) > 50, "the audit log should hold the operator's requests"
    forbidden = [e for e in events if e.get("responseStatus", {}).get("code") == 403]
    assert forbidden == [], [(e["verb"], e["requestURI"]) for e in forbidden]
    unauthenticated = [e["requestURI"] for e in events if e["responseStatus"]["code"] == 401]
    assert unauthenticated == []
    log = operator.log_path.read_text(errors="replace")
    suspicious = [
        line
        for line in log.splitlines()
        if re.search(r"\b403\b|forbidden|not enough permissions|unauthori[sz]ed", line, re.I)
    ]
    assert suspicious == [], "\n".join(suspicious)


def test_every_granted_permission_is_used(plane: ControlPlane, scenario: str) -> None:
    """Nothing in the ClusterRole/Role is there just in case: the scenario used it all."""
    used: set[tuple[str, str, str, str]] = set()
    for event in _operator_events(plane):
        permission = _permission(event)
        if permission is not None and event.get("responseStatus", {}).get("code", 0) < 400:
            used.add(permission)
    granted = _granted()
    covered = {
        (group, resource, verb, scope)
        for group, resource, verb, scope in granted
        if any(
            (u[0], u[1], u[2]) == (group, resource, verb) and (not scope or u[3] == scope)
            for u in used
        )
    }
    assert granted - covered == set(), f"granted but never used: {sorted(granted - covered)}"
    beyond = {
        u
        for u in used
        if not any(
            (g, r, v) == u[:3] and (not scope or scope == u[3]) for g, r, v, scope in granted
        )
    }
    assert beyond == set(), f"used without a rule (RBAC defaults?): {sorted(beyond)}"


# -- what the same token may not do ---------------------------------------------------------

FORBIDDEN = [
    # (group, resource, verb, namespace)
    ("", "namespaces", "patch", ""),
    ("", "namespaces", "update", ""),
    ("", "namespaces", "create", ""),
    ("", "namespaces", "delete", ""),
    ("", "secrets", "get", "default"),
    ("", "secrets", "list", ""),
    ("", "secrets", "watch", ""),
    ("", "configmaps", "create", "default"),
    ("", "configmaps", "get", "kube-system"),
    ("", "pods", "create", "default"),
    ("", "pods", "list", ""),
    ("", "pods/exec", "create", "default"),
    ("", "serviceaccounts/token", "create", NAMESPACE),
    ("", "events", "create", "kube-system"),
    ("", "events", "list", "default"),
    ("apps", "deployments", "create", NAMESPACE),
    ("apps", "deployments", "patch", NAMESPACE),
    ("rbac.authorization.k8s.io", "roles", "create", "default"),
    ("rbac.authorization.k8s.io", "rolebindings", "create", "default"),
    ("rbac.authorization.k8s.io", "clusterroles", "create", ""),
    ("rbac.authorization.k8s.io", "clusterroles", "escalate", ""),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create", ""),
    ("rbac.authorization.k8s.io", "clusterroles", "bind", ""),
    ("apiextensions.k8s.io", "customresourcedefinitions", "create", ""),
    ("apiextensions.k8s.io", "customresourcedefinitions", "update", ""),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "delete", ""),
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "delete", ""),
    ("defaultpolicy.dev", "defaultpolicyprofiles", "create", ""),
    ("defaultpolicy.dev", "defaultpolicyprofiles", "delete", ""),
    ("defaultpolicy.dev", "defaultpolicyprofiles", "update", ""),
    ("crd.projectcalico.org", "networksets", "create", "default"),
    ("crd.projectcalico.org", "tiers", "create", ""),
    # Leases: only in dpo-system, only get/create/update (kube-node-lease: node heartbeats).
    ("coordination.k8s.io", "leases", "update", "kube-node-lease"),
    ("coordination.k8s.io", "leases", "create", "default"),
    ("coordination.k8s.io", "leases", "get", "kube-system"),
    ("coordination.k8s.io", "leases", "delete", NAMESPACE),
    ("coordination.k8s.io", "leases", "patch", NAMESPACE),
    ("coordination.k8s.io", "leases", "list", ""),
    ("coordination.k8s.io", "leases", "watch", NAMESPACE),
    ("", "users", "impersonate", ""),
    ("", "serviceaccounts", "impersonate", ""),
    ("*", "*", "*", ""),
]


def _can(sa: Api, group: str, resource: str, verb: str, namespace: str) -> bool:
    name, _, sub = resource.partition("/")
    attributes = {"group": group, "resource": name, "verb": verb, "namespace": namespace}
    if sub:
        attributes["subresource"] = sub
    review = sa.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attributes},
        },
        headers={"User-Agent": TEST_AGENT},
    )
    return bool(review["status"]["allowed"])


@pytest.mark.parametrize(("group", "resource", "verb", "namespace"), FORBIDDEN)
def test_token_is_denied(
    identity: Identity, group: str, resource: str, verb: str, namespace: str
) -> None:
    assert not _can(identity.api, group, resource, verb, namespace)


def test_access_review_sees_what_is_granted(identity: Identity) -> None:
    """The control for the negative checks: the same reviews do say yes where RBAC grants."""
    for group, resource, verb, namespace in sorted(_granted()):
        assert _can(identity.api, group, resource, verb, namespace), (group, resource, verb)


def test_real_forbidden_requests_are_refused_and_audited(
    plane: ControlPlane, admin: Api, identity: Identity
) -> None:
    """Real requests, not just reviews; and proof the audit log does record a 403."""
    namespace_patch = {"metadata": {"labels": {"defaultpolicy.dev/exempt": "true"}}}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "dpo-escalation"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "dpo-test", "namespace": "default"},
    }
    attempts: list[tuple[str, str, Any, str]] = [
        ("PATCH", "/api/v1/namespaces/default", namespace_patch, "application/merge-patch+json"),
        ("GET", "/api/v1/secrets", None, "application/json"),
        ("GET", "/api/v1/namespaces/kube-system/secrets", None, "application/json"),
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", role, "application/json"),
        ("POST", "/api/v1/namespaces/default/configmaps", configmap, "application/json"),
        ("GET", "/api/v1/pods", None, "application/json"),
    ]
    for method, path, body, content_type in attempts:
        with pytest.raises(ApiStatus) as refused:
            identity.api.request(
                method, path, body, content_type, headers={"User-Agent": TEST_AGENT}
            )
        assert refused.value.code == 403, (method, path)
    assert admin.get("/apis/rbac.authorization.k8s.io/v1/clusterroles/dpo-escalation") is None

    def audited() -> int:
        return sum(
            1
            for e in plane.audit_events()
            if e.get("user", {}).get("username") == USER
            and e.get("userAgent") == TEST_AGENT
            and e.get("stage") == "ResponseComplete"
            and e.get("responseStatus", {}).get("code") == 403
        )

    wait_for(lambda: audited() >= len(attempts), timeout=10, what="the 403s in the audit log")
