"""Resilience: connection resets, stalls, 503 + Retry-After and stale watches (issue #7, part 4b).

The operator of this module talks to its own control plane through
:class:`tests.faultproxy.FaultProxy`, a TLS-terminating proxy on loopback (its own throwaway
certificate, whose CA is in the operator's kubeconfig) that injects the faults while a rollout
is under way. The proxy records every request, so the tests can tell a back-off from a hot loop
and measure how far apart the retries of one request are.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from dpo_dev.cluster import ControlPlane
from tests.faultproxy import FaultProxy, Record, Rule
from tests.nothing_lost import wait_nothing_lost
from tests.resilience import HealthPoller, assert_alive, create_namespaces, http_get
from tests.support import Api, OperatorProcess

pytestmark = pytest.mark.e2e

RETRY_AFTER = 2  # seconds, in the injected 503s
#: The operator's own client's User-Agent ("default-policy-operator/x", requests and watches);
#: kopf's says "kopf/x". kopf is left alone where a test measures the operator's own client.
OWN_CLIENT = "default-policy-operator/"


#: A watch timeout short enough for a test to see staleness (the operator's default is 60 s, and
#: its liveness calls a watch stale after three timeouts without a word from the server).
WATCH_TIMEOUT = 5


@dataclass
class Setup:
    plane: ControlPlane
    api: Api
    proxy: FaultProxy
    operator: OperatorProcess


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("faults")
    with (
        ControlPlane(work / "plane") as plane,
        FaultProxy(plane.server, plane.ca_file, work / "proxy") as proxy,
    ):
        api = Api(plane)
        args = ["--resync-period", "30", "--watch-timeout", str(WATCH_TIMEOUT)]
        kubeconfig = proxy.kubeconfig(plane.kubeconfig, work / "kubeconfig")
        operator = OperatorProcess(kubeconfig, work / "operator.log", *args)
        operator.start()
        try:
            yield Setup(plane, api, proxy, operator)
        finally:
            operator.stop()


def errors(operator: OperatorProcess) -> dict[str, float]:
    codes = ("connection", "429", "500", "502", "503", "504")
    return {c: operator.metric("dpo_api_errors_total", code=c) for c in codes}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def spacings(records: list[Record]) -> dict[str, list[float]]:
    """Per request (method, path, object name), the gaps between its consecutive attempts."""
    times: dict[str, list[float]] = defaultdict(list)
    for record in records:
        times[record.key].append(record.at)
    return {
        key: [b - a for a, b in itertools.pairwise(ts)] for key, ts in times.items() if len(ts) > 1
    }


def rollout(s: Setup, tag: str, count: int) -> list[str]:
    """``count`` namespaces labelled ``env=<tag>``; the profile selecting them comes later."""
    names = [f"{tag}-{i:03d}" for i in range(count)]
    create_namespaces(s.api, names, {"env": tag})
    return names


def test_resets_and_stalls_during_a_rollout(setup: Setup) -> None:
    s = setup
    rollout(s, "rs", 80)
    before = errors(s.operator)
    faults = (
        Rule("reset", probability=0.3, watches=None),
        Rule("stall", seconds=3.0, probability=0.2, watches=False),
    )
    with HealthPoller(s.operator) as health:
        start = time.monotonic()
        s.proxy.set_rules(*faults)
        s.proxy.drop_connections()  # every open watch, too
        s.api.profile("rs", {"namespaceSelector": {"matchLabels": {"env": "rs"}}})
        time.sleep(5.0)
        s.proxy.drop_connections()
        time.sleep(5.0)
        # Then nothing gets through at all for 5 s.
        s.proxy.set_rules(Rule("reset", watches=None))
        s.proxy.drop_connections()
        outage = time.monotonic()
        time.sleep(5.0)
        s.proxy.clear()
        healed = time.monotonic()
        verdict = wait_nothing_lost(s.api, timeout=60)
        converged = time.monotonic()
    assert_alive(s.operator)
    during = s.proxy.records(start)
    during = [r for r in during if r.at < healed]
    in_outage = [r for r in during if r.at >= outage]
    actions = {a: sum(1 for r in during if r.action == a) for a in ("forward", "reset", "stall")}
    rate = len(during) / (healed - start)
    outage_rate = len(in_outage) / (healed - outage)
    print(
        "\n[connection resets (30%), 3 s stalls (20%), then 5 s of resetting everything]"
        f"\n  requests through the proxy during the faults: {len(during)} in"
        f" {healed - start:.1f}s ({rate:.1f}/s): {actions}"
        f"\n  during the total outage: {len(in_outage)} in {healed - outage:.1f}s"
        f" ({outage_rate:.1f}/s)"
        f"\n  operator API errors during the test: {delta(errors(s.operator), before)}"
        f"\n  converged after the faults stopped (s): {converged - healed:.1f}"
        f"\n  healthz: {health.summary()}"
        f"\n  final check: {verdict.summary()}"
    )
    assert delta(errors(s.operator), before).get("connection", 0) > 0
    # Backing off, not a hot loop: a retry without delay would make thousands per second.
    assert rate < 100, rate
    assert outage_rate < 60, outage_rate


def test_503_with_retry_after_is_honoured(setup: Setup) -> None:
    s = setup
    rollout(s, "ra", 40)
    before = errors(s.operator)
    unavailable = Rule("status", status=503, seconds=RETRY_AFTER, watches=False)
    with HealthPoller(s.operator) as health:
        s.proxy.set_rules(unavailable)
        start = time.monotonic()
        s.api.profile("ra", {"namespaceSelector": {"matchLabels": {"env": "ra"}}})
        time.sleep(10.0)
        s.proxy.clear()
        healed = time.monotonic()
        verdict = wait_nothing_lost(s.api, timeout=60)
        converged = time.monotonic()
    assert_alive(s.operator)
    refused = [r for r in s.proxy.records(start) if r.at < healed and r.action == "status"]
    # Events are created with generateName: two different events share a key, so their
    # spacing says nothing about retries (they go through the same retrying client).
    own = [r for r in refused if OWN_CLIENT in r.agent and not r.path.endswith("/events")]
    kopf = [r for r in refused if "kopf" in r.agent]
    own_gaps = [g for gaps in spacings(own).values() for g in gaps]
    kopf_gaps = [g for gaps in spacings(kopf).values() for g in gaps]
    keys = len({r.key for r in own})
    bound = keys * (math.ceil((healed - start) / RETRY_AFTER) + 1)
    print(
        f"\n[503 with Retry-After: {RETRY_AFTER} on every request but watches, for"
        f" {healed - start:.0f}s]"
        f"\n  operator's client: {len(own)} refused requests for {keys} distinct requests"
        f" (at most {bound} if each waits {RETRY_AFTER}s); retry gaps min"
        f" {min(own_gaps, default=0):.2f}s, median"
        f" {sorted(own_gaps)[len(own_gaps) // 2] if own_gaps else 0:.2f}s"
        f"\n  kopf (profile finalizer): {len(kopf)} refused; retry gaps min"
        f" {min(kopf_gaps, default=0):.2f}s (kopf honours Retry-After on 429 only)"
        f"\n  operator API errors during the test: {delta(errors(s.operator), before)}"
        f"\n  converged after the 503s stopped (s): {converged - healed:.1f}"
        f"\n  healthz: {health.summary()}"
        f"\n  final check: {verdict.summary()}"
    )
    assert own_gaps, "no request of the operator's client was refused twice: nothing measured"
    early = {k: g for k, gaps in spacings(own).items() for g in gaps if g < RETRY_AFTER - 0.1}
    assert not early, f"retried before Retry-After: {early}"
    assert len(own) <= bound
    assert delta(errors(s.operator), before).get("503", 0) > 0


def test_healthz_turns_unhealthy_while_watches_are_stale(setup: Setup) -> None:
    s = setup
    url = f"http://127.0.0.1:{s.operator.health_port}/healthz"
    assert http_get(url)[0] == 200
    # Watches hang unanswered (a black-holed stream); every other request goes through.
    blackhole = Rule("stall", seconds=math.inf, watches=True)
    seen: list[tuple[int, str]] = []
    with s.proxy.faults(blackhole):
        s.proxy.drop_connections(watches=True)
        stalled = time.monotonic()
        deadline = stalled + 6 * WATCH_TIMEOUT
        while time.monotonic() < deadline:
            status, body = http_get(url)
            if status != 200:
                seen.append((status, body.strip()))
                break
            time.sleep(0.5)
        unhealthy_after = time.monotonic() - stalled
    verdict = wait_nothing_lost(s.api, timeout=60)
    assert_alive(s.operator)
    print(
        f"\n[stale watches] /healthz: {seen or 'stayed 200'} after {unhealthy_after:.1f}s;"
        f" then {verdict.summary()}"
    )
    assert seen, f"/healthz stayed 200 for {6 * WATCH_TIMEOUT}s of black-holed watches"
