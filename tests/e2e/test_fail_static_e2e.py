"""Fail static (issue #7, part 8): down removes nothing, invalid edits keep the last good objects,
and the CRD pulled from under a running operator.

A control plane and an operator of this module's own (``--resync-period 3``: resyncs happen
during the observation windows). The tests run in file order and share the cluster; each ends
with the nothing-lost check (``tests.nothing_lost``) where the cluster is in a checkable state.

What happens when the CRD is deleted while the operator runs (observed, then pinned below):

1. The apiserver marks the CRD terminating and deletes every profile; each keeps our finalizer.
2. The reconciler's informer sees the profiles' ``deletionTimestamp``: a ``Delete`` profile's
   objects are deleted within a second or two (the whole baseline goes with the CRD), an
   ``Orphan`` profile's stay -- released if kopf ran that finalizer before step 3, else still
   labelled as ours (it varies from run to run).
3. Discovery now lists the terminating resource with only get/list/watch/delete, so kopf logs
   "Non-patchable resources will not be served" and stops handling profiles: the finalizer is
   never removed, the profiles never go, and the CRD stays terminating (it cannot be re-created
   either: "create not allowed while custom resource definition is terminating"). The only way
   out is removing the finalizers by hand (what :func:`strip_finalizers` does).
4. Once the CRD is gone, the profiles' informer gets 404 and backs off (up to 30 s; the log is
   not flooded, the process stays up) -- but the periodic resync waits for every informer to
   re-list, hangs, and ``/healthz`` turns 500 ("full resync overdue") after three periods, so a
   kubelet would restart the operator, which cannot start without the CRD: a crash loop.
5. Re-creating the CRD and a profile: the informer's next attempt lists it and everything
   converges again (within its back-off, at most ~30 s).
"""

from __future__ import annotations

import collections
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from default_policy_operator.core.normalize import spec_hash
from default_policy_operator.core.objects import calico_policy_name
from dpo_dev.cluster import ControlPlane
from tests.nothing_lost import wait_nothing_lost
from tests.resilience import HealthPoller, http_status
from tests.support import (
    GNPS,
    MANAGED,
    PROFILES,
    Api,
    ApiStatus,
    OperatorProcess,
    condition,
    wait_for,
)

pytestmark = pytest.mark.e2e

CRD_FILE = (
    Path(__file__).resolve().parents[2]
    / "manifests"
    / "crd"
    / "defaultpolicy.dev_defaultpolicyprofiles.yaml"
)
CRD = (
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
    "defaultpolicyprofiles.defaultpolicy.dev"
)
RESYNC = 3.0
MONITORING = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
spec:
  podSelector:
    matchLabels:
      team: {{ namespace.name }}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: monitoring
      ports:
        - port: 9090
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("fail-static-plane")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def cluster(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("fail-static-operator") / "operator.log"
    with OperatorProcess(plane.kubeconfig, log, "--resync-period", str(RESYNC)) as process:
        yield process


def managed(api: Api) -> dict[str, tuple[str, str]]:
    """Every managed object in the cluster: path-like key -> (uid, resourceVersion)."""
    out = {}
    items = api.request(
        "GET", f"/apis/networking.k8s.io/v1/networkpolicies?labelSelector={MANAGED}"
    )
    for item in items["items"]:
        meta = item["metadata"]
        out[f"{meta['namespace']}/{meta['name']}"] = (meta["uid"], meta["resourceVersion"])
    for item in api.request("GET", f"{GNPS}?labelSelector={MANAGED}")["items"]:
        meta = item["metadata"]
        out[meta["name"]] = (meta["uid"], meta["resourceVersion"])
    return out


def health_text(process: OperatorProcess) -> str:
    try:
        url = f"http://127.0.0.1:{process.health_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return f"{response.status} {response.read().decode().strip()}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode().strip()}"


def alive(process: OperatorProcess) -> None:
    assert process.process is not None
    assert process.process.poll() is None, f"the operator exited:\n{process.log_tail()}"


# -- the operator down removes nothing ----------------------------------------------------------


