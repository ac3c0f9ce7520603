"""The "nothing lost" check: the live cluster holds exactly what an offline render says it should.

Reusable by any resilience test: after a fault and the recovery, call :func:`wait_nothing_lost`
(or :func:`check` for a one-shot verdict). The expectation is computed offline, from the live
namespaces and profiles only, with the operator's own pure model -- :class:`World` decides who
governs a namespace and the render pool produces the objects -- and compared with the live
managed objects after normalisation (:func:`spec_hash`). The live side is read with the tests'
independent client (:class:`tests.support.Api`), never the operator's.

What counts as lost or extra:

* every namespace governed by an enforcing namespaced-flavour profile holds exactly the
  rendered objects (same kinds and names, same normalised spec, our labels, owned by the
  profile);
* every other namespace holds no managed object (no orphans, no leftovers of a namespace that
  stopped wanting them, nothing in namespaces that are gone);
* the managed cluster-scoped objects are exactly those of the enforcing cluster-scoped profiles,
  with the selector the current namespaces call for;
* no object of any other kind carries the operator's managed-by label (every listable resource
  the apiserver serves is listed with that label selector).

Namespaces governed by an ``Audit`` or ``Stage`` profile are not checked (neither removes what
enforcing profiles wrote, so what is there depends on history) and neither is anything when a
profile is invalid (the operator keeps the last good version, which an offline render cannot
know): both are reported, not guessed.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from default_policy_operator.core.governance import Namespace, protected_namespaces
from default_policy_operator.core.labels import MANAGED_SELECTOR, PROFILE_LABEL
from default_policy_operator.core.normalize import spec_hash
from default_policy_operator.core.objects import (
    CLUSTER_NETWORK_POLICY,
    GLOBAL_NETWORK_POLICY,
    NETWORK_POLICY,
    STAGED_KINDS,
    ObjectKey,
    RenderedObject,
    key_of,
)
from default_policy_operator.core.world import World
from default_policy_operator.rendering.offline import admit, render_scopes
from default_policy_operator.rendering.pool import RenderPool
from tests.support import CNPS, GNPS, PROFILES, Api, ApiStatus

CALICO = "/apis/crd.projectcalico.org/v1"
#: every namespaced kind the operator writes, listed across namespaces
NAMESPACED_PATHS = (
    "/apis/networking.k8s.io/v1/networkpolicies",
    f"{CALICO}/networkpolicies",
    f"{CALICO}/stagedkubernetesnetworkpolicies",
    f"{CALICO}/stagednetworkpolicies",
)
#: every cluster-scoped kind the operator writes
CLUSTER_PATHS = (GNPS, CNPS, f"{CALICO}/stagedglobalnetworkpolicies")
#: (API group, kind) the operator may create; anything else with its label is a finding.
ALLOWED_KINDS = {
    ("networking.k8s.io", NETWORK_POLICY),
    ("crd.projectcalico.org", NETWORK_POLICY),
    ("crd.projectcalico.org", GLOBAL_NETWORK_POLICY),
    ("policy.networking.k8s.io", CLUSTER_NETWORK_POLICY),
    *(("crd.projectcalico.org", kind) for kind in STAGED_KINDS.values()),
}


@dataclass
class Verdict:
    """The outcome of one check: empty ``problems`` means nothing lost and nothing extra."""

    problems: list[str] = field(default_factory=list)
    namespaces: int = 0
    governed: int = 0
    objects: int = 0  # managed objects found live
    skipped: list[str] = field(default_factory=list)  # Audit-governed namespaces
    kinds_listed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"{self.namespaces} namespaces, {self.governed} governed, {self.objects} managed "
            f"objects, {self.kinds_listed} kinds listed, {len(self.skipped)} skipped (Audit), "
            f"{len(self.problems)} problem(s)"
        )

    def __str__(self) -> str:
        shown = self.problems[:25]
        more = len(self.problems) - len(shown)
        return "\n".join([self.summary(), *shown, *([f"... and {more} more"] if more else [])])


def _get(api: Api, path: str, attempts: int = 20) -> Any:
    """A GET that waits out the apiserver's transient refusals (e.g. a watch cache that is
    re-initialising after a restart answers 429 "storage is (re)initializing")."""
    for attempt in range(attempts):
        try:
            return api.request("GET", path)
        except ApiStatus as exc:
            if exc.code not in (429, 500, 503, 504) or attempt == attempts - 1:
                raise
        time.sleep(0.5)
    raise AssertionError("unreachable")


def _managed(api: Api, path: str) -> list[dict[str, Any]]:
    query = urllib.parse.quote(MANAGED_SELECTOR)
    return with_kinds(_get(api, f"{path}?labelSelector={query}"))


def with_kinds(page: dict[str, Any]) -> list[dict[str, Any]]:
    """A list's items with the kind and apiVersion a list leaves out (keys need them: Calico's
    NetworkPolicy is told from Kubernetes' by its API group)."""
    kind, api_version = page.get("kind", "").removesuffix("List"), page.get("apiVersion", "")
    items: list[dict[str, Any]] = page["items"]
    for item in items:
        item.setdefault("kind", kind)
        item.setdefault("apiVersion", api_version)
    return items


