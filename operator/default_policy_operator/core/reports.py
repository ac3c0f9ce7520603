"""Audit findings as policy reports: what each report says, decided without I/O.

Policy engines (Kyverno, Kubewarden, ...) publish what they find as OpenReports
(``openreports.io/v1alpha1`` ``Report``/``ClusterReport``), or as the older ``wgpolicyk8s.io``
``PolicyReport``/``ClusterPolicyReport`` they grew from; dashboards such as Policy Reporter
read either. Writing the operator's Audit findings in the same shape puts "this namespace has no
baseline" next to every other policy result, instead of only in a profile's status.

Shape, and why:

* one report per namespace with findings, and one cluster-wide report for cluster-scoped objects
  (Calico GlobalNetworkPolicies): a report's size follows the policies of one namespace, not the
  size of the cluster, and a namespace's owners can read their own report;
* one ``fail`` result per namespace and policy: ``policy`` is the profile, ``rule`` the policy
  (``deny-all``, a custom policy's name), ``resources`` the object Enforce mode would write;
  passes are not listed (``configuration.limits.statusFilter`` says so), so a namespace in order
  has no report at all;
* at most :data:`MAX_RESULTS` results per report, the summary counting every finding;
* a result's ``timestamp`` is when it was first reported, carried over from the report as last
  written, so an unchanged finding never changes the report: :func:`digest` compares what the
  operator would write with what the API holds, and equal digests mean no write.

A finding carries its profile's mode: only Audit produces them today, and another non-enforcing
mode (Stage) can feed the same reports later.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from default_policy_operator.core.labels import (
    GROUP,
    KIND,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    VERSION,
)
from default_policy_operator.core.model import Flavor, Profile
from default_policy_operator.core.objects import (
    CLUSTER_NETWORK_POLICY,
    CLUSTER_POLICY_APIS,
    NETWORK_POLICY,
    ObjectKey,
    body_kind,
    object_key,
)

#: Every report the operator writes has this name (one per namespace, one cluster-wide).
REPORT_NAME = "default-policy-operator"
#: The reports' and results' ``source``: the engine that produced them.
SOURCE = MANAGED_BY_VALUE
#: Results per report; the summary still counts every finding.
MAX_RESULTS = 100
CATEGORY = "Baseline network policy"


@dataclass(frozen=True)
class ReportFormat:
    """One report API: where its two kinds live, and whether it has OpenReports' extra fields
    (the report-level ``source`` and ``configuration``, absent from the wgpolicyk8s.io schema,
    which would prune them and so never compare equal)."""

    group: str
    version: str
    kind: str
    plural: str
    cluster_kind: str
    cluster_plural: str
    contract: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


OPENREPORTS = ReportFormat(
    "openreports.io", "v1alpha1", "Report", "reports", "ClusterReport", "clusterreports", True
)
WGPOLICY = ReportFormat(
    "wgpolicyk8s.io",
    "v1alpha2",
    "PolicyReport",
    "policyreports",
    "ClusterPolicyReport",
    "clusterpolicyreports",
    False,
)
#: In order of preference: OpenReports where its CRDs exist, else the wgpolicyk8s.io ones.
FORMATS = (OPENREPORTS, WGPOLICY)


@dataclass(frozen=True, order=True)
class Finding:
    """One object a non-enforcing profile would write: one result of a report."""

    profile: str
    policy: str
    key: ObjectKey
    verb: str  # "create" (missing) or "update" (differs)
    mode: str


def scope_of(key: ObjectKey) -> str:
    """The report an object's finding goes to: its namespace's, or "" (the cluster's)."""
    return key.namespace


def policy_of(profile: Profile | None, key: ObjectKey) -> str:
    """The profile's policy that renders ``key`` (object names encode it, but differently per
    flavor: asking the profile is the one way that holds for all)."""
    if profile is not None:
        namespace = None if profile.flavor is Flavor.CALICO else key.namespace
        for policy in profile.policy_names():
            if object_key(profile, policy, namespace) == key:
                return policy
    return key.name


def findings_by_scope(
    audit_findings: Mapping[str, Mapping[ObjectKey, str]],
    profiles: Mapping[str, Profile],
    scopes: Iterable[str],
) -> dict[str, list[Finding]]:
    """The findings of each of ``scopes`` (those with none are left out), from the world's
    per-profile findings (``World.audit_findings``) and the profiles in force."""
    wanted = set(scopes)
    out: dict[str, list[Finding]] = {}
    for name, findings in audit_findings.items():
        profile = profiles.get(name)
        mode = str(profile.mode) if profile is not None else ""
        for key, verb in findings.items():
            scope = scope_of(key)
            if scope in wanted:
                finding = Finding(name, policy_of(profile, key), key, str(verb), mode)
                out.setdefault(scope, []).append(finding)
    return out


def build_report(
    fmt: ReportFormat,
    scope: str,
    findings: Iterable[Finding],
    *,
    owners: Mapping[str, str],
    calico_api_version: str,
    first_seen: Mapping[str, Mapping[str, int]],
    now: int,
) -> dict[str, Any]:
    """The report ``scope`` should have (``""``: the cluster-wide one).

    ``owners`` maps profile names to UIDs: each profile with a result owns the report, so the
    garbage collector removes it with the last of them even while the operator is not running.
    ``first_seen`` maps :func:`result_id` to the timestamp a result was first reported with;
    a new result is stamped ``now`` (seconds since the epoch).
    """
    ordered = sorted(findings)
    results = [_result(f, calico_api_version, first_seen, now) for f in ordered[:MAX_RESULTS]]
    metadata: dict[str, Any] = {"name": REPORT_NAME, "labels": {MANAGED_BY: MANAGED_BY_VALUE}}
    references = _owner_references(sorted({f.profile for f in ordered}), owners)
    if references:
        metadata["ownerReferences"] = references
    body: dict[str, Any] = {"apiVersion": fmt.api_version}
    if scope:
        metadata["namespace"] = scope
        body.update(kind=fmt.kind, metadata=metadata)
        body["scope"] = {"apiVersion": "v1", "kind": "Namespace", "name": scope}
    else:
        body.update(kind=fmt.cluster_kind, metadata=metadata)
    if fmt.contract:
        body["source"] = SOURCE
        body["configuration"] = {"limits": {"maxResults": MAX_RESULTS, "statusFilter": ["fail"]}}
    body["summary"] = {"pass": 0, "fail": len(ordered), "warn": 0, "error": 0, "skip": 0}
    body["results"] = results
    return body


def _owner_references(profiles: list[str], owners: Mapping[str, str]) -> list[dict[str, str]]:
    return [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": name, "uid": owners[name]}
        for name in profiles
        if owners.get(name)
    ]


def _result(
    finding: Finding,
    calico_api_version: str,
    first_seen: Mapping[str, Mapping[str, int]],
    now: int,
) -> dict[str, Any]:
    key = finding.key
    kind = body_kind(key.kind)
    fixed = {NETWORK_POLICY: "networking.k8s.io/v1", CLUSTER_NETWORK_POLICY: CLUSTER_POLICY_APIS[0]}
    api_version = fixed.get(key.kind, calico_api_version)
    resource = {"apiVersion": api_version, "kind": kind, "name": key.name}
    if key.namespace:
        resource["namespace"] = key.namespace
    result: dict[str, Any] = {
        "policy": finding.profile,
        "rule": finding.policy,
        "result": "fail",
        "scored": True,
        "category": CATEGORY,
        "source": SOURCE,
        "message": _message(finding, kind),
        "resources": [resource],
        "properties": {"mode": finding.mode, "action": finding.verb},
    }
    stamp = first_seen.get(result_id(result))
    result["timestamp"] = dict(stamp) if stamp else {"seconds": now, "nanos": 0}
    return result


def _message(finding: Finding, kind: str) -> str:
    what = f"{kind} {finding.key.name}"
    if finding.verb == "create":
        state, act = "is missing", "create it"
    else:
        state, act = "differs from what the profile renders", "repair it"
    return f"{what} {state}; in {finding.mode} mode the operator does not {act}"


def result_id(result: Mapping[str, Any]) -> str:
    """What makes a result the same one across writes: profile, policy, object and action."""
    resources = result.get("resources") or [{}]
    resource = resources[0]
    action = (result.get("properties") or {}).get("action", "")
    parts = (result.get("policy"), result.get("rule"), resource.get("kind"),
             resource.get("namespace", ""), resource.get("name"), action)  # fmt: skip
    return "/".join(str(p or "") for p in parts)


def first_seen(body: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Each result's timestamp in a report as written, by :func:`result_id`."""
    stamps: dict[str, dict[str, int]] = {}
    for result in body.get("results") or []:
        stamp = result.get("timestamp")
        if isinstance(stamp, Mapping):
            stamps[result_id(result)] = {
                "seconds": int(stamp.get("seconds", 0)),
                "nanos": int(stamp.get("nanos", 0)),
            }
    return stamps


def digest(body: Mapping[str, Any]) -> str:
    """A hash of what the operator decides in a report, equal for the body it would write and
    the same report read back from the API (which adds only server-side metadata)."""
    meta = body.get("metadata") or {}
    owners = [
        [ref.get(k) for k in ("apiVersion", "kind", "name", "uid")]
        for ref in meta.get("ownerReferences") or []
    ]
    decided = {
        "kind": body.get("kind"),
        "managed": (meta.get("labels") or {}).get(MANAGED_BY),
        "owners": owners,
        **{k: body.get(k) for k in ("scope", "source", "configuration", "summary", "results")},
    }
    text = json.dumps(decided, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
