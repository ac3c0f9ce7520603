"""Resilience: kube-apiserver restarted mid-rollout, etcd down for 10 s (issue #7, part 2).

A control plane and an operator of this module's own, since both get restarted or starved here.
The resync period (30 s) is longer than the recoveries measured, so what they show is the watches
recovering, not a periodic full resync papering over a gap. Each test injects the fault while
the operator is writing, creates a namespace as soon as the API answers again (creating one during
the outage is impossible: the API is down), and ends with the nothing-lost check. The recovery
figures are printed (run with ``-s``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from dpo_dev.cluster import ControlPlane
from tests.nothing_lost import wait_nothing_lost
from tests.resilience import (
    HealthPoller,
    answers,
    assert_alive,
    covered,
    create_namespaces,
    managed_count,
    wait_answers,
    wait_until,
)
from tests.support import Api, OperatorProcess

pytestmark = pytest.mark.e2e

ROLLOUT = 300  # namespaces the profile selects in the apiserver-restart test
BURST = 60  # namespaces created just before etcd goes down
PROD = {"env": "prod"}
RESYNC = 30


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("outage-plane")) as control_plane:
        yield control_plane


@pytest.fixture(scope="module")
def cluster_api(plane: ControlPlane) -> Api:
    return Api(plane)


@pytest.fixture(scope="module")
def operator(
    plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("outage-operator") / "operator.log"
    with OperatorProcess(plane.kubeconfig, log, "--resync-period", str(RESYNC)) as process:
        yield process


def api_errors(
    operator: OperatorProcess, since: dict[str, float] | None = None
) -> dict[str, float]:
    """The operator's failed API calls by code (since an earlier reading)."""
    codes = ("connection", "429", "500", "502", "503", "504")
    found = {code: operator.metric("dpo_api_errors_total", code=code) for code in codes}
    found = {code: n - (since or {}).get(code, 0.0) for code, n in found.items()}
    return {code: n for code, n in found.items() if n}


def report(title: str, figures: dict[str, object]) -> None:
    print(f"\n[{title}]")
    for key, value in figures.items():
        shown = f"{value:.1f}" if isinstance(value, float) else value
        print(f"  {key}: {shown}")


def test_apiserver_restart_mid_rollout(
    plane: ControlPlane, cluster_api: Api, operator: OperatorProcess
) -> None:
    api = cluster_api
    create_namespaces(api, [f"roll-{i:03d}" for i in range(ROLLOUT)], PROD)
    wanted = 3 * ROLLOUT
    errors_before = api_errors(operator)
    with HealthPoller(operator) as health:
        api.profile("baseline", {"namespaceSelector": {"matchLabels": PROD}})
        started = time.monotonic()
        # Restart while the operator is writing: once a first slice of the rollout is done.
        wait_until(lambda: managed_count(api) >= wanted // 10, 60, 0.05, "the rollout to start")
        at_restart = managed_count(api)
        down = time.monotonic()
        # SIGKILL, a crash: a graceful SIGTERM took over 10 s under this load (then got SIGKILL
        # anyway); either way the clients see their connections cut.
        plane.stop_child("kube-apiserver", signal.SIGKILL)
        stopped = time.monotonic()
        plane.start_child("kube-apiserver")  # same port, certificates, tokens and etcd
        recovered = wait_answers(plane)
        api.namespace("late-restart", PROD)
        created = time.monotonic()
        late = wait_until(lambda: covered(api, "late-restart"), 60, what="late-restart covered")
        verdict = wait_nothing_lost(api, timeout=60)
        converged = time.monotonic()
    assert_alive(operator)
    report(
        "kube-apiserver restart mid-rollout",
        {
            "rollout": f"{ROLLOUT + 1} namespaces, {wanted + 3} NetworkPolicies",
            "objects written before the restart": f"{at_restart}/{wanted}",
            "restart began after profile creation (s)": down - started,
            "apiserver started -> answering again (s)": recovered - stopped,
            "late namespace created after recovery (s)": created - recovered,
            "late namespace covered after recovery (s)": late - recovered,
            "nothing lost (all converged) after recovery (s)": converged - recovered,
            "healthz": health.summary(),
            "operator API errors by code": api_errors(operator, errors_before),
            "final check": verdict.summary(),
        },
    )
    assert at_restart < wanted, "the rollout finished before the restart: nothing was tested"
    assert late - recovered < 60


def test_etcd_down_for_ten_seconds(
    plane: ControlPlane, cluster_api: Api, operator: OperatorProcess
) -> None:
    api = cluster_api
    if api.get_profile("baseline") is None:  # when run alone
        api.profile("baseline", {"namespaceSelector": {"matchLabels": PROD}})
    wait_nothing_lost(api, timeout=60, other_kinds=False)  # start from a converged cluster
    errors_before = api_errors(operator)
    with HealthPoller(operator) as health:
        create_namespaces(api, [f"burst-{i:03d}" for i in range(BURST)], PROD)
        before = managed_count(api)
        down = time.monotonic()
        plane.stop_etcd(signal.SIGKILL)  # a crash: instant, no graceful shutdown
        assert not answers(plane)
        time.sleep(10.0 - (time.monotonic() - down))
        plane.start_etcd()
        etcd_up = time.monotonic()
        recovered = wait_answers(plane)
        api.namespace("late-etcd", PROD)
        created = time.monotonic()
        late = wait_until(lambda: covered(api, "late-etcd"), 60, what="late-etcd covered")
        verdict = wait_nothing_lost(api, timeout=60)
        converged = time.monotonic()
    assert_alive(operator)
    during = [s for t, s in health.samples if down <= t <= recovered]
    report(
        "etcd down for 10 s",
        {
            "burst": f"{BURST} namespaces created just before; {before} policies at the crash",
            "etcd down (s)": etcd_up - down,
            "etcd restarted -> apiserver answering (s)": recovered - etcd_up,
            "late namespace created after recovery (s)": created - recovered,
            "late namespace covered after recovery (s)": late - recovered,
            "nothing lost (all converged) after recovery (s)": converged - recovered,
            "healthz during the outage": f"{during.count(200)}/{len(during)} probes 200",
            "operator API errors by code": api_errors(operator, errors_before),
            "healthz": health.summary(),
            "final check": verdict.summary(),
        },
    )
    assert late - recovered < 60
