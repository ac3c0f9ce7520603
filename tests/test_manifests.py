"""``manifests/``: the kustomize tree people install the operator with.

The static checks read the YAML (no cluster needed); the end-to-end ones run the real
``kubectl apply -k`` against the local control plane: the default on a plain cluster (no
Prometheus Operator), the monitoring overlay on one with the Prometheus Operator's CRDs, taken
from its Go module at a pinned version, so the ServiceMonitor and PrometheusRule are checked by
their real schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpo_dev.cluster import ControlPlane

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
NAMESPACE = "dpo-system"
ACCOUNT = "default-policy-operator"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"


def documents(*parts: str) -> list[dict[str, Any]]:
    """Every YAML document in the files of ``manifests/<parts>`` (a file or a directory)."""
    path = MANIFESTS.joinpath(*parts)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [
        doc
        for file in files
        if file.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(file.read_text())
        if doc
    ]


def one(kind: str, *parts: str) -> dict[str, Any]:
    found = [d for d in documents(*parts) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in manifests/{'/'.join(parts)}"
    return found[0]


def kustomization(*parts: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        MANIFESTS.joinpath(*parts, "kustomization.yaml").read_text()
    )
    return data


# -- the tree -------------------------------------------------------------------------------


def test_top_level_kustomization_composes_the_install() -> None:
    """The default installs on a plain cluster: nothing that needs another project's CRDs."""
    resources = kustomization()["resources"]
    assert resources == ["crd", "rbac", "deploy", "admission"]
    for entry in resources:
        assert (MANIFESTS / entry / "kustomization.yaml").is_file(), entry


def test_monitoring_is_an_opt_in_overlay() -> None:
    """The overlay is the default's parts plus monitoring/ (it cannot name ``../..``)."""
    default = [f"../../{entry}" for entry in kustomization()["resources"]]
    assert kustomization("overlays", "monitoring")["resources"] == [*default, "../../monitoring"]


def test_reports_is_an_opt_in_component() -> None:
    """``overlays/reports`` is the default plus the ``reports`` component; the default's
    ClusterRole stays without any report kind (see ``test_cluster_role_is_least_privilege``)."""
    default = [f"../../{entry}" for entry in kustomization()["resources"]]
    overlay = kustomization("overlays", "reports")
    assert overlay["resources"] == default
    assert overlay["components"] == ["../../reports"]
    component = kustomization("reports")
    assert component["kind"] == "Component"
    (patch,) = component["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": ACCOUNT}
    assert yaml.safe_load(patch["patch"]) == [
        {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--audit-reports"}
    ]


def test_reports_role_grants_only_the_report_kinds() -> None:
    role = one("ClusterRole", "reports")
    assert role["metadata"]["name"] == f"{ACCOUNT}-reports"
    assert role["rules"] == [
        {"apiGroups": ["openreports.io"], "resources": ["reports", "clusterreports"],
         "verbs": ["list", "create", "update", "delete"]},
        {"apiGroups": ["wgpolicyk8s.io"], "resources": ["policyreports", "clusterpolicyreports"],
         "verbs": ["list", "create", "update", "delete"]},
    ]  # fmt: skip
    binding = one("ClusterRoleBinding", "reports")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}
    ]


