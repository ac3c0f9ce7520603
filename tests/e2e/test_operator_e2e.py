"""End-to-end: the operator (`dpo run`) against a real kube-apiserver + etcd.

Every test labels its own namespaces ``dpo-test=<unique>`` and selects on that label, so tests
sharing the session's operator and cluster never see each other's namespaces.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from default_policy_operator.core.labels import FINALIZER
from default_policy_operator.core.objects import calico_policy_name
from tests.calico_selector import evaluate
from tests.netpol import Pod, allowed
from tests.support import MANAGED, Api, ApiStatus, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e

BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}


def selector(tag: str, **extra: str) -> dict[str, Any]:
    return {"matchLabels": {"dpo-test": tag, **extra}}


def managed_names(api: Api, namespace: str) -> set[str]:
    return set(api.policies(namespace, MANAGED))


def wait_names(api: Api, namespace: str, names: set[str], timeout: float = 20) -> None:
    wait_for(
        lambda: managed_names(api, namespace) == names,
        timeout=timeout,
        what=f"{namespace} to hold exactly {sorted(names)}",
    )


def wait_status(
    api: Api, name: str, timeout: float = 20, *, ready: bool = False, **expected: Any
) -> dict[str, Any]:
    """The profile once its status shows ``expected`` (and, with ``ready``, says Ready in the
    same write: counts can be final in a status that still says Reconciling)."""

    def probe() -> dict[str, Any] | None:
        profile = api.get_profile(name)
        status = (profile or {}).get("status") or {}
        if ready and condition(profile, "Ready").get("status") != "True":
            return None
        return profile if all(status.get(k) == v for k, v in expected.items()) else None

    result: dict[str, Any] = wait_for(
        probe, timeout=timeout, what=f"status of {name} to show {expected}"
    )
    return result


@pytest.fixture
def tag(unique_name: str, api: Api, operator_process: OperatorProcess) -> str:
    """A unique label value; the operator is running by the time the test starts."""
    return unique_name


def test_the_operator_runs_on_uvloop(operator_process: OperatorProcess) -> None:
    assert "starting on uvloop's event loop" in operator_process.log_path.read_text()


def test_profile_covers_existing_matching_namespaces_only(api: Api, tag: str) -> None:
    labels = {"dpo-test": tag, "env": "prod"}
    api.namespace(f"{tag}-match", labels)
    api.namespace(f"{tag}-dev", {"dpo-test": tag, "env": "dev"})
    api.namespace(f"{tag}-sandbox-1", labels)
    api.namespace(f"{tag}-exempt", {**labels, "defaultpolicy.dev/exempt": "true"})
    api.label_namespace("kube-public", labels)
    try:
        api.profile(
            tag,
            {"namespaceSelector": selector(tag, env="prod"), "excludeNamespaces": [f"{tag}-sand*"]},
        )
        wait_names(api, f"{tag}-match", BUILTINS)
        profile = wait_status(api, tag, governedNamespaces=1, excludedNamespaces=3, ready=True)
        for namespace in (f"{tag}-dev", f"{tag}-sandbox-1", f"{tag}-exempt", "kube-public"):
            assert managed_names(api, namespace) == set(), namespace
        policy = api.policies(f"{tag}-match")["dpo-deny-all"]
        assert policy["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "default-policy-operator",
            "defaultpolicy.dev/profile": tag,
            "defaultpolicy.dev/policy": "deny-all",
        }
        assert policy["metadata"]["ownerReferences"][0]["uid"] == profile["metadata"]["uid"]
    finally:
        api.label_namespace("kube-public", {"dpo-test": None, "env": None})


def test_namespaces_created_or_labelled_in_and_out(api: Api, tag: str) -> None:
    api.profile(tag, {"namespaceSelector": selector(tag, env="prod")})
    name = f"{tag}-app"
    api.namespace(name, {"dpo-test": tag, "env": "prod"})
    wait_names(api, name, BUILTINS)
    api.label_namespace(name, {"env": "dev"})
    wait_names(api, name, set())
    api.label_namespace(name, {"env": "prod"})
    wait_names(api, name, BUILTINS)
    api.label_namespace(name, {"defaultpolicy.dev/exempt": "true"})
    wait_names(api, name, set())
    api.label_namespace(name, {"defaultpolicy.dev/exempt": None})
    wait_names(api, name, BUILTINS)
    api.patch_profile(tag, {"excludeNamespaces": [name]})
    wait_names(api, name, set())


def test_overlapping_profiles_priority_and_in_place_handover(api: Api, tag: str) -> None:
    name = f"{tag}-shared"
    api.namespace(name, {"dpo-test": tag})
    api.profile(f"{tag}-a", {"namespaceSelector": selector(tag), "priority": 10})
    api.profile(f"{tag}-b", {"namespaceSelector": selector(tag), "priority": 5})
    wait_for(
        lambda: {p["metadata"]["labels"]["defaultpolicy.dev/profile"]
                 for p in api.policies(name, MANAGED).values()} == {f"{tag}-a"},
        what="profile a to govern",
    )  # fmt: skip
    wait_status(api, f"{tag}-b", shadowedNamespaces=1, governedNamespaces=0)
    uids = {n: p["metadata"]["uid"] for n, p in api.policies(name, MANAGED).items()}
    api.patch_profile(f"{tag}-b", {"priority": 20})
    wait_for(
        lambda: {p["metadata"]["labels"]["defaultpolicy.dev/profile"]
                 for p in api.policies(name, MANAGED).values()} == {f"{tag}-b"},
        what="profile b to take over",
    )  # fmt: skip
    after = {n: p["metadata"]["uid"] for n, p in api.policies(name, MANAGED).items()}
    assert after == uids, "handover must update in place, never delete and re-create"
    wait_status(api, f"{tag}-a", shadowedNamespaces=1, governedNamespaces=0)


CUSTOM_MONITORING = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: monitoring
      ports:
        - port: 9090
"""


