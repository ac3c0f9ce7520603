"""``charts/default-policy-operator``: the Helm chart, checked by Helm itself and the apiserver.

Helm is built from its Go module (``dpo_dev.cluster.ensure_helm``, run by ``make binaries``),
never assumed present. The offline tests lint, render and package the chart and compare what it
renders with ``kubectl kustomize manifests/`` object by object; the end-to-end ones have the
real apiserver validate the rendered objects, admit the pod under the ``restricted`` Pod
Security Standard, and take ``helm install`` and ``helm upgrade`` on a control plane of their
own (the session's shared one has the kustomize install's objects, which Helm would refuse to
adopt).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpo_dev.cluster import ControlPlane, binary_paths, ensure_helm
from tests.support import Api, ApiStatus

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "default-policy-operator"
MANIFESTS = REPO / "manifests"
NAMESPACE = "dpo-system"
CRD = "CustomResourceDefinition"
CRD_FILE = "defaultpolicy.dev_defaultpolicyprofiles.yaml"
MONITORING_VALUES = (
    "serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
)
#: Helm's standard labels, which the chart adds to every object's metadata and manifests/ does
#: not: the only difference allowed between the two (never in selectors or pod templates).
HELM_LABELS = frozenset(
    {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
     "app.kubernetes.io/version"}
)  # fmt: skip
#: Copies the chart must carry (Helm reads nothing outside the chart directory), kept
#: byte-identical with their source in manifests/ by ``test_chart_copies_are_identical``.
COPIES = {
    f"crds/{CRD_FILE}": f"crd/{CRD_FILE}",
    "files/prometheusrule.yaml": "monitoring/prometheusrule.yaml",
    "files/grafana-dashboard.json": "monitoring/grafana-dashboard.json",
}

Key = tuple[str, str, str]


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Helm's binary and private cache/config/data homes (nothing written to ~)."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "DPO_HELM": str(ensure_helm()),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [env["DPO_HELM"], *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def template(env: dict[str, str], *values: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    args = [arg for value in values for arg in ("--set", value)]
    rendered = helm(env, "template", "dpo", str(CHART), "--namespace", namespace, *args).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def by_key(objects: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    out = {}
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in out, f"{key} rendered twice"
        out[key] = obj
    return out


def kustomized(path: Path) -> dict[Key, dict[str, Any]]:
    built = subprocess.run(
        [str(binary_paths().kubectl), "kustomize", str(path)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return by_key([d for d in yaml.safe_load_all(built) if d])


def without_helm_labels(obj: dict[str, Any]) -> dict[str, Any]:
    labels = obj["metadata"].get("labels") or {}
    assert labels.keys() >= HELM_LABELS, f"{obj['kind']} {obj['metadata']['name']}: {labels}"
    stripped = {k: v for k, v in labels.items() if k not in HELM_LABELS}
    return {**obj, "metadata": {**obj["metadata"], "labels": stripped}}


def assert_same_objects(helm_objects: dict[Key, Any], kustomize_objects: dict[Key, Any]) -> None:
    # Helm installs into a namespace it is given (--create-namespace); the chart has none.
    expected = {k: v for k, v in kustomize_objects.items() if k[0] != "Namespace"}
    assert sorted(helm_objects) == sorted(expected)
    for key, obj in helm_objects.items():
        assert without_helm_labels(obj) == expected[key], key


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in objects if d["kind"] == "Deployment"]
    return found


# -- offline --------------------------------------------------------------------------------


@pytest.mark.parametrize(("in_chart", "in_manifests"), COPIES.items())
def test_chart_copies_are_identical(in_chart: str, in_manifests: str) -> None:
    """One source of truth, two places: edit manifests/, then ``cp`` it into the chart."""
    source, copy = MANIFESTS / in_manifests, CHART / in_chart
    assert copy.read_bytes() == source.read_bytes(), f"run: cp {source} {copy}"


def test_chart_has_every_crd_of_manifests() -> None:
    crds = {p.name for p in (MANIFESTS / "crd").glob("*.yaml")} - {"kustomization.yaml"}
    assert {p.name for p in (CHART / "crds").iterdir()} == crds


def test_lint_strict(helm_env: dict[str, str]) -> None:
    helm(helm_env, "lint", "--strict", str(CHART))
    monitoring = [arg for value in MONITORING_VALUES for arg in ("--set", value)]
    helm(helm_env, "lint", "--strict", str(CHART), *monitoring)
    helm(helm_env, "lint", "--strict", str(CHART), "--set", "reports.enabled=true")


def test_default_values_render_what_kustomize_builds(helm_env: dict[str, str]) -> None:
    args = ("template", "dpo", str(CHART), "--namespace", NAMESPACE, "--include-crds")
    rendered = by_key([d for d in yaml.safe_load_all(helm(helm_env, *args).stdout) if d])
    expected = kustomized(MANIFESTS)
    # crds/ is installed as it is (never templated): the very objects of manifests/crd.
    crds = sorted(key for key in expected if key[0] == CRD)
    assert [rendered.pop(key) for key in crds] == [expected.pop(key) for key in crds]
    assert_same_objects(rendered, expected)


def test_monitoring_values_render_what_the_monitoring_overlay_builds(
    helm_env: dict[str, str],
) -> None:
    rendered = by_key(template(helm_env, *MONITORING_VALUES))
    expected = kustomized(MANIFESTS / "overlays" / "monitoring")
    assert_same_objects(rendered, {k: v for k, v in expected.items() if k[0] != CRD})
    dashboard = rendered[("ConfigMap", NAMESPACE, "default-policy-operator-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_reports_value_renders_what_the_reports_overlay_builds(
    helm_env: dict[str, str],
) -> None:
    rendered = by_key(template(helm_env, "reports.enabled=true"))
    expected = kustomized(MANIFESTS / "overlays" / "reports")
    assert_same_objects(rendered, {k: v for k, v in expected.items() if k[0] != CRD})
    (container,) = deployment(list(rendered.values()))["spec"]["template"]["spec"]["containers"]
    assert container["args"][-1] == "--audit-reports"


def test_values_reach_the_objects(helm_env: dict[str, str]) -> None:
    objects = template(
        helm_env,
        "image.tag=1.2.3",
        "replicas=2",
        "operator.workers=8",
        "operator.resyncPeriod=120",
        "operator.watchTimeout=30",
        "operator.handoverSettle=0",
        "operator.logFormat=text",
        "operator.calicoApiVersion=projectcalico.org/v3",
        "commonLabels.team=platform",
        "podAnnotations.example\\.com/note=hi",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "admissionPolicies.enabled=false",
    )
    spec = deployment(objects)["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert spec["replicas"] == 2
    assert container["image"].endswith(":1.2.3")
    assert container["args"] == [
        "--namespace=$(POD_NAMESPACE)", "--log-format=text", "--resync-period=120",
        "--workers=8", "--handover-settle=0", "--watch-timeout=30",
        "--calico-api-version=projectcalico.org/v3",
        "--leader-elect",
    ]  # fmt: skip
    assert spec["template"]["metadata"]["annotations"] == {"example.com/note": "hi"}
    assert spec["template"]["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert all(d["metadata"]["labels"]["team"] == "platform" for d in objects)
    assert "ValidatingAdmissionPolicy" not in {d["kind"] for d in objects}
    (role,) = [d for d in objects if d["kind"] == "ClusterRole"]
    groups = {g for rule in role["rules"] for g in rule["apiGroups"]}
    assert "projectcalico.org" in groups
    assert "crd.projectcalico.org" not in groups


def test_dpo_run_accepts_the_rendered_args(helm_env: dict[str, str]) -> None:
    from default_policy_operator.cli.main import build_parser

    objects = template(helm_env, "operator.workers=8", "operator.logLevel=DEBUG")
    (container,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    args = [a.replace("$(POD_NAMESPACE)", NAMESPACE) for a in container["args"]]
    parsed = build_parser().parse_args(["run", *args])
    assert (parsed.workers, parsed.log_level, parsed.leader_elect) == (8, "DEBUG", True)


def test_two_replicas_without_leader_election_are_refused(helm_env: dict[str, str]) -> None:
    args = ("template", "dpo", str(CHART), "--set", "replicas=2")
    refused = helm(helm_env, *args, "--set", "leaderElection.enabled=false", check=False)
    assert refused.returncode != 0
    assert "replicas > 1 needs leaderElection.enabled" in refused.stderr


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("serviceMonitor.enabeld=true", "enabeld"),
        ("image.tga=latest", "tga"),
        ("replica=2", "replica"),
        ("securityContext.runAsNonRot=true", "runAsNonRot"),
        ("operator.logFormat=xml", "logFormat"),
        ("operator.workers=0", "workers"),
        ("reports.enable=true", "enable"),
    ],
)
def test_schema_rejects_typos_and_bad_values(
    helm_env: dict[str, str], value: str, complaint: str
) -> None:
    rejected = helm(helm_env, "template", "dpo", str(CHART), "--set", value, check=False)
    assert rejected.returncode != 0, rejected.stdout[:500]
    assert "schema" in rejected.stderr
    assert complaint in rejected.stderr


def test_package_produces_a_chart_archive(helm_env: dict[str, str], tmp_path: Path) -> None:
    helm(helm_env, "package", str(CHART), "--destination", str(tmp_path))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    archive = tmp_path / f"{chart['name']}-{chart['version']}.tgz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for required in ("Chart.yaml", "values.yaml", "values.schema.json", *COPIES):
        assert f"{chart['name']}/{required}" in names
    assert helm(helm_env, "show", "chart", str(archive)).stdout.count(chart["version"]) >= 1


# -- against the apiserver ------------------------------------------------------------------


@pytest.mark.e2e
def test_rendered_objects_pass_server_side_validation(
    helm_env: dict[str, str], control_plane: ControlPlane, api: Api, unique_name: str
) -> None:
    """Every object, through the real schemas and admission (dry run: nothing is stored)."""
    api.namespace(unique_name)
    args = ("template", "dpo", str(CHART), "--namespace", unique_name, "--include-crds")
    rendered = helm(helm_env, *args).stdout
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "(server dry run)" in result.stdout
    assert len(result.stdout.splitlines()) == len([d for d in yaml.safe_load_all(rendered) if d])


@pytest.mark.e2e
@pytest.mark.parametrize("hardened", [True, False])
def test_pod_is_admitted_under_restricted_only_as_shipped(
    helm_env: dict[str, str], api: Api, unique_name: str, hardened: bool
) -> None:
    """The default pod template passes ``restricted``; loosened through a value, it fails."""
    loosen = () if hardened else ("securityContext.allowPrivilegeEscalation=true",)
    template_ = deployment(template(helm_env, *loosen, namespace=unique_name))["spec"]["template"]
    api.namespace(unique_name, {"pod-security.kubernetes.io/enforce": "restricted"})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template_["metadata"], "name": "operator", "namespace": unique_name},
        "spec": template_["spec"],
    }
    path = f"/api/v1/namespaces/{unique_name}/pods"
    if hardened:
        assert api.create(path, pod)["metadata"]["name"] == "operator"
        return
    with pytest.raises(ApiStatus) as rejected:
        api.create(path, pod)
    assert rejected.value.code == 403
    assert "allowPrivilegeEscalation" in json.loads(rejected.value.body)["message"]


@pytest.fixture(scope="module")
def helm_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of this module's own: Helm must own every object it installs."""
    with ControlPlane(tmp_path_factory.mktemp("helm-plane")) as plane:
        yield plane