def _list_all(api: Api, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query = "?limit=500" + (f"&continue={urllib.parse.quote(token)}" if token else "")
        page = _get(api, path + query)
        items.extend(page["items"])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return items


def listable_resources(api: Api) -> list[tuple[str, str, str]]:
    """(list path, API group, kind) of every resource the apiserver can list, via discovery."""
    out: list[tuple[str, str, str]] = []
    versions = [("", "/api/v1")]
    for group in _get(api, "/apis")["groups"]:
        preferred = group["preferredVersion"]["groupVersion"]
        versions.append((group["name"], f"/apis/{preferred}"))
    for group, base in versions:
        for resource in _get(api, base)["resources"]:
            if "/" in resource["name"] or "list" not in resource.get("verbs", []):
                continue
            out.append((f"{base}/{resource['name']}", group, resource["kind"]))
    return out


def _expected_owner(world: World, profile: str) -> str:
    entry = world.profiles.get(profile)
    return entry.profile.uid if entry is not None and entry.profile is not None else ""


def _compare(
    verdict: Verdict,
    wanted: Iterable[RenderedObject],
    live: dict[ObjectKey, dict[str, Any]],
    world: World,
) -> None:
    wanted_by_key = {obj.key: obj for obj in wanted}
    for key in sorted(set(wanted_by_key) - set(live)):
        verdict.problems.append(f"missing: {key}")
    for key in sorted(set(live) - set(wanted_by_key)):
        profile = live[key]["metadata"].get("labels", {}).get(PROFILE_LABEL, "?")
        verdict.problems.append(f"orphan: {key} (profile {profile})")
    for key in sorted(set(live) & set(wanted_by_key)):
        obj, body = wanted_by_key[key], live[key]
        where, name = f"{key.kind} {key.namespace}/" if key.namespace else f"{key.kind} ", key.name
        kind = obj.key.kind
        if spec_hash(kind, body.get("spec")) != spec_hash(kind, obj.body.get("spec")):
            verdict.problems.append(f"drifted spec: {where}{name}")
        labels = body["metadata"].get("labels") or {}
        wrong = {k: v for k, v in obj.body["metadata"]["labels"].items() if labels.get(k) != v}
        if wrong:
            verdict.problems.append(f"wrong labels: {where}{name}: want {wrong}, have {labels}")
        owner = _expected_owner(world, labels.get(PROFILE_LABEL, ""))
        owners = [ref.get("uid") for ref in body["metadata"].get("ownerReferences") or []]
        if owner and owner not in owners:
            verdict.problems.append(f"wrong owner: {where}{name}: {owners} lacks {owner}")


def check(api: Api, *, operator_namespace: str = "dpo-system", other_kinds: bool = True) -> Verdict:
    """One comparison of the live cluster with the offline render (no waiting)."""
    verdict = Verdict()
    world = World(protected_namespaces(operator_namespace))
    for body in _list_all(api, "/api/v1/namespaces"):
        meta = body["metadata"]
        annotations = dict(meta.get("annotations") or {})
        annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
        world.set_namespace(Namespace(meta["name"], dict(meta.get("labels") or {}), annotations))
    with RenderPool() as pool:  # the operator's renders, with the operator's limits
        for body in _list_all(api, PROFILES):
            entry = admit(world, pool, body)
            if entry.error:
                verdict.problems.append(
                    f"profile {entry.name} is invalid, cannot check: {entry.error}"
                )
        render_scopes(world, pool, sorted(world.namespaces))
    verdict.namespaces = len(world.namespaces)

    live_policies: dict[str, dict[ObjectKey, dict[str, Any]]] = {}
    for path in NAMESPACED_PATHS:
        for item in _managed(api, path):
            live_policies.setdefault(item["metadata"]["namespace"], {})[key_of(item)] = item
    verdict.objects = sum(len(v) for v in live_policies.values())

    for name in sorted(set(world.namespaces) | set(live_policies)):
        namespace = world.namespaces.get(name)
        governor = world.governor(namespace) if namespace is not None else None
        wanted: list[RenderedObject] = []
        if governor is not None and governor.flavor.namespaced:
            if not governor.enforcing:  # Audit and Stage keep what history left there
                verdict.skipped.append(name)
                continue
            assert namespace is not None
            verdict.governed += 1
            wanted, errors = world.wanted_in(governor, namespace) or ([], [])
            verdict.problems += [f"render error: {name}/: {e}" for e in errors]
        _compare(verdict, wanted, live_policies.get(name, {}), world)

    cluster = {key_of(item): item for path in CLUSTER_PATHS for item in _managed(api, path)}
    verdict.objects += len(cluster)
    wanted_cluster: list[RenderedObject] = []
    for profile in world.active_profiles():
        if not profile.flavor.namespaced and profile.enforcing:
            wanted_cluster += world.wanted_calico(profile) or []
    unchecked = {p.name for p in world.active_profiles() if not p.enforcing}
    cluster = {
        k: v for k, v in cluster.items() if v["metadata"]["labels"][PROFILE_LABEL] not in unchecked
    }
    _compare(verdict, wanted_cluster, cluster, world)

    if other_kinds:
        resources = listable_resources(api)
        verdict.kinds_listed = len(resources)
        for path, group, kind in resources:
            if (group, kind) in ALLOWED_KINDS:
                continue
            for item in _managed(api, path):
                meta = item["metadata"]
                where = f"{meta['namespace']}/" if meta.get("namespace") else ""
                verdict.problems.append(f"unexpected kind: {group}/{kind} {where}{meta['name']}")
    return verdict


def wait_nothing_lost(
    api: Api,
    timeout: float = 60.0,
    *,
    interval: float = 1.0,
    operator_namespace: str = "dpo-system",
    other_kinds: bool = True,
) -> Verdict:
    """Poll :func:`check` until it passes; fail with the last verdict's problems otherwise.

    The cheap part (namespaces, profiles and managed objects) is polled; the listing of every
    other kind runs once, on the passing pass, since nothing should ever create those.
    """
    deadline = time.monotonic() + timeout
    while True:
        verdict = check(api, operator_namespace=operator_namespace, other_kinds=False)
        if verdict.ok:
            if other_kinds:
                verdict = check(api, operator_namespace=operator_namespace)
                assert verdict.ok, f"nothing-lost check failed:\n{verdict}"
            return verdict
        if time.monotonic() > deadline:
            raise AssertionError(
                f"nothing-lost check still failing after {timeout:.0f}s:\n{verdict}"
            )
        time.sleep(interval)