def test_operator_down_removes_nothing(cluster: Api, operator: OperatorProcess) -> None:
    api = cluster
    for i in range(10):
        api.namespace(f"fs-{i}", {"env": "prod"})
    for i in range(3):
        api.namespace(f"fs-cal-{i}", {"calico": "yes"})
    api.profile(
        "base",
        {
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "customPolicies": [{"name": "allow-monitoring", "template": MONITORING}],
        },
    )
    api.profile(
        "cal",
        {
            "namespaceSelector": {"matchLabels": {"calico": "yes"}},
            "flavor": "CalicoGlobalNetworkPolicy",
        },
    )
    wait_nothing_lost(api, timeout=60)
    before = managed(api)
    assert len(before) == 10 * 4 + 3

    operator.stop()  # SIGTERM: the graceful path, where a clean-up would be tempting
    assert managed(api) == before, "stopping the operator changed managed objects"
    # While it is down: a namespace arrives, another leaves the selector, a profile is deleted
    # (its finalizer waits). Nothing may disappear before the operator is back.
    api.namespace("fs-late", {"env": "prod"})
    api.label_namespace("fs-9", {"env": "dev"})
    api.delete_profile("cal")
    time.sleep(3)
    assert managed(api) == before, "objects changed while the operator was down"

    started = time.monotonic()
    operator.start()
    wait_for(
        lambda: (
            set(api.policies("fs-late", MANAGED))
            == {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system", "dpo-allow-monitoring"}
        ),
        timeout=60,
        what="the namespace created while down to be covered",
    )
    covered = time.monotonic() - started
    wait_for(lambda: api.get_profile("cal") is None, timeout=60, what="cal's finalizer")
    verdict = wait_nothing_lost(api, timeout=60)
    after = managed(api)
    cal_names = {
        calico_policy_name("cal", p) for p in ("deny-all", "allow-dns", "allow-kube-system")
    }
    kept = {k: v for k, v in before.items() if not k.startswith("fs-9/") and k not in cal_names}
    assert {k: after.get(k) for k in kept} == kept, "the restart rewrote or re-created objects"
    print(f"\n  namespace created while down covered {covered:.1f}s after the restart")
    print(f"  {len(kept)} objects untouched across stop and restart: {verdict.summary()}")


# -- an invalid edit keeps the last good objects, byte for byte ---------------------------------

GOOD = {
    "namespaceSelector": {"matchLabels": {"tier": "keep"}},
    "customPolicies": [{"name": "allow-monitoring", "template": MONITORING}],
}
CLUSTER_ROLE_BINDING = (
    "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nspec: {}\n"
)
SLOW = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n"
    "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
)


def custom(template: str) -> dict[str, Any]:
    return {"customPolicies": [{"name": "allow-monitoring", "template": template}]}


#: name -> (spec changes, what the Degraded message must say). The CRD accepts every one of them.
INVALID = {
    "syntax-error": (custom("{% if %}"), "template syntax error"),
    "blank-template": (custom("   \n  "), "must be a non-empty string"),
    "other-kind": (custom(CLUSTER_ROLE_BINDING), "may only create networking.k8s.io/v1"),
    "too-slow": (custom(SLOW), "the time limit"),
    "end-port-below-port": (
        {"policies": {"allowDNS": {"ports": [{"port": 53, "endPort": 10}]}}},
        "endPort must be a number between port and 65535",
    ),
    "port-name-uppercase": (
        {"policies": {"allowDNS": {"ports": [{"protocol": "UDP", "port": "DNS"}]}}},
        "port must be 1-65535 or a port name",
    ),
    "selector-value": (
        {"namespaceSelector": {"matchLabels": {"tier": "keep", "bad": "not a label value!"}}},
        "not a valid label value",
    ),
}


