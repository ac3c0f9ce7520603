"""Audit findings as policy reports: content, bounds, and the digest that spares writes.

Findings come from a real World's plans (rendered in-process), recorded the way the reconciler
records them, so the tests see the keys and verbs the operator really produces.
"""

from __future__ import annotations

from typing import Any

import pytest

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import NAMESPACE_NAME_LABEL
from default_policy_operator.core.model import Flavor, Mode, Profile
from default_policy_operator.core.objects import (
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    ObjectKey,
    calico_policy_name,
)
from default_policy_operator.core.reports import (
    MAX_RESULTS,
    OPENREPORTS,
    REPORT_NAME,
    WGPOLICY,
    Finding,
    ReportFormat,
    build_report,
    digest,
    findings_by_scope,
    first_seen,
    policy_of,
    result_id,
)
from default_policy_operator.core.world import ScopePlan, World
from tests.inline_render import InlineWorld

BUILTINS = ("allow-dns", "allow-kube-system", "deny-all")
CALICO_V1 = "crd.projectcalico.org/v1"


def audit_world(*profiles: dict[str, Any]) -> World:
    world = InlineWorld(protected_namespaces("dpo-system"))
    for name in ("team-a", "team-b"):
        world.set_namespace(Namespace(name, {NAMESPACE_NAME_LABEL: name, "team": "yes"}))
    for body in profiles:
        world.update_profile(body)
    record(world, world.plan_calico())
    for name in ("team-a", "team-b"):
        record(world, world.plan_namespace(name))
    return world


def record(world: World, result: ScopePlan) -> None:
    """What ``Reconciler._record_findings`` keeps of a plan."""
    for action in result.audit_findings:
        world.audit_findings.setdefault(action.profile, {})[action.key] = action.verb


def profile(name: str, **spec: Any) -> dict[str, Any]:
    spec = {"namespaceSelector": {"matchLabels": {"team": "yes"}}, "mode": "Audit", **spec}
    return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1}, "spec": spec}


def profiles_of(world: World) -> dict[str, Profile]:
    return {n: e.profile for n, e in world.profiles.items() if e.profile is not None}


def reports_of(world: World, fmt: ReportFormat = OPENREPORTS) -> dict[str, dict[str, Any]]:
    profiles = profiles_of(world)
    grouped = findings_by_scope(world.audit_findings, profiles, ["", "team-a", "team-b"])
    owners = {name: p.uid for name, p in profiles.items()}
    return {
        scope: build_report(
            fmt, scope, found, owners=owners, calico_api_version=CALICO_V1, first_seen={}, now=100
        )
        for scope, found in grouped.items()
    }


# -- content ----------------------------------------------------------------------------------


def test_one_report_per_namespace_with_one_result_per_policy() -> None:
    reports = reports_of(audit_world(profile("watch")))
    assert set(reports) == {"team-a", "team-b"}
    report = reports["team-a"]
    assert (report["apiVersion"], report["kind"]) == ("openreports.io/v1alpha1", "Report")
    assert report["metadata"] == {
        "name": REPORT_NAME,
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "default-policy-operator"},
        "ownerReferences": [
            {"apiVersion": "defaultpolicy.dev/v1alpha1", "kind": "DefaultPolicyProfile",
             "name": "watch", "uid": "uid-watch"}
        ],
    }  # fmt: skip
    assert report["scope"] == {"apiVersion": "v1", "kind": "Namespace", "name": "team-a"}
    assert [(r["policy"], r["rule"], r["result"]) for r in report["results"]] == [
        ("watch", policy, "fail") for policy in BUILTINS
    ]
    assert report["summary"] == {"pass": 0, "fail": 3, "warn": 0, "error": 0, "skip": 0}
    first = report["results"][0]
    assert first["resources"] == [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "namespace": "team-a", "name": "dpo-allow-dns"}
    ]  # fmt: skip
    assert first["properties"] == {"mode": "Audit", "action": "create"}
    assert first["timestamp"] == {"seconds": 100, "nanos": 0}
    assert "missing" in first["message"]
    assert "Audit mode" in first["message"]
    assert report["source"] == "default-policy-operator"
    assert report["configuration"] == {
        "limits": {"maxResults": MAX_RESULTS, "statusFilter": ["fail"]}
    }