@pytest.mark.e2e
def test_install_then_upgrade_with_a_changed_value(
    helm_env: dict[str, str], helm_plane: ControlPlane
) -> None:
    kube = ("--kubeconfig", str(helm_plane.kubeconfig), "--namespace", NAMESPACE)
    helm(helm_env, "install", "dpo", str(CHART), *kube, "--create-namespace")
    live = json.loads(helm_plane.kubectl("-n", NAMESPACE, "get", "deploy", "-o", "json").stdout)
    (installed,) = live["items"]
    assert installed["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "--workers=8" not in installed["spec"]["template"]["spec"]["containers"][0]["args"]
    policy = "validatingadmissionpolicy/default-policy-operator-exempt-label"
    helm_plane.kubectl("get", "clusterrole/default-policy-operator", policy)

    helm(helm_env, "upgrade", "dpo", str(CHART), *kube, "--set", "operator.workers=8")
    upgraded = json.loads(
        helm_plane.kubectl(
            "-n", NAMESPACE, "get", "deploy/default-policy-operator", "-o", "json"
        ).stdout
    )
    assert "--workers=8" in upgraded["spec"]["template"]["spec"]["containers"][0]["args"]
    (release,) = json.loads(helm(helm_env, "list", *kube, "-o", "json").stdout)
    assert (release["name"], release["revision"], release["status"]) == ("dpo", "2", "deployed")

    # The documented CRD upgrade path (Helm never upgrades crds/): applies cleanly.
    helm_plane.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))


def test_the_defaults_named_in_values_comments_are_the_operators() -> None:
    """values.yaml leaves the operator's flags null and names each default in the comment
    above it: a comment that names another number misleads whoever sizes the install (it
    said 32 concurrent writes where the operator used 64)."""
    from default_policy_operator.cli.main import build_parser

    defaults = vars(build_parser().parse_args(["run"]))
    comment, named = "", {}
    for line in (CHART / "values.yaml").read_text().split("operator:\n", 1)[1].splitlines():
        if not line.startswith("  "):
            break
        text = line.strip()
        if text.startswith("#"):
            comment += " " + text
            continue
        key, _, value = text.partition(":")
        number = re.search(r"\((\d+)[;)]", comment)
        if value.strip() == "null" and number:
            named[re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()] = int(number[1])
        comment = ""
    assert set(named) >= {"resync_period", "workers", "handover_settle", "watch_timeout"}
    assert named == {flag: defaults[flag] for flag in named}