def test_editing_a_profile_updates_every_governed_namespace(api: Api, tag: str) -> None:
    names = [f"{tag}-{i}" for i in range(3)]
    for name in names:
        api.namespace(name, {"dpo-test": tag})
    api.profile(tag, {"namespaceSelector": selector(tag)})
    for name in names:
        wait_names(api, name, BUILTINS)
    api.patch_profile(
        tag,
        {
            "policies": {
                "denyAll": {"ingress": False},
                "allowDNS": {"ports": [{"protocol": "UDP", "port": 5353}]},
                "allowKubeSystem": {"ingress": True, "egress": True},
            },
            "customPolicies": [{"name": "allow-monitoring", "template": CUSTOM_MONITORING}],
        },
    )
    for name in names:
        wait_names(api, name, {*BUILTINS, "dpo-allow-monitoring"})

        def edited(namespace: str = name) -> bool:
            policies = api.policies(namespace)
            deny = policies["dpo-deny-all"]["spec"]["policyTypes"]
            dns = policies["dpo-allow-dns"]["spec"]["egress"][0]["ports"]
            kube_system = policies["dpo-allow-kube-system"]["spec"]["policyTypes"]
            # Ingress is no longer denied, so allow-kube-system keeps its egress half only.
            return (deny, kube_system) == (["Egress"], ["Egress"]) and dns == [
                {"protocol": "UDP", "port": 5353}
            ]

        wait_for(edited, what=f"{name} to carry the edited policies")
    api.patch(
        "/apis/defaultpolicy.dev/v1alpha1/defaultpolicyprofiles/" + tag,
        {"spec": {"customPolicies": None, "policies": {"allowKubeSystem": {"enabled": False}}}},
    )
    for name in names:
        wait_names(api, name, {"dpo-deny-all", "dpo-allow-dns"})