def test_cluster_scoped_findings_make_the_cluster_report() -> None:
    world = audit_world(profile("cal", flavor="CalicoGlobalNetworkPolicy"))
    reports = reports_of(world)
    assert set(reports) == {""}
    report = reports[""]
    assert report["kind"] == "ClusterReport"
    assert "namespace" not in report["metadata"]
    assert "scope" not in report
    assert [r["rule"] for r in report["results"]] == list(BUILTINS)
    assert report["results"][0]["resources"] == [
        {"apiVersion": CALICO_V1, "kind": "GlobalNetworkPolicy",
         "name": calico_policy_name("cal", "allow-dns")}
    ]  # fmt: skip


def test_calico_namespaced_findings_name_calico_objects() -> None:
    reports = reports_of(audit_world(profile("cnp", flavor="CalicoNetworkPolicy")))
    resource = reports["team-b"]["results"][0]["resources"][0]
    assert resource == {
        "apiVersion": CALICO_V1, "kind": "NetworkPolicy", "namespace": "team-b",
        "name": "default.dpo-allow-dns",
    }  # fmt: skip


def test_a_drifted_object_is_reported_as_such() -> None:
    finding = Finding("watch", "deny-all", ObjectKey(NETWORK_POLICY, "a", "dpo-deny-all"),
                      "update", "Audit")  # fmt: skip
    (result,) = build_report(
        OPENREPORTS, "a", [finding], owners={}, calico_api_version=CALICO_V1, first_seen={}, now=1
    )["results"]
    assert result["properties"] == {"mode": "Audit", "action": "update"}
    assert "differs" in result["message"]


def test_the_wgpolicy_format_leaves_out_what_its_schema_lacks() -> None:
    reports = reports_of(audit_world(profile("watch")), WGPOLICY)
    report = reports["team-a"]
    assert (report["apiVersion"], report["kind"]) == ("wgpolicyk8s.io/v1alpha2", "PolicyReport")
    assert "source" not in report
    assert "configuration" not in report
    assert len(report["results"]) == 3
    cluster = reports_of(audit_world(profile("c", flavor="CalicoGlobalNetworkPolicy")), WGPOLICY)
    assert cluster[""]["kind"] == "ClusterPolicyReport"


def test_enforce_profiles_and_namespaces_in_order_have_no_report() -> None:
    assert reports_of(audit_world(profile("watch", mode="Enforce"))) == {}
    assert findings_by_scope({"watch": {}}, {}, ["team-a"]) == {}


def test_owner_references_name_every_profile_with_a_result_and_a_uid() -> None:
    findings = [
        Finding(name, "p", ObjectKey(GLOBAL_NETWORK_POLICY, "", f"{name}-p"), "create", "Audit")
        for name in ("b", "a", "no-uid")
    ]
    report = build_report(
        OPENREPORTS, "", findings, owners={"a": "uid-a", "b": "uid-b"},
        calico_api_version=CALICO_V1, first_seen={}, now=1,
    )  # fmt: skip
    assert [ref["name"] for ref in report["metadata"]["ownerReferences"]] == ["a", "b"]
    assert "ownerReferences" not in build_report(
        OPENREPORTS, "", findings[2:], owners={}, calico_api_version=CALICO_V1,
        first_seen={}, now=1,
    )["metadata"]  # fmt: skip


def test_policy_of_knows_each_flavor_and_falls_back_to_the_name() -> None:
    plain = Profile("watch", mode=Mode.AUDIT)
    calico = Profile("cal", mode=Mode.AUDIT, flavor=Flavor.CALICO)
    assert policy_of(plain, ObjectKey(NETWORK_POLICY, "a", "dpo-allow-dns")) == "allow-dns"
    gnp = ObjectKey(GLOBAL_NETWORK_POLICY, "", calico_policy_name("cal", "deny-all"))
    assert policy_of(calico, gnp) == "deny-all"
    assert policy_of(plain, ObjectKey(NETWORK_POLICY, "a", "dpo-gone")) == "dpo-gone"
    assert policy_of(None, ObjectKey(NETWORK_POLICY, "a", "stray")) == "stray"


