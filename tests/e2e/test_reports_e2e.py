"""End-to-end: ``dpo run --audit-reports`` publishes Audit findings as policy reports.

A control plane of this module's own has the OpenReports CRDs (from their Go module: the real
schema), an audit log of the operator's requests, and ``manifests/rbac`` plus the opt-in
``manifests/reports`` RBAC applied. The operator runs as its shipped ServiceAccount, so the
scenario also proves the optional ClusterRole sufficient (no 403) and each of its rules used. A
second, short-lived plane has only the ``wgpolicyk8s.io`` CRDs: there the operator falls back to
PolicyReports. Each test starts and stops its own operator, so no two ever run at once.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from default_policy_operator.core.reports import OPENREPORTS, REPORT_NAME, WGPOLICY, ReportFormat
from dpo_dev.cluster import ControlPlane
from tests.support import (
    Api,
    ApiStatus,
    OperatorProcess,
    condition,
    service_account_kubeconfig,
    wait_for,
)

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
NAMESPACE = "dpo-system"
ACCOUNT = "default-policy-operator"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
BUILTINS = ("allow-dns", "allow-kube-system", "deny-all")  # results are sorted by policy
REPORT_GROUPS = ("openreports.io", "wgpolicyk8s.io")
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [USER]}, {"level": "None"}],
}


def start_plane(workdir: Path, report_crds: Sequence[str]) -> ControlPlane:
    """A plane with an audit log, the operator's namespace and both RBAC parts applied."""
    plane = ControlPlane(workdir, audit_policy=AUDIT_POLICY, report_crds=report_crds)
    plane.start()
    try:
        plane.kubectl("apply", "-f", str(MANIFESTS / "deploy" / "namespace.yaml"))
        plane.kubectl("apply", "-k", str(MANIFESTS / "rbac"))
        reports = MANIFESTS / "reports"
        plane.kubectl(
            "apply", "-f", str(reports / "role.yaml"), "-f", str(reports / "role_binding.yaml")
        )
    except BaseException:
        plane.stop()
        raise
    return plane


@contextlib.contextmanager
def stopped_at_exit(plane: ControlPlane) -> Iterator[ControlPlane]:
    atexit.register(plane.stop)
    try:
        yield plane
    finally:
        plane.stop()
        atexit.unregister(plane.stop)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir = tmp_path_factory.mktemp("reports-plane")
    with stopped_at_exit(start_plane(workdir, ("openreports",))) as started:
        yield started