def test_calico_flavor_selects_exactly_the_governed_namespaces(api: Api, tag: str) -> None:
    api.namespace(f"{tag}-in", {"dpo-test": tag})
    api.namespace(f"{tag}-excluded", {"dpo-test": tag})
    api.namespace(f"{tag}-exempt", {"dpo-test": tag, "defaultpolicy.dev/exempt": "true"})
    api.namespace(f"{tag}-shadowed", {"dpo-test": tag, "tier": "gold"})
    api.namespace(f"{tag}-out", {"other": tag})
    api.profile(
        f"{tag}-gold",
        {"namespaceSelector": selector(tag, tier="gold"), "priority": 5,
         "policies": {"allowKubeSystem": {"enabled": False}, "allowDNS": {"enabled": False}}},
    )  # fmt: skip
    api.profile(
        tag,
        {
            "namespaceSelector": selector(tag),
            "flavor": "CalicoGlobalNetworkPolicy",
            "excludeNamespaces": [f"{tag}-excluded"],
        },
    )
    expected = {calico_policy_name(tag, p) for p in ("deny-all", "allow-dns", "allow-kube-system")}
    gnps = wait_for(lambda: api.gnps(tag) if set(api.gnps(tag)) == expected else None,
                    what="GlobalNetworkPolicies")  # fmt: skip
    deny = gnps[calico_policy_name(tag, "deny-all")]["spec"]
    assert deny["order"] == 2000
    assert deny["types"] == ["Ingress", "Egress"]
    assert gnps[calico_policy_name(tag, "allow-dns")]["spec"]["types"] == ["Egress"]

    def governed_by_selector() -> set[str]:
        spec = api.gnps(tag)[calico_policy_name(tag, "deny-all")]["spec"]
        namespaces = api.request("GET", "/api/v1/namespaces")["items"]
        return {
            ns["metadata"]["name"]
            for ns in namespaces
            if evaluate(
                spec["namespaceSelector"],
                {
                    **ns["metadata"].get("labels", {}),
                    "projectcalico.org/name": ns["metadata"]["name"],
                },
            )
        }

    wait_for(lambda: governed_by_selector() == {f"{tag}-in"}, what="selector == governed set")
    assert managed_names(api, f"{tag}-in") == set(), "Calico flavor writes no NetworkPolicy"
    api.patch_profile(tag, {"flavor": "NetworkPolicy"})
    wait_names(api, f"{tag}-in", BUILTINS)
    wait_for(lambda: api.gnps(tag) == {}, what="Calico objects removed after switching flavor")


def test_calico_order_can_be_set(api: Api, tag: str) -> None:
    api.profile(
        tag,
        {"namespaceSelector": selector(tag), "flavor": "CalicoGlobalNetworkPolicy",
         "calico": {"order": 2500}},
    )  # fmt: skip
    gnps = wait_for(lambda: api.gnps(tag), what="GlobalNetworkPolicies")
    assert {g["spec"]["order"] for g in gnps.values()} == {2500}


def test_audit_mode_writes_nothing_and_reports(api: Api, tag: str) -> None:
    for i in range(2):
        api.namespace(f"{tag}-{i}", {"dpo-test": tag})
    api.profile(tag, {"namespaceSelector": selector(tag), "mode": "Audit"})
    profile = wait_status(api, tag, governedNamespaces=2, driftedObjects=6)
    ready = condition(profile, "Ready")
    assert ready["reason"] == "Audited"
    assert "6 object(s) missing" in ready["message"]
    for i in range(2):
        assert managed_names(api, f"{tag}-{i}") == set()


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_deleting_a_profile(api: Api, tag: str, policy: str) -> None:
    name = f"{tag}-ns"
    api.namespace(name, {"dpo-test": tag})
    api.profile(tag, {"namespaceSelector": selector(tag), "deletionPolicy": policy})
    wait_names(api, name, BUILTINS)
    # kopf adds the finalizer on its own stream: a deletion before that would skip it
    wait_for(
        lambda: FINALIZER in (api.get_profile(tag) or {})["metadata"].get("finalizers", []),
        what="the finalizer",
    )
    api.delete_profile(tag)
    wait_for(lambda: api.get_profile(tag) is None, what="the profile to be gone")
    if policy == "Delete":
        assert set(api.policies(name)) == set()
    else:
        kept = api.policies(name)
        assert set(kept) == BUILTINS
        for body in kept.values():
            assert "app.kubernetes.io/managed-by" not in body["metadata"].get("labels", {})
            assert not body["metadata"].get("ownerReferences")


