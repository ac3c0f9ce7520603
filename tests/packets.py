"""Helpers for the packet tests: named probes, polling a matrix, a continuous prober, profiles.

Polling (never sleeping) for a whole connectivity matrix: a policy write reaches kube-router's
rules in a fraction of a second, but how long exactly varies, so each check polls until every
probe shows what is expected, up to a deadline, and reports the table it last saw otherwise.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dpo_dev.dataplane import Dataplane, PodNet
from dpo_dev.podserver import Outcome
from tests.support import Api, condition, wait_for

#: Deadline for a policy change to show in the packets (observed worst ~0.4 s).
ENFORCE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Flow:
    source: PodNet
    destination: PodNet
    protocol: str
    port: int

    def __str__(self) -> str:
        return f"{self.source.identity} -> {self.destination.identity} {self.protocol}/{self.port}"


def observe(plane: Dataplane, flows: Sequence[Flow]) -> dict[Flow, bool]:
    """Whether each flow is open right now (one fresh connection each)."""
    return {
        flow: plane.probe(flow.source, flow.destination, flow.protocol, flow.port) is Outcome.OPEN
        for flow in flows
    }


def table(expected: Mapping[Flow, bool], seen: Mapping[Flow, bool]) -> str:
    """A readable matrix: flow, expected, seen, and a marker where they differ."""
    lines = []
    for flow, want in expected.items():
        got = seen.get(flow)
        mark = "" if got == want else "   <-- MISMATCH"
        lines.append(f"  {flow!s:70} expect {_word(want):7} seen {_word(got):7}{mark}")
    return "\n".join(lines)


def _word(value: bool | None) -> str:
    return "?" if value is None else ("OPEN" if value else "BLOCKED")


def converge(
    plane: Dataplane,
    expected: Mapping[Flow, bool],
    timeout: float = ENFORCE_TIMEOUT,
    since: float | None = None,
) -> float:
    """Poll until every flow matches ``expected``; return the seconds it took.

    The time counts from ``since`` (a monotonic timestamp, say of the write being enforced)
    when given. A final round after the first full match confirms it, so a transient state that
    happens to match (say, half of an update) does not pass.
    """
    started = time.monotonic()
    flows = list(expected)
    seen = observe(plane, flows)
    while seen != dict(expected):
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"dataplane not as expected after {timeout} s:\n" + table(expected, seen)
            )
        seen = observe(plane, flows)
    elapsed = time.monotonic() - (started if since is None else since)
    confirm = observe(plane, flows)
    assert confirm == dict(expected), "matched once, then changed:\n" + table(expected, confirm)
    return elapsed


@dataclass
class Counts:
    """What a continuous prober saw for one flow."""

    sent: int = 0
    wrong: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class Prober:
    """Probes flows every ``interval`` seconds in background threads, fresh flows each time.

    ``expect_open[flow]`` says what the flow must stay; every probe that differs is counted as
    wrong. :meth:`mark` splits the counts into phases (one per disruption).

    Where the engine drops denied packets (Felix), a probe of a blocked flow lasts its whole
    timeout; such a flow gets enough staggered threads that a fresh connection still starts
    every ``interval`` seconds.
    """

    def __init__(
        self, plane: Dataplane, expect_open: Mapping[Flow, bool], interval: float = 0.02
    ) -> None:
        self.plane = plane
        self.expect_open = dict(expect_open)
        self.interval = interval
        self.phase = "start"
        self.counts: dict[str, dict[Flow, Counts]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(flow, index, workers), daemon=True)
            for flow, want in expect_open.items()
            for workers in [self._workers(want)]
            for index in range(workers)
        ]

    def _workers(self, want_open: bool) -> int:
        if want_open or not self.plane.drops_denied:
            return 1
        return math.ceil(self.plane.probe_timeout / self.interval)

    def __enter__(self) -> Prober:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def mark(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def sent(self, phase: str) -> int:
        with self._lock:
            return sum(c.sent for c in self.counts.get(phase, {}).values())

    def wait_probes(self, count: int) -> None:
        """Let at least ``count`` more probes of every flow go out in the current phase."""
        with self._lock:
            phase = self.phase
            start = {f: c.sent for f, c in self.counts.get(phase, {}).items()}
        deadline = time.monotonic() + 60
        while True:
            with self._lock:
                now = self.counts.get(phase, {})
                done = all(
                    now.get(f, Counts()).sent - start.get(f, 0) >= count for f in self.expect_open
                )
            if done or time.monotonic() > deadline:
                return
            time.sleep(self.interval)

    def _run(self, flow: Flow, index: int, workers: int) -> None:
        want = self.expect_open[flow]
        timeout = 2.0 if want else self.plane.probe_timeout
        period = self.interval * workers
        self._stop.wait(index * self.interval)
        while not self._stop.is_set():
            began = time.monotonic()
            outcome = self.plane.probe(
                flow.source, flow.destination, flow.protocol, flow.port, timeout
            )
            with self._lock:
                counts = self.counts.setdefault(self.phase, {}).setdefault(flow, Counts())
                counts.sent += 1
                counts.wrong += (outcome is Outcome.OPEN) != want
                counts.outcomes[outcome.value] = counts.outcomes.get(outcome.value, 0) + 1
            self._stop.wait(max(0.0, period - (time.monotonic() - began)))

    def summary(self) -> dict[str, dict[str, dict[str, object]]]:
        with self._lock:
            return {
                phase: {
                    str(flow): {"sent": c.sent, "wrong": c.wrong, "outcomes": dict(c.outcomes)}
                    for flow, c in flows.items()
                }
                for phase, flows in self.counts.items()
            }


def timed(samples: list[float]) -> dict[str, float]:
    """Median and maximum of a list of seconds, rounded for a report."""
    return {
        "n": len(samples),
        "median_s": round(statistics.median(samples), 3),
        "max_s": round(max(samples), 3),
    }


# -- profiles and namespaces, as the packet tests write them ----------------------------------


def namespace(api: Api, name: str, **labels: str) -> str:
    api.namespace(name, labels)
    return name


def wait_reconciled(api: Api, name: str, governed: int | None = None) -> None:
    """The operator has acted on the profile's latest generation (and governs ``governed``)."""

    def done() -> bool:
        profile = api.get_profile(name) or {}
        status = profile.get("status") or {}
        return bool(
            status.get("observedGeneration") == profile["metadata"]["generation"]
            and condition(profile, "Ready").get("status") == "True"
            and (governed is None or status.get("governedNamespaces") == governed)
        )

    wait_for(done, timeout=30, what=f"profile {name} reconciled")


def put_profile(api: Api, name: str, spec: dict[str, Any]) -> float:
    """Create or fully replace a profile's spec; returns the monotonic time of the write."""
    existing = api.get_profile(name)
    written = time.monotonic()
    if existing is None:
        api.profile(name, spec)
    else:
        body = {**existing, "spec": spec}
        api.request("PUT", f"/apis/defaultpolicy.dev/v1alpha1/defaultpolicyprofiles/{name}", body)
    return written