def replace_spec(api: Api, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = api.request(
        "PATCH",
        f"{PROFILES}/{name}",
        [{"op": "replace", "path": "/spec", "value": spec}],
        "application/json-patch+json",
    )
    return result


def versions(api: Api, namespaces: list[str]) -> dict[str, tuple[str, str]]:
    return {k: v for k, v in managed(api).items() if k.split("/")[0] in namespaces}


def test_invalid_edits_keep_the_last_good_objects(cluster: Api, operator: OperatorProcess) -> None:
    api = cluster
    names = [f"keep-{i}" for i in range(4)]
    for name in names:
        api.namespace(name, {"tier": "keep"})
    api.profile("keep", GOOD)
    wait_nothing_lost(api, timeout=60)
    good = versions(api, names)
    assert len(good) == 4 * len(names)
    print()
    for case, (change, fragment) in INVALID.items():
        body = replace_spec(api, "keep", {**GOOD, **change})
        generation = body["metadata"]["generation"]

        def reported(want: str = fragment, gen: int = generation) -> dict[str, Any] | None:
            profile = api.get_profile("keep") or {}
            found = condition(profile, "Degraded")
            current = (profile.get("status") or {}).get("observedGeneration") == gen
            ok = current and found.get("status") == "True" and want in found.get("message", "")
            return found if ok else None

        started = time.monotonic()
        found = wait_for(reported, timeout=30, what=f"Degraded for {case}")
        assert found["reason"] == "InvalidSpec", found
        assert condition(api.get_profile("keep"), "Ready")["status"] == "False"
        assert versions(api, names) == good, f"{case}: the last good objects changed"
        print(f"  {case}: Degraded in {time.monotonic() - started:.2f}s: {found['message'][:160]}")

    # Still invalid: a namespace that arrives now gets the last good version's policies.
    api.namespace("keep-new", {"tier": "keep"})
    wait_for(
        lambda: len(api.policies("keep-new", MANAGED)) == 4,
        timeout=30,
        what="keep-new to get the last good policies",
    )
    fresh = api.policies("keep-new", MANAGED)
    sibling = api.policies("keep-0", MANAGED)
    for policy in ("dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"):
        kind = "NetworkPolicy"
        assert spec_hash(kind, fresh[policy]["spec"]) == spec_hash(kind, sibling[policy]["spec"])
    names.append("keep-new")
    good = versions(api, names)

    # A restart while the profile is invalid: the new process finds the last valid spec recorded
    # on the profile, so neither a lower-priority profile nor the restart changes anything.
    wait_for(
        lambda: (
            (api.get_profile("keep") or {})
            .get("metadata", {})
            .get("annotations", {})
            .get("defaultpolicy.dev/last-valid-spec")
        ),
        timeout=30,
        what="the last valid spec to be recorded on the profile",
    )
    api.profile(
        "fallback",
        {"namespaceSelector": {"matchLabels": {"tier": "keep"}}, "priority": -10,
         "policies": {"allowDNS": {"enabled": False}}},
    )  # fmt: skip
    operator.stop()
    operator.start()
    wait_for(operator.ready, timeout=60, what="the restarted operator to be ready")
    time.sleep(RESYNC + 1)  # a full resync: its writes, if any, would show below
    assert versions(api, names) == good, "a restart with an invalid profile changed objects"
    found = condition(api.get_profile("keep"), "Degraded")
    assert found["status"] == "True"
    assert found["reason"] == "InvalidSpec"
    api.namespace("keep-after-restart", {"tier": "keep"})
    wait_for(
        lambda: len(api.policies("keep-after-restart", MANAGED)) == 4,
        timeout=30,
        what="a namespace created after the restart to get the last good version's policies",
    )
    labels = {p["metadata"]["labels"]["defaultpolicy.dev/profile"]
              for p in api.policies("keep-after-restart", MANAGED).values()}  # fmt: skip
    assert labels == {"keep"}, labels
    names.append("keep-after-restart")
    good = versions(api, names)
    api.delete_profile("fallback")

    replace_spec(api, "keep", GOOD)
    wait_for(
        lambda: condition(api.get_profile("keep"), "Ready").get("status") == "True",
        timeout=30,
        what="Ready after the fix",
    )
    wait_nothing_lost(api, timeout=60)
    assert versions(api, names) == good, "fixing the profile rewrote unchanged objects"


# -- the CRD deleted under a running operator ---------------------------------------------------

#: What the observation window saw, for the liveness check that follows it.
OBSERVED: dict[str, Any] = {}


def crd_state(api: Api) -> str:
    crd = api.get(CRD)
    if crd is None:
        return "gone"
    return "terminating" if crd["metadata"].get("deletionTimestamp") else "present"


def strip_finalizers(api: Api) -> int:
    """The manual way out of a CRD stuck terminating: drop the profiles' finalizers."""
    stripped = 0
    try:
        items = api.request("GET", PROFILES)["items"]
    except ApiStatus:
        return 0
    for item in items:
        if item["metadata"].get("finalizers"):
            api.patch(f"{PROFILES}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})
            stripped += 1
    return stripped


def ensure_crd_deleted(api: Api) -> None:
    if crd_state(api) == "present":
        api.delete(CRD)
        time.sleep(2)
    if crd_state(api) == "terminating":
        strip_finalizers(api)
    wait_for(lambda: crd_state(api) == "gone", timeout=60, what="the CRD to go")


def test_deleting_the_crd_completes_while_the_operator_runs(
    cluster: Api, operator: OperatorProcess
) -> None:
    api = cluster
    for i in range(3):
        api.namespace(f"crd-del-{i}", {"crd": "delete"})
        api.namespace(f"crd-orph-{i}", {"crd": "orphan"})
    api.profile("crd-delete", {"namespaceSelector": {"matchLabels": {"crd": "delete"}}})
    api.profile(
        "crd-orphan",
        {"namespaceSelector": {"matchLabels": {"crd": "orphan"}}, "deletionPolicy": "Orphan"},
    )
    wait_nothing_lost(api, timeout=60)
    lines = len(operator.log_path.read_text().splitlines())
    api.delete(CRD)
    started = time.monotonic()
    try:
        wait_for(lambda: crd_state(api) == "gone", timeout=10, what="the CRD deletion to finish")
    finally:
        states = collections.Counter(
            "ours"
            if "app.kubernetes.io/managed-by" in p["metadata"].get("labels", {})
            else "released"
            for i in range(3)
            for p in api.policies(f"crd-orph-{i}").values()
        )
        deleted = sum(len(api.policies(f"crd-del-{i}")) for i in range(3))
        log = operator.log_path.read_text().splitlines()[lines:]
        print(
            f"\n  {time.monotonic() - started:.0f}s after deleting the CRD: {crd_state(api)}; "
            f"Delete profile's objects left {deleted}; Orphan profile's objects {dict(states)}; "
            f"operator log: {[line.split(': ', 1)[-1][:100] for line in log]}"
        )
    assert states == {"released": 9}


def test_without_the_crd_the_operator_stays_up_and_quiet(
    cluster: Api, operator: OperatorProcess
) -> None:
    api = cluster
    ensure_crd_deleted(api)
    alive(operator)
    lines = len(operator.log_path.read_text().splitlines())
    window = 3 * RESYNC + 5
    with HealthPoller(operator, interval=0.5) as health:
        time.sleep(window)
    alive(operator)
    new = operator.log_path.read_text().splitlines()[lines:]
    OBSERVED["healthz"] = health_text(operator)
    rate = len(new) / window
    codes = collections.Counter(status for _, status in health.samples)
    OBSERVED["codes"] = codes
    print(
        f"\n  {window:.0f}s without the CRD: {len(new)} log lines ({rate:.2f}/s), "
        f"/healthz answers {dict(codes)} (last: {OBSERVED['healthz']!r}); "
        f"last lines: {[n[-120:] for n in new[-2:]]}"
    )
    assert 0 not in codes, "/healthz stopped answering"
    assert rate < 1.0, f"the log is flooded: {rate:.1f} lines/s"
    assert http_status(f"http://127.0.0.1:{operator.health_port}/readyz") in (200, 503)


def test_without_the_crd_liveness_stays_green(cluster: Api, operator: OperatorProcess) -> None:
    codes = OBSERVED.get("codes")
    if codes is None:  # run on its own
        ensure_crd_deleted(cluster)
        with HealthPoller(operator, interval=0.5) as health:
            time.sleep(3 * RESYNC + 5)
        codes = collections.Counter(status for _, status in health.samples)
    assert set(codes) == {200}, f"{dict(codes)}; {OBSERVED.get('healthz')}"


def test_recreating_the_crd_recovers(
    plane: ControlPlane, cluster: Api, operator: OperatorProcess
) -> None:
    api = cluster
    ensure_crd_deleted(api)
    plane.apply_file(CRD_FILE)
    wait_for(
        lambda: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in ((api.get(CRD) or {}).get("status") or {}).get("conditions") or []
        ),
        timeout=30,
        what="the CRD to be established",
    )
    started = time.monotonic()
    wait_for(lambda: _create_again(api), timeout=30, what="profiles to be accepted again")
    api.namespace("crd-late", {"crd": "delete"})
    verdict = wait_nothing_lost(api, timeout=90)
    took = time.monotonic() - started
    wait_for(
        lambda: http_status(f"http://127.0.0.1:{operator.health_port}/healthz") == 200,
        timeout=3 * RESYNC + 10,
        what="/healthz to recover",
    )
    alive(operator)
    print(f"\n  converged {took:.1f}s after re-creating the CRD: {verdict.summary()}")
    # kopf serves the resource again: deleting a profile runs the finalizer once more.
    api.delete_profile("crd-delete")
    wait_for(lambda: api.get_profile("crd-delete") is None, timeout=30, what="the finalizer")
    wait_nothing_lost(api, timeout=30)


def _create_again(api: Api) -> bool:
    try:
        if api.get_profile("crd-delete") is None:
            api.profile("crd-delete", {"namespaceSelector": {"matchLabels": {"crd": "delete"}}})
    except ApiStatus:
        return False
    return True