def test_foreign_object_in_a_managed_name_is_left_alone(api: Api, tag: str) -> None:
    name = f"{tag}-ns"
    api.namespace(name, {"dpo-test": tag})
    foreign = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "dpo-deny-all", "namespace": name, "labels": {"team": "mine"}},
        "spec": {"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"]},
    }
    created = api.create(api.policy_path(name, "")[:-1], foreign)
    api.profile(tag, {"namespaceSelector": selector(tag)})
    wait_names(api, name, {"dpo-allow-dns", "dpo-allow-kube-system"})
    profile = wait_status(api, tag, conflicts=1)
    degraded = condition(profile, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "Conflict"
    assert f"{name}/dpo-deny-all" in degraded["message"]
    live = api.get(api.policy_path(name, "dpo-deny-all"))
    assert live["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    wait_for(
        lambda: [e for e in api.events_for(tag) if e["reason"] == "Conflict"],
        what="a Conflict event",
    )


BAD_TEMPLATES = {
    "syntax": ("{% if %}", "syntax error"),
    "undefined": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {{ nothing }}",
                  "undefined"),
    "crb": ("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nspec: {}",
            "may only create networking.k8s.io/v1/NetworkPolicy"),
    "elsewhere": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n"
                  "  namespace: kube-system\nspec: {}", "renders into namespace 'kube-system'"),
    "two-docs": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n---\n"
                 "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}",
                 "exactly one document"),
    "escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
    # Issue 10.1: YAML that parses but is no NetworkPolicy: refused by the trial, field named
    "port-int": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                 "spec: {egress: [{ports: [53]}]}",
                 "spec.egress[0].ports[0]: must be a mapping, not an integer"),
    "ingress-word": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                     "spec: {ingress: allow}", "spec.ingress: must be a list, not a string"),
    "date": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
             "spec: {podSelector: {matchLabels: {since: 2024-01-01}}}",
             "must be a string, not a date"),
    "binary": ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
               "spec: {podSelector: {matchLabels: {k: !!binary aGk=}}}", "not a bytes"),
}  # fmt: skip


def test_bad_templates_degrade_the_profile_and_keep_the_last_good_objects(
    api: Api, tag: str
) -> None:
    name = f"{tag}-ns"
    api.namespace(name, {"dpo-test": tag})
    api.profile(
        tag,
        {"namespaceSelector": selector(tag),
         "customPolicies": [{"name": "allow-monitoring", "template": CUSTOM_MONITORING}]},
    )  # fmt: skip
    wait_names(api, name, {*BUILTINS, "dpo-allow-monitoring"})
    good = {n: p["metadata"]["resourceVersion"] for n, p in api.policies(name).items()}
    api.profile(f"{tag}-other", {"namespaceSelector": selector(f"{tag}-other")})
    for case, (template, message) in BAD_TEMPLATES.items():
        api.patch_profile(
            tag,
            {"customPolicies": [{"name": "allow-monitoring", "template": template}],
             "policies": {"allowKubeSystem": {"enabled": False}}},
        )  # fmt: skip

        def degraded(expected: str = message) -> dict[str, Any] | None:
            found = condition(api.get_profile(tag), "Degraded")
            ok = found.get("status") == "True" and expected in found.get("message", "")
            return found if ok else None

        found = wait_for(degraded, what=f"Degraded for {case}")
        assert "allow-monitoring" in found["message"], case
        now = {n: p["metadata"]["resourceVersion"] for n, p in api.policies(name).items()}
        assert now == good, f"{case}: the last good objects must stay untouched"
        # Another profile keeps working while this one is broken.
        other = f"{tag}-o-{case}"
        api.namespace(other, {"dpo-test": f"{tag}-other"})
        wait_names(api, other, BUILTINS)


def test_namespace_data_cannot_inject_yaml(api: Api, tag: str) -> None:
    template = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec:\n  podSelector:\n"
        "    matchLabels:\n      team: {{ namespace.annotations.team }}\n  policyTypes: [Ingress]\n"
    )
    name = f"{tag}-ns"
    payload = "x\nkind: ClusterRoleBinding\nmetadata: {namespace: kube-system}"
    api.namespace(name, {"dpo-test": tag}, team=payload)
    api.profile(
        tag,
        {"namespaceSelector": selector(tag),
         "customPolicies": [{"name": "team", "template": template}]},
    )  # fmt: skip
    wait_names(api, name, BUILTINS)
    # The payload stayed one label *value* (which validation then refuses, naming the field,
    # before anything is written): it never became YAML structure, so no other kind or
    # namespace was ever targeted.
    found = wait_for(
        lambda: (
            (c := condition(api.get_profile(tag), "Degraded")).get("reason") == "RenderError" and c
        ),
        what="the refused render to be reported",
    )
    assert "policy team: invalid object: spec.podSelector.matchLabels['team']" in found["message"]
    assert "is not a valid label value" in found["message"]


