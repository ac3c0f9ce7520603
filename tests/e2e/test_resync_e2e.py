"""End-to-end: full resyncs and restarts make zero writes; health endpoints tell the truth.

Write counts come from kube-apiserver's own ``apiserver_request_total`` on a control plane of
this module's own, so nothing but the operator under test writes there.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpo_dev.cluster import ControlPlane
from tests.support import MANAGED, Api, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e

WATCHED = ("networkpolicies", "defaultpolicyprofiles", "namespaces", "events")
NAMESPACES = 30


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("resync-plane")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def cluster_api(plane: ControlPlane) -> Api:
    return Api(plane)


def apiserver_writes(api: Api) -> dict[str, float]:
    """Mutating requests the apiserver served, by resource (only the kinds we care about)."""
    request = urllib.request.Request(api.server + "/metrics")
    request.add_header("Authorization", f"Bearer {api.token}")
    with urllib.request.urlopen(request, context=api.context, timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = dict.fromkeys(WATCHED, 0.0)
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        verb = re.search(r'verb="(\w+)"', line)
        resource = re.search(r'resource="(\w+)"', line)
        mutating = verb is not None and verb.group(1) in ("POST", "PUT", "PATCH", "DELETE")
        if mutating and resource is not None and resource.group(1) in totals:
            totals[resource.group(1)] += float(line.rpartition(" ")[2])
    return totals


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def converged(
    plane: ControlPlane, cluster_api: Api, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """An operator with a 2 s resync period, converged on a profile over 30 namespaces."""
    api = cluster_api
    for i in range(NAMESPACES):
        api.namespace(f"app-{i:02d}", {"env": "prod"})
    api.profile("baseline", {"namespaceSelector": {"matchLabels": {"env": "prod"}}})
    log = tmp_path_factory.mktemp("resync-operator") / "operator.log"
    process = OperatorProcess(plane.kubeconfig, log, "--resync-period", "2")
    process.writes_before = apiserver_writes(api)  # type: ignore[attr-defined]
    process.start()
    try:
        wait_for(
            lambda: all(len(api.policies(f"app-{i:02d}", MANAGED)) == 3 for i in range(NAMESPACES)),
            timeout=60,
            what="convergence",
        )
        wait_for(lambda: condition(api.get_profile("baseline"), "Ready").get("status") == "True",
                 what="Ready")  # fmt: skip
        yield process
    finally:
        process.stop()


def quiet_writes(api: Api, seconds: float) -> dict[str, float]:
    """Writes seen by the apiserver over ``seconds`` of doing nothing."""
    before = apiserver_writes(api)
    time.sleep(seconds)
    after = apiserver_writes(api)
    return {k: after[k] - before[k] for k in WATCHED}


def test_first_convergence_writes_one_object_each_and_never_a_namespace(
    cluster_api: Api, converged: OperatorProcess
) -> None:
    before: dict[str, float] = converged.writes_before  # type: ignore[attr-defined]
    after = apiserver_writes(cluster_api)
    writes = {k: after[k] - before[k] for k in WATCHED}
    # One write per policy, none to namespaces, and a few to the profile: kopf's finalizer and
    # bookkeeping annotation, and the status as it goes from Reconciling to Ready.
    assert writes["networkpolicies"] == 3 * NAMESPACES
    assert writes["namespaces"] == 0
    assert writes["defaultpolicyprofiles"] <= 6, writes


def test_periodic_full_resync_makes_zero_writes(
    cluster_api: Api, converged: OperatorProcess
) -> None:
    first = converged.metric("dpo_last_full_resync_timestamp_seconds")
    wait_for(
        lambda: converged.metric("dpo_last_full_resync_timestamp_seconds") > first,
        what="a full resync",
    )
    delta = quiet_writes(cluster_api, 5.0)  # spans at least two more resyncs
    assert converged.metric("dpo_last_full_resync_timestamp_seconds") > first
    assert delta == dict.fromkeys(WATCHED, 0.0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_restart_with_nothing_to_do_makes_zero_writes(
    cluster_api: Api, converged: OperatorProcess, sig: int
) -> None:
    before = apiserver_writes(cluster_api)
    converged.stop(sig)
    converged.start()  # returns once /readyz says the first full pass is done
    time.sleep(3.0)
    after = apiserver_writes(cluster_api)
    assert {k: after[k] - before[k] for k in WATCHED} == dict.fromkeys(WATCHED, 0.0)


def test_health_endpoints(converged: OperatorProcess) -> None:
    base = f"http://127.0.0.1:{converged.health_port}"
    assert http_status(f"{base}/readyz") == 200
    assert http_status(f"{base}/healthz") == 200


def test_a_policy_stripped_of_our_label_is_still_ours_and_repaired(
    cluster_api: Api, converged: OperatorProcess
) -> None:
    """Removing the managed-by label does not take an object out of management.

    The object leaves the label-selected watch (which reports it as deleted), so the operator
    re-creates it, meets it (409), recognises it by its ownerReference to the profile, and
    restores the labels in place: same object, no Conflict.
    """
    path = cluster_api.policy_path("app-01", "dpo-deny-all")
    uid = cluster_api.get(path)["metadata"]["uid"]
    cluster_api.patch(path, {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}})
    wait_for(lambda: "dpo-deny-all" in cluster_api.policies("app-01", MANAGED),
             timeout=10, what="the labels to be restored")  # fmt: skip
    assert cluster_api.get(path)["metadata"]["uid"] == uid  # repaired, not re-created
    conflicts = [e for e in cluster_api.events_for("baseline") if e["reason"] == "Conflict"]
    assert conflicts == []
    assert condition(cluster_api.get_profile("baseline"), "Degraded")["reason"] == "AsExpected"


def test_a_resync_catches_what_the_watch_could_not_see(
    cluster_api: Api, converged: OperatorProcess
) -> None:
    """A policy stripped of our label and owner is foreign; once it goes, the resync (which
    lists what the watch no longer sees) puts ours back."""
    path = cluster_api.policy_path("app-00", "dpo-deny-all")
    release = {"labels": {"app.kubernetes.io/managed-by": None}, "ownerReferences": None}
    cluster_api.patch(path, {"metadata": release})
    wait_for(lambda: condition(cluster_api.get_profile("baseline"), "Degraded").get("reason")
             == "Conflict", what="the conflict")  # fmt: skip
    cluster_api.delete(path)
    wait_for(lambda: "dpo-deny-all" in cluster_api.policies("app-00", MANAGED),
             timeout=15, what="the resync to re-create it")  # fmt: skip
    wait_for(lambda: condition(cluster_api.get_profile("baseline"), "Degraded").get("reason")
             == "AsExpected", what="the conflict to clear")  # fmt: skip


def test_log_has_no_tracebacks(converged: OperatorProcess) -> None:
    text = Path(converged.log_path).read_text()
    assert "Traceback" not in text, converged.log_tail()