def test_every_kustomization_lists_exactly_its_files() -> None:
    for directory in ("crd", "rbac", "deploy", "admission", "reports"):
        listed = set(kustomization(directory)["resources"])
        present = {p.name for p in (MANIFESTS / directory).glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, directory


# -- RBAC -----------------------------------------------------------------------------------


def test_cluster_role_is_least_privilege() -> None:
    role = one("ClusterRole", "rbac")
    assert role["metadata"]["name"] == ACCOUNT
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
            assert not any("*" in item for item in rule[field]), f"wildcard in {rule}"
        assert "nonResourceURLs" not in rule
        assert "secrets" not in rule["resources"]
        assert "rbac.authorization.k8s.io" not in rule["apiGroups"]
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        if "" in rule["apiGroups"] and "namespaces" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, "no writes to namespaces"
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert granted == {
        ("", "namespaces"),
        ("networking.k8s.io", "networkpolicies"),
        ("crd.projectcalico.org", "networkpolicies"),
        ("crd.projectcalico.org", "globalnetworkpolicies"),
        ("crd.projectcalico.org", "stagedkubernetesnetworkpolicies"),
        ("crd.projectcalico.org", "stagednetworkpolicies"),
        ("crd.projectcalico.org", "stagedglobalnetworkpolicies"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
        ("defaultpolicy.dev", "defaultpolicyprofiles"),
        ("defaultpolicy.dev", "defaultpolicyprofiles/status"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    }


def test_bindings_name_the_shipped_service_account() -> None:
    account = one("ServiceAccount", "rbac")
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == (ACCOUNT, NAMESPACE)
    subject = {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}
    binding = one("ClusterRoleBinding", "rbac")
    assert binding["subjects"] == [subject]
    assert binding["roleRef"]["name"] == one("ClusterRole", "rbac")["metadata"]["name"]
    roles = {d["metadata"]["name"]: d for d in documents("rbac") if d["kind"] == "Role"}
    bindings = {d["metadata"]["name"]: d for d in documents("rbac") if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {f"{ACCOUNT}-events", f"{ACCOUNT}-leader-election"}
    for name, binding in bindings.items():
        assert binding["subjects"] == [subject]
        assert binding["roleRef"]["name"] == name
        assert binding["metadata"]["namespace"] == roles[name]["metadata"]["namespace"]
    events, leases = roles[f"{ACCOUNT}-events"], roles[f"{ACCOUNT}-leader-election"]
    assert events["metadata"]["namespace"] == "default"
    assert events["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
    ]
    assert leases["metadata"]["namespace"] == NAMESPACE
    assert leases["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "create", "update"]}
    ]  # fmt: skip


# -- the Deployment -------------------------------------------------------------------------


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    namespace = one("Namespace", "deploy")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment() -> None:
    deployment = one("Deployment", "deploy")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one("ServiceAccount", "rbac")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/default-policy-operator/default-policy-operator:0.1.0"
    assert container["args"] == [
        "--namespace=$(POD_NAMESPACE)",
        "--log-format=json",
        "--leader-elect",
    ]
    assert container["env"] == [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert set(container["resources"]) == {"requests", "limits"}
    for section in container["resources"].values():
        assert set(section) == {"cpu", "memory"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert isinstance(security["runAsUser"], int)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_dpo_run_accepts_the_deployment_args() -> None:
    from default_policy_operator.cli.main import build_parser

    container = one("Deployment", "deploy")["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace("$(POD_NAMESPACE)", NAMESPACE) for a in container["args"]]
    parsed = build_parser().parse_args(["run", *args])
    assert parsed.namespace == NAMESPACE
    assert parsed.log_format == "json"
    assert parsed.leader_elect is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (parsed.metrics_port, parsed.health_port) == (ports["metrics"], ports["health"])


def test_metrics_service_selects_the_operator_pod() -> None:
    service = one("Service", "deploy")
    pod_labels = one("Deployment", "deploy")["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == ACCOUNT
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]


# -- applying it ----------------------------------------------------------------------------


def _prometheus_operator_crds(kinds: set[str]) -> list[Path]:
    """The Prometheus Operator's own CRD files for ``kinds``, from its pinned Go module."""
    with tempfile.TemporaryDirectory(prefix="dpo-promop-") as tmp:
        env = {**os.environ, "GOWORK": "off", "GOFLAGS": "-mod=mod"}
        subprocess.run(["go", "mod", "init", "x"], cwd=tmp, env=env, capture_output=True)
        result = subprocess.run(
            ["go", "mod", "download", "-json", f"{PROMETHEUS_OPERATOR_MODULE}@"
             f"{PROMETHEUS_OPERATOR_VERSION}"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise RuntimeError(info.get("Error") or result.stderr[-2000:])
    crd_dir = Path(info["Dir"]) / "example" / "prometheus-operator-crd"
    return [crd_dir / f"monitoring.coreos.com_{kind.lower()}s.yaml" for kind in sorted(kinds)]


def _minimal_crd(kind: str) -> dict[str, Any]:
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def _install_monitoring_crds(plane: ControlPlane, kinds: set[str]) -> None:
    try:
        files = _prometheus_operator_crds(kinds)
        args = [arg for path in files for arg in ("-f", str(path))]
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        warnings.warn(
            f"Prometheus Operator CRDs unavailable ({exc}); using schema-less stand-ins",
            stacklevel=2,
        )
        text = yaml.safe_dump_all([_minimal_crd(kind) for kind in sorted(kinds)])
        plane.kubectl("apply", "--server-side", "-f", "-", input=text)
    else:
        plane.kubectl("apply", "--server-side", "--force-conflicts", *args)
    for kind in kinds:
        plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{kind.lower()}s.monitoring.coreos.com",
        )  # fmt: skip


MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
OVERLAY = MANIFESTS / "overlays" / "monitoring"


def _built(plane: ControlPlane, path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(plane.kubectl("kustomize", str(path)).stdout) if d]


def _has_monitoring_api(plane: ControlPlane) -> bool:
    groups = json.loads(plane.kubectl("get", "--raw", "/apis").stdout)["groups"]
    return any(group["name"] == "monitoring.coreos.com" for group in groups)


def _apply_and_check(plane: ControlPlane, path: Path, objects: list[dict[str, Any]]) -> None:
    """``kubectl apply -k``; then every object is live, a second apply and a diff are no-ops."""
    applied = plane.kubectl("apply", "-k", str(path))
    assert "PodSecurity" not in applied.stderr, applied.stderr  # warn=restricted is quiet
    live = plane.kubectl("get", "-k", str(path), "-o", "json").stdout
    items = json.loads(live)["items"]
    assert sorted((i["kind"], i["metadata"]["name"]) for i in items) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in objects
    )
    again = plane.kubectl("apply", "-k", str(path))
    changed = [line for line in again.stdout.splitlines() if not line.endswith(" unchanged")]
    assert changed == [], again.stdout
    diff = plane.kubectl("diff", "-k", str(path), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr


@pytest.mark.e2e
def test_default_installs_on_a_cluster_without_the_prometheus_operator(
    control_plane: ControlPlane,
) -> None:
    assert not _has_monitoring_api(control_plane), "precondition: no monitoring.coreos.com CRDs"
    objects = _built(control_plane, MANIFESTS)
    kinds = {d["kind"] for d in objects}
    assert {"CustomResourceDefinition", "ClusterRole", "Deployment", "Service"} <= kinds
    assert "ValidatingAdmissionPolicy" in kinds
    assert not any(d["apiVersion"].startswith("monitoring.coreos.com/") for d in objects)
    _apply_and_check(control_plane, MANIFESTS, objects)


@pytest.fixture
def monitoring_crds(control_plane: ControlPlane) -> Iterator[None]:
    """The Prometheus Operator's CRDs for one test; removed after it, so that the session's
    other tests still see a plain cluster (the apiserver itself finalizes CRD deletion)."""
    _install_monitoring_crds(control_plane, MONITORING_KINDS)
    yield
    names = [f"crd/{kind.lower()}s.monitoring.coreos.com" for kind in sorted(MONITORING_KINDS)]
    control_plane.kubectl("delete", "--wait=true", "--timeout=120s", *names)


@pytest.mark.e2e
@pytest.mark.usefixtures("monitoring_crds")
def test_monitoring_overlay_installs_with_the_prometheus_operator_crds(
    control_plane: ControlPlane,
) -> None:
    objects = _built(control_plane, OVERLAY)
    default = {(d["kind"], d["metadata"]["name"]) for d in _built(control_plane, MANIFESTS)}
    added = {(d["kind"], d["metadata"]["name"]) for d in objects} - default
    assert added == {
        ("ServiceMonitor", ACCOUNT),
        ("PrometheusRule", ACCOUNT),
        ("ConfigMap", f"{ACCOUNT}-dashboard"),
    }
    _apply_and_check(control_plane, OVERLAY, objects)