def test_default_policies_mean_dns_and_kube_system_only(api: Api, tag: str) -> None:
    governed, other = f"{tag}-gov", f"{tag}-other"
    api.namespace(governed, {"dpo-test": tag})
    api.namespace(other, {"unrelated": tag})
    api.profile(tag, {"namespaceSelector": selector(tag)})
    wait_names(api, governed, BUILTINS)
    policies = [p for ns in (governed, other, "kube-system") for p in api.policies(ns).values()]
    labels = {
        ns["metadata"]["name"]: ns["metadata"].get("labels", {})
        for ns in api.request("GET", "/api/v1/namespaces")["items"]
    }
    app = Pod(governed, {"app": "web"})
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    system = Pod("kube-system", {"component": "metrics-server"})
    neighbour = Pod(other, {"app": "db"})
    sibling = Pod(governed, {"app": "worker"})
    assert allowed(policies, app, dns, "UDP", 53, labels)
    assert allowed(policies, app, dns, "TCP", 53, labels)
    assert not allowed(policies, app, dns, "TCP", 80, labels)
    assert not allowed(policies, app, system, "UDP", 53, labels)
    assert not allowed(policies, app, neighbour, "TCP", 5432, labels)
    assert not allowed(policies, app, sibling, "TCP", 8080, labels)
    assert allowed(policies, system, app, "TCP", 8080, labels)
    assert not allowed(policies, neighbour, app, "TCP", 8080, labels)
    assert allowed(policies, neighbour, Pod(other, {}), "TCP", 8080, labels)
    assert allowed(policies, neighbour, system, "TCP", 443, labels)


def test_status_stays_small_with_a_thousand_namespaces(api: Api, tag: str) -> None:
    count = 1000
    for i in range(count):
        api.namespace(f"{tag}-{i:04d}", {"dpo-test": tag})
    api.profile(tag, {"namespaceSelector": selector(tag)})
    profile = wait_status(api, tag, timeout=300, governedNamespaces=count, managedObjects=3 * count)
    wait_for(lambda: condition(api.get_profile(tag), "Ready").get("status") == "True",
             timeout=120, what="Ready")  # fmt: skip
    assert len(json.dumps(profile["status"])) < 2048
    for i in (0, count // 2, count - 1):
        assert managed_names(api, f"{tag}-{i:04d}") == BUILTINS


def test_api_rejects_invalid_profiles_statically(api: Api, tag: str) -> None:
    cases = [
        {"mode": "Sideways"},
        {"flavor": "Iptables"},
        {"priority": 10_000_000},
        {"customPolicies": [{"name": "deny-all", "template": "x"}]},
        {"customPolicies": [{"name": "Bad_Name", "template": "x"}]},
        {
            "flavor": "CalicoGlobalNetworkPolicy",
            "policies": {"allowSameNamespace": {"enabled": True}},
        },
        {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
    ]
    for spec in cases:
        with pytest.raises(ApiStatus) as caught:
            api.profile(f"{tag}-bad", spec)
        assert caught.value.code == 422, spec


def test_ready_is_never_reported_before_the_policies_exist(api: Api, tag: str) -> None:
    """Found by the packet tests: a new profile said Ready with ``managedObjects: 0`` while its
    namespaces still waited to be planned. Every status seen on the way must be honest."""
    names = [f"{tag}-r{i}" for i in range(30)]
    for name in names:
        api.namespace(name, {"dpo-test": tag})
    api.profile(tag, {"namespaceSelector": selector(tag)})
    seen: list[dict[str, Any]] = []

    def converged() -> bool:
        status = (api.get_profile(tag) or {}).get("status") or {}
        seen.append(status)
        return status.get("managedObjects") == 3 * len(names)

    wait_for(converged, timeout=60, interval=0.02, what="every namespace covered")
    early = [
        s
        for s in seen
        if condition({"status": s}, "Ready").get("status") == "True"
        and s.get("managedObjects", 0) < 3 * s.get("governedNamespaces", 0)
    ]
    assert early == [], early[0]
    wait_for(
        lambda: condition(api.get_profile(tag), "Ready").get("status") == "True",
        what="Ready once covered",
    )
