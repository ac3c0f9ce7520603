"""End-to-end: drift on managed objects is detected and repaired (Enforce) or reported (Audit)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.support import MANAGED, Api, ApiStatus, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e

BUILTINS = {"dpo-deny-all", "dpo-allow-dns", "dpo-allow-kube-system"}


@pytest.fixture
def governed(api: Api, operator_process: OperatorProcess, unique_name: str) -> tuple[str, str]:
    """A profile and one namespace it governs, converged."""
    namespace = f"{unique_name}-ns"
    api.namespace(namespace, {"dpo-test": unique_name})
    api.profile(unique_name, {"namespaceSelector": {"matchLabels": {"dpo-test": unique_name}}})
    wait_for(lambda: set(api.policies(namespace, MANAGED)) == BUILTINS, what="baseline")
    return unique_name, namespace


def writes(process: OperatorProcess) -> float:
    return process.metric("dpo_api_writes_total", resource="networkpolicies")


def settle(process: OperatorProcess, quiet: float = 1.0) -> float:
    """Wait until the operator has made no NetworkPolicy write for ``quiet`` seconds."""
    last = writes(process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = writes(process)
        if now == last:
            return now
        last = now
    raise AssertionError("the operator kept writing")


def test_deleted_policy_comes_back_with_one_write(
    api: Api, operator_process: OperatorProcess, governed: tuple[str, str]
) -> None:
    profile, namespace = governed
    before_writes = settle(operator_process)
    before = operator_process.metric("dpo_drift_repaired_total", profile=profile, kind="deleted")
    old_uid = api.policies(namespace)["dpo-deny-all"]["metadata"]["uid"]
    api.delete(api.policy_path(namespace, "dpo-deny-all"))
    wait_for(
        lambda: (
            api.policies(namespace).get("dpo-deny-all", {}).get("metadata", {}).get("uid")
            not in (None, old_uid)
        ),
        what="dpo-deny-all to be re-created",
    )
    wait_for(
        lambda: (
            operator_process.metric("dpo_drift_repaired_total", profile=profile, kind="deleted")
            == before + 1
        ),
        what="the repair to be counted",
    )
    assert settle(operator_process) - before_writes == 1


def test_edited_policy_is_restored_with_one_write(
    api: Api, operator_process: OperatorProcess, governed: tuple[str, str]
) -> None:
    profile, namespace = governed
    before_writes = settle(operator_process)
    path = api.policy_path(namespace, "dpo-allow-dns")
    original = api.get(path)["spec"]
    api.patch(path, {"spec": {"egress": [{}]}})  # "allow all egress": the classic debug edit
    wait_for(lambda: api.get(path)["spec"] == original, what="the DNS rule to be restored")
    wait_for(
        lambda: operator_process.metric(
            "dpo_drift_detected_total", profile=profile, kind="modified"
        ) >= 1,
        what="the drift to be counted",
    )  # fmt: skip
    assert settle(operator_process) - before_writes == 1
    wait_for(
        lambda: [e for e in api.events_for(profile) if e["reason"] == "DriftRepaired"],
        what="a DriftRepaired Event",
    )


def test_a_burst_of_repairs_is_one_event_counting_them_all(
    api: Api, operator_process: OperatorProcess, unique_name: str
) -> None:
    """Five namespaces' deny-alls deleted at once: five repairs, one DriftRepaired Event (posted
    at the first repair, its count brought to five within the 10 s report interval), so the
    Event writes stay at two however many repairs a burst holds."""
    namespaces = [f"{unique_name}-{i}" for i in range(5)]
    for namespace in namespaces:
        api.namespace(namespace, {"dpo-test": unique_name})
    api.profile(unique_name, {"namespaceSelector": {"matchLabels": {"dpo-test": unique_name}}})
    for namespace in namespaces:
        wait_for(lambda n=namespace: set(api.policies(n, MANAGED)) == BUILTINS, what="baseline")
    for namespace in namespaces:
        api.delete(api.policy_path(namespace, "dpo-deny-all"))

    def repaired() -> list[dict[str, Any]]:
        return [e for e in api.events_for(unique_name) if e["reason"] == "DriftRepaired"]

    wait_for(lambda: [e["count"] for e in repaired()] == [5], timeout=30, what="count 5")
    (event,) = repaired()
    assert "more like this since the last report, 5 in all" in event["message"]
    assert all(set(api.policies(n, MANAGED)) == BUILTINS for n in namespaces)


def test_relabelled_policy_is_restored(api: Api, governed: tuple[str, str]) -> None:
    profile, namespace = governed
    path = api.policy_path(namespace, "dpo-deny-all")
    api.patch(path, {"metadata": {"labels": {"defaultpolicy.dev/profile": "someone-else"}}})
    wait_for(
        lambda: api.get(path)["metadata"]["labels"]["defaultpolicy.dev/profile"] == profile,
        what="our labels to be restored",
    )


def test_unlabelled_policy_becomes_a_reported_conflict(api: Api, governed: tuple[str, str]) -> None:
    """Without our managed-by label and our ownerReference the object is no longer ours:
    reported, not taken over (with the ownerReference it is still ours and repaired in place,
    see test_resync_e2e)."""
    profile, namespace = governed
    path = api.policy_path(namespace, "dpo-deny-all")
    api.patch(
        path,
        {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}, "ownerReferences": None}},
    )
    found = wait_for(
        lambda: (
            (c := condition(api.get_profile(profile), "Degraded")).get("reason") == "Conflict" and c
        ),
        what="a Conflict condition",
    )
    assert f"{namespace}/dpo-deny-all" in found["message"]
    labels = api.get(path)["metadata"]["labels"]
    assert "app.kubernetes.io/managed-by" not in labels


def test_audit_mode_reports_drift_and_repairs_nothing(
    api: Api, operator_process: OperatorProcess, governed: tuple[str, str]
) -> None:
    profile, namespace = governed
    api.patch_profile(profile, {"mode": "Audit"})
    wait_for(lambda: condition(api.get_profile(profile), "Ready").get("reason") == "Audited",
             what="Audit mode")  # fmt: skip
    path = api.policy_path(namespace, "dpo-allow-dns")
    api.patch(path, {"spec": {"egress": [{}]}})
    api.delete(api.policy_path(namespace, "dpo-deny-all"))
    status = wait_for(
        lambda: (s := api.get_profile(profile)["status"]).get("driftedObjects") == 2 and s,
        what="two drifted objects in status",
    )
    assert "2 object(s) missing or drifted" in condition({"status": status}, "Ready")["message"]
    wait_for(lambda: operator_process.metric("dpo_drifted_objects", profile=profile) == 2,
             what="the drifted-objects gauge")  # fmt: skip
    time.sleep(1.0)
    assert api.get(path)["spec"]["egress"] == [{}]
    assert "dpo-deny-all" not in api.policies(namespace)


def test_a_rival_that_keeps_reverting_is_backed_off(
    api: Api, operator_process: OperatorProcess, governed: tuple[str, str]
) -> None:
    profile, namespace = governed
    path = api.policy_path(namespace, "dpo-allow-dns")
    stop = threading.Event()
    rival_edits = 0

    def rival() -> None:
        nonlocal rival_edits
        while not stop.is_set():
            try:
                spec: dict[str, Any] = api.get(path)["spec"]
                if spec.get("egress") != [{}]:
                    api.patch(path, {"spec": {"egress": [{}]}})
                    rival_edits += 1
            except ApiStatus:
                pass
            time.sleep(0.05)

    before = writes(operator_process)
    thread = threading.Thread(target=rival, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: operator_process.metric("dpo_repair_backoffs_total", profile=profile) >= 1,
            what="backoff to engage",
        )
        found = wait_for(
            lambda: (c := condition(api.get_profile(profile), "Degraded")).get("reason")
            == "Contested" and c,
            what="a Contested condition",
        )  # fmt: skip
        assert f"{namespace}/dpo-allow-dns" in found["message"]
        time.sleep(8.0)
    finally:
        stop.set()
        thread.join()
    operator_writes = writes(operator_process) - before
    # In ~10 s of fighting, a hot loop would write hundreds of times; backoff keeps it to a few
    # immediate repairs plus one per doubling delay (2 s, 4 s, 8 s ...).
    assert operator_writes <= 8, operator_writes
    assert rival_edits <= operator_writes + 1
    wait_for(
        lambda: [e for e in api.events_for(profile) if e["reason"] == "RepairBackoff"],
        what="a RepairBackoff event",
    )
    # Once the rival stops, the next backed-off repair wins and the object stays repaired.
    wait_for(lambda: api.get(path)["spec"].get("egress") != [{}], timeout=40,
             what="the final repair")  # fmt: skip