@pytest.fixture(scope="module")
def admin(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture(scope="module")
def kubeconfig(plane: ControlPlane, admin: Api, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reports-identity") / "kubeconfig"
    service_account_kubeconfig(plane, admin, NAMESPACE, ACCOUNT, path)
    return path


@contextlib.contextmanager
def running(kubeconfig: Path, log_dir: Path, *flags: str) -> Iterator[OperatorProcess]:
    """``dpo run`` as the ServiceAccount, resyncing every 2 s so that resyncs happen."""
    process = OperatorProcess(kubeconfig, log_dir / "operator.log", "--resync-period", "2", *flags)
    atexit.register(process.stop)
    try:
        process.start()
        yield process
    finally:
        process.stop()
        atexit.unregister(process.stop)


# -- reading reports, the operator's metrics and the audit log -----------------------------------


def report_path(fmt: ReportFormat, namespace: str = "") -> str:
    base = f"/apis/{fmt.api_version}"
    if namespace:
        return f"{base}/namespaces/{namespace}/{fmt.plural}/{REPORT_NAME}"
    return f"{base}/{fmt.cluster_plural}/{REPORT_NAME}"


def rules(report: dict[str, Any] | None, profile: str | None = None) -> list[tuple[str, str]]:
    """(profile, policy) of each result, in report order; of one profile's only if given."""
    results = (report or {}).get("results") or []
    return [(r["policy"], r["rule"]) for r in results if profile in (None, r["policy"])]


def wait_report(
    admin: Api, fmt: ReportFormat, namespace: str, expected: list[tuple[str, str]]
) -> dict[str, Any]:
    """The report of ``namespace`` ("" the cluster's) once its results of the profiles named
    in ``expected`` are exactly ``expected``."""
    profiles = {profile for profile, _ in expected}

    def probe() -> dict[str, Any] | None:
        report = admin.get(report_path(fmt, namespace))
        found = [r for r in rules(report) if r[0] in profiles]
        return report if found == expected else None

    found: dict[str, Any] = wait_for(
        probe, timeout=30, what=f"{fmt.kind} of {namespace or 'the cluster'}: {expected}"
    )
    return found


def wait_gone(admin: Api, fmt: ReportFormat, namespace: str) -> None:
    wait_for(
        lambda: admin.get(report_path(fmt, namespace)) is None,
        timeout=30,
        what=f"the {fmt.kind} of {namespace or 'the cluster'} to be deleted",
    )


def report_writes(operator: OperatorProcess, fmt: ReportFormat) -> float:
    return sum(
        operator.metric("dpo_api_writes_total", resource=plural)
        for plural in (fmt.plural, fmt.cluster_plural)
    )


def resyncs(operator: OperatorProcess) -> float:
    return operator.metric("dpo_reconcile_duration_seconds_count", trigger="resync")


def operator_events(plane: ControlPlane) -> list[dict[str, Any]]:
    """The operator's requests, one audit event each (the latest stage of each request)."""
    latest: dict[str, dict[str, Any]] = {}
    for event in plane.audit_events():
        if event.get("user", {}).get("username") == USER:
            latest[event["auditID"]] = event
    return list(latest.values())


def report_requests(plane: ControlPlane) -> list[tuple[str, str]]:
    """(verb, URI) of every request of the operator to a report API, discovery included."""
    return [
        (e["verb"], e["requestURI"])
        for e in operator_events(plane)
        if any(e["requestURI"].startswith(f"/apis/{group}") for group in REPORT_GROUPS)
    ]


def assert_least_privilege(plane: ControlPlane, operator: OperatorProcess, group: str) -> None:
    """No request of the operator was refused, and every rule the reports ClusterRole grants
    for ``group`` was used (nothing there just in case)."""
    events = operator_events(plane)
    refused = [(e["verb"], e["requestURI"]) for e in events if e["responseStatus"]["code"] == 403]
    assert refused == []
    used = {
        (ref.get("apiGroup", ""), ref["resource"], e["verb"])
        for e in events
        if (ref := e.get("objectRef")) and ref.get("resource") and e["responseStatus"]["code"] < 400
    }
    role = yaml.safe_load((MANIFESTS / "reports" / "role.yaml").read_text())
    granted = {
        (g, r, v)
        for rule in role["rules"]
        if group in rule["apiGroups"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted, f"the reports ClusterRole has no rule for {group}"
    assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"
    assert "publishing audit reports failed" not in operator.log_path.read_text()


# -- checks shared by both report APIs ------------------------------------------------------------


def selector(tag: str) -> dict[str, Any]:
    return {"matchLabels": {"dpo-test": tag}}


def wait_in_force(admin: Api, name: str, reason: str) -> None:
    """The profile's current generation is planned: its Ready condition gives ``reason``."""

    def probe() -> bool:
        profile = admin.get_profile(name) or {}
        status = profile.get("status") or {}
        current = status.get("observedGeneration") == profile.get("metadata", {}).get("generation")
        return current and condition(profile, "Ready").get("reason") == reason

    wait_for(probe, timeout=30, what=f"{name} planned, Ready reason {reason}")


def assert_schema_takes_every_field(admin: Api, fmt: ReportFormat, report: dict[str, Any]) -> None:
    """The report as written passes the CRD's schema with strict field validation (nothing
    would be pruned); the control: one unknown field is refused."""
    meta = report["metadata"]
    copy = {
        **{k: v for k, v in report.items() if k != "metadata"},
        "metadata": {
            "name": "strict-check",
            "labels": meta["labels"],
            **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
        },
    }
    path = report_path(fmt, meta.get("namespace", "")).rpartition("/")[0]
    strict = "?dryRun=All&fieldValidation=Strict"
    assert admin.request("POST", path + strict, copy)["metadata"]["name"] == "strict-check"
    with pytest.raises(ApiStatus) as refused:
        admin.request("POST", path + strict, {**copy, "unknownField": 1})
    assert refused.value.code == 400


def follow_findings(admin: Api, fmt: ReportFormat, tag: str) -> None:
    """Audit profiles' findings become reports (one result per namespace and policy), an edit
    updates them in place, Enforce removes them, and an object edited under Audit is reported
    as drifted until Enforce repairs it."""
    ns_a, ns_b, gnp = f"{tag}-a", f"{tag}-b", f"{tag}-gnp"
    for name in (ns_a, ns_b):
        admin.namespace(name, {"dpo-test": tag})
    admin.namespace(f"{gnp}-ns", {"dpo-test": gnp})
    admin.profile(tag, {"namespaceSelector": selector(tag), "mode": "Audit"})
    gnp_spec = {"flavor": "CalicoGlobalNetworkPolicy", "mode": "Audit"}
    admin.profile(gnp, {"namespaceSelector": selector(gnp), **gnp_spec})

    created = {n: wait_report(admin, fmt, n, [(tag, p) for p in BUILTINS]) for n in (ns_a, ns_b)}
    cluster = wait_report(admin, fmt, "", [(gnp, p) for p in BUILTINS])
    assert admin.get(report_path(fmt, f"{gnp}-ns")) is None  # GNPs are cluster-scoped
    report = created[ns_a]
    assert report["kind"] == fmt.kind
    assert report["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "default-policy-operator"
    assert report["summary"]["fail"] == 3
    assert {r["resources"][0]["name"] for r in report["results"]} == {f"dpo-{p}" for p in BUILTINS}
    assert [ref["name"] for ref in report["metadata"]["ownerReferences"]] == [tag]
    assert cluster["kind"] == fmt.cluster_kind
    for body in (report, cluster):
        assert_schema_takes_every_field(admin, fmt, body)

    # Fewer findings (ingress no longer denied: no allow-kube-system): the same reports, updated.
    fewer = {"policies": {"denyAll": {"ingress": False}}}
    admin.patch_profile(tag, fewer)
    admin.patch_profile(gnp, fewer)
    updated = wait_report(admin, fmt, ns_a, [(tag, "allow-dns"), (tag, "deny-all")])
    assert updated["metadata"]["uid"] == report["metadata"]["uid"]
    wait_report(admin, fmt, "", [(gnp, "allow-dns"), (gnp, "deny-all")])

    # Enforce writes the objects: nothing left to report, the reports go.
    for name in (tag, gnp):
        admin.patch_profile(name, {"mode": "Enforce"})
    for namespace in (ns_a, ns_b, ""):
        wait_gone(admin, fmt, namespace)

    # Back to Audit, then an object edited behind the operator's back: reported as drifted.
    admin.patch_profile(tag, {"mode": "Audit"})
    wait_in_force(admin, tag, "Audited")
    path = admin.policy_path(ns_a, "dpo-deny-all")
    admin.patch(path, {"spec": {"policyTypes": ["Ingress", "Egress"]}})
    drifted = wait_report(admin, fmt, ns_a, [(tag, "deny-all")])
    assert drifted["results"][0]["properties"] == {"mode": "Audit", "action": "update"}
    assert admin.get(report_path(fmt, ns_b)) is None
    admin.patch_profile(tag, {"mode": "Enforce"})  # repaired: the result goes
    wait_gone(admin, fmt, ns_a)

    for name in (tag, gnp):
        admin.delete_profile(name)
        wait_for(lambda: admin.get_profile(name) is None, timeout=30, what=f"{name} deleted")  # noqa: B023


# -- the tests ------------------------------------------------------------------------------------


def test_without_the_flag_no_report_kind_is_touched(
    plane: ControlPlane, admin: Api, kubeconfig: Path, tmp_path: Path
) -> None:
    tag = "off"
    admin.namespace(f"{tag}-a", {"dpo-test": tag})
    before = report_requests(plane)
    with running(kubeconfig, tmp_path) as operator:
        admin.profile(tag, {"namespaceSelector": selector(tag), "mode": "Audit"})
        wait_for(
            lambda: (admin.get_profile(tag) or {}).get("status", {}).get("driftedObjects") == 3,
            timeout=30,
            what="the Audit profile's findings in its status",
        )
        start = resyncs(operator)
        wait_for(lambda: resyncs(operator) >= start + 1, timeout=30, what="a full resync")
        assert report_requests(plane) == before
        assert report_writes(operator, OPENREPORTS) == 0
        admin.delete_profile(tag)
        wait_for(lambda: admin.get_profile(tag) is None, timeout=30, what="profile deleted")
    assert admin.get(report_path(OPENREPORTS, f"{tag}-a")) is None


def test_audit_findings_become_reports_and_fixing_them_removes_them(
    plane: ControlPlane, admin: Api, kubeconfig: Path, tmp_path: Path
) -> None:
    with running(kubeconfig, tmp_path, "--audit-reports") as operator:
        follow_findings(admin, OPENREPORTS, "open")
        assert_least_privilege(plane, operator, "openreports.io")


def test_resyncs_and_restarts_write_nothing_and_edited_reports_come_back(
    admin: Api, kubeconfig: Path, tmp_path: Path
) -> None:
    tag, namespace = "steady", "steady-a"
    admin.namespace(namespace, {"dpo-test": tag})
    expected = [(tag, p) for p in BUILTINS]
    path = report_path(OPENREPORTS, namespace)
    with running(kubeconfig, tmp_path, "--audit-reports") as operator:
        admin.profile(tag, {"namespaceSelector": selector(tag), "mode": "Audit"})
        report = wait_report(admin, OPENREPORTS, namespace, expected)
        # the counter moves once the write's answer is back, maybe after the report shows
        wait_for(lambda: report_writes(operator, OPENREPORTS) == 1, what="the report's write")
        start = resyncs(operator)
        wait_for(lambda: resyncs(operator) >= start + 2, timeout=30, what="two full resyncs")
        assert report_writes(operator, OPENREPORTS) == 1
        version = report["metadata"]["resourceVersion"]
        assert admin.get(path)["metadata"]["resourceVersion"] == version

        admin.patch(path, {"results": [], "summary": {"fail": 0}})  # someone else's edit
        wait_report(admin, OPENREPORTS, namespace, expected)  # undone after the next resync
        admin.delete(path)
        recreated = wait_report(admin, OPENREPORTS, namespace, expected)
        assert recreated["metadata"]["uid"] != report["metadata"]["uid"]

    version = admin.get(path)["metadata"]["resourceVersion"]
    with running(kubeconfig, tmp_path, "--audit-reports") as operator:
        wait_for(lambda: resyncs(operator) >= 2, timeout=30, what="two full resyncs")
        assert report_writes(operator, OPENREPORTS) == 0
        assert admin.get(path)["metadata"]["resourceVersion"] == version
        admin.delete_profile(tag)  # its findings go with it, and so does the report
        wait_gone(admin, OPENREPORTS, namespace)
        wait_for(lambda: report_writes(operator, OPENREPORTS) == 1, what="the delete counted")


def test_policy_reports_where_only_the_wgpolicyk8s_api_exists(tmp_path: Path) -> None:
    with stopped_at_exit(start_plane(tmp_path / "plane", ("wgpolicyk8s",))) as wg_plane:
        admin = Api(wg_plane)
        kubeconfig = tmp_path / "kubeconfig"
        service_account_kubeconfig(wg_plane, admin, NAMESPACE, ACCOUNT, kubeconfig)
        with running(kubeconfig, tmp_path, "--audit-reports") as operator:
            follow_findings(admin, WGPOLICY, "wg")
            assert_least_privilege(wg_plane, operator, "wgpolicyk8s.io")
            assert admin.get(f"/apis/{OPENREPORTS.api_version}") is None