# -- bounds -----------------------------------------------------------------------------------


def many(count: int) -> list[Finding]:
    return [
        Finding(f"p{i:03}", "deny-all", ObjectKey(GLOBAL_NETWORK_POLICY, "", f"g{i:03}"),
                "create", "Audit")
        for i in range(count)
    ]  # fmt: skip


def test_results_are_capped_and_the_summary_counts_them_all() -> None:
    report = build_report(
        OPENREPORTS, "", many(MAX_RESULTS + 50), owners={}, calico_api_version=CALICO_V1,
        first_seen={}, now=1,
    )  # fmt: skip
    assert len(report["results"]) == MAX_RESULTS
    assert report["summary"]["fail"] == MAX_RESULTS + 50
    assert report["results"][0]["policy"] == "p000"  # deterministic: sorted
    assert report["configuration"]["limits"]["maxResults"] == MAX_RESULTS


def test_result_order_does_not_depend_on_the_findings_order() -> None:
    forward, backward = many(5), many(5)[::-1]
    build = {
        "owners": {}, "calico_api_version": CALICO_V1, "first_seen": {}, "now": 1
    }  # fmt: skip
    assert build_report(OPENREPORTS, "", forward, **build) == build_report(
        OPENREPORTS, "", backward, **build
    )


# -- zero writes when nothing changed ---------------------------------------------------------


def as_stored(body: dict[str, Any]) -> dict[str, Any]:
    """The report as the apiserver returns it: server-side metadata added."""
    meta = {
        **body["metadata"],
        "uid": "1234",
        "resourceVersion": "99",
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "managedFields": [{"manager": "dpo", "operation": "Update"}],
        "labels": {**body["metadata"]["labels"], "someone-elses": "label"},
    }
    return {**body, "metadata": meta}


@pytest.mark.parametrize("fmt", [OPENREPORTS, WGPOLICY])
def test_an_unchanged_report_has_the_digest_of_its_stored_self(fmt: ReportFormat) -> None:
    world = audit_world(profile("watch"))
    written = reports_of(world, fmt)["team-a"]
    stored = as_stored(written)
    profiles = profiles_of(world)
    (found,) = findings_by_scope(world.audit_findings, profiles, ["team-a"]).values()
    later = build_report(
        fmt, "team-a", found, owners={"watch": "uid-watch"}, calico_api_version=CALICO_V1,
        first_seen=first_seen(stored), now=5000,
    )  # fmt: skip
    assert digest(later) == digest(stored) == digest(written)
    assert later["results"] == written["results"]  # first-seen times carried over


def test_a_new_finding_changes_the_digest_and_only_it_is_stamped_now() -> None:
    findings = many(2)
    before = build_report(
        OPENREPORTS, "", findings, owners={}, calico_api_version=CALICO_V1, first_seen={}, now=10
    )
    after = build_report(
        OPENREPORTS, "", many(3), owners={}, calico_api_version=CALICO_V1,
        first_seen=first_seen(before), now=20,
    )  # fmt: skip
    assert digest(after) != digest(before)
    assert [r["timestamp"]["seconds"] for r in after["results"]] == [10, 10, 20]


@pytest.mark.parametrize(
    "change",
    [
        lambda b: b["results"][0].update(result="pass"),
        lambda b: b["summary"].update(fail=7),
        lambda b: b["metadata"]["labels"].pop("app.kubernetes.io/managed-by"),
        lambda b: b["metadata"].update(ownerReferences=[]),
        lambda b: b.pop("configuration"),
        lambda b: b["results"].pop(),
    ],
)
def test_any_edit_of_what_the_operator_decides_changes_the_digest(change: Any) -> None:
    body = reports_of(audit_world(profile("watch")))["team-a"]
    before = digest(body)
    change(body)
    assert digest(body) != before


def test_result_identity_ignores_message_and_time() -> None:
    (one, two) = build_report(
        OPENREPORTS, "", many(2), owners={}, calico_api_version=CALICO_V1, first_seen={}, now=1
    )["results"]
    assert result_id(one) != result_id(two)
    assert result_id({**one, "message": "x", "timestamp": {"seconds": 9}}) == result_id(one)
