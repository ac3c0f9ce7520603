"""Repeated profile events fold into one Event: a burst of repairs costs two Event writes.

Against a fake API that records posts and patches; the end-to-end check (a real apiserver, a
burst of deletions, one Event whose count is the number of repairs) is in
``tests/e2e/test_drift_e2e.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from default_policy_operator.controller.events import EventRecorder
from default_policy_operator.kube.client import ApiError, Resource

PROFILE = {"apiVersion": "defaultpolicy.dev/v1alpha1", "kind": "DefaultPolicyProfile",
           "metadata": {"name": "base", "uid": "u1"}}  # fmt: skip


class FakeApi:
    def __init__(self, delay: float = 0.0) -> None:
        self.posted: list[dict[str, Any]] = []
        self.patched: list[tuple[str, dict[str, Any]]] = []
        self.gone = False
        self.delay = delay  # each request takes this long (others run meanwhile)

    async def post_event(self, regarding: Any, **event: Any) -> str:
        await asyncio.sleep(self.delay)
        self.posted.append(event)
        return f"base.{len(self.posted)}"

    async def patch(self, resource: Resource, name: str, patch: Any, **_: Any) -> Any:
        await asyncio.sleep(self.delay)
        if self.gone:
            raise ApiError(404, "NotFound", "events not found")
        self.patched.append((name, patch))
        return {}


def test_a_burst_is_one_post_and_one_patch_counting_every_repair() -> None:
    api = FakeApi()
    recorder = EventRecorder(api, interval=0.05)  # type: ignore[arg-type]

    async def burst() -> None:
        for i in range(100):
            await recorder.record(PROFILE, "Normal", "DriftRepaired", f"policy {i} restored")
        await asyncio.sleep(0.2)

    asyncio.run(burst())
    assert [e["message"] for e in api.posted] == ["policy 0 restored"]
    ((name, patch),) = api.patched
    assert name == "base.1"
    assert patch["count"] == 100
    assert patch["message"].startswith("policy 99 restored (99 more like this")


def test_each_reason_and_profile_is_its_own_series() -> None:
    api = FakeApi()
    recorder = EventRecorder(api, interval=0.05)  # type: ignore[arg-type]
    other = {**PROFILE, "metadata": {"name": "other", "uid": "u2"}}

    async def mixed() -> None:
        await recorder.record(PROFILE, "Normal", "DriftRepaired", "a")
        await recorder.record(PROFILE, "Warning", "Conflict", "b")
        await recorder.record(other, "Normal", "DriftRepaired", "c")

    asyncio.run(mixed())
    assert [e["reason"] for e in api.posted] == ["DriftRepaired", "Conflict", "DriftRepaired"]
    assert api.patched == []


def test_an_expired_event_starts_a_new_series() -> None:
    """Events expire (the apiserver's --event-ttl, one hour by default): a refused patch ends
    the series, and the next repeat is posted afresh."""
    api = FakeApi()
    recorder = EventRecorder(api, interval=0.05)  # type: ignore[arg-type]

    async def run() -> None:
        await recorder.record(PROFILE, "Normal", "DriftRepaired", "first")
        api.gone = True
        await recorder.record(PROFILE, "Normal", "DriftRepaired", "second")
        await asyncio.sleep(0.2)
        await recorder.record(PROFILE, "Normal", "DriftRepaired", "third")

    asyncio.run(run())
    assert [e["message"] for e in api.posted] == ["first", "third"]


def test_after_the_window_a_repeat_is_posted_as_a_new_event() -> None:
    now = [0.0]
    api = FakeApi()
    recorder = EventRecorder(api, interval=0.05, window=600, clock=lambda: now[0])  # type: ignore[arg-type]

    async def run() -> None:
        await recorder.record(PROFILE, "Normal", "DriftRepaired", "first")
        now[0] = 601.0
        await recorder.record(PROFILE, "Normal", "DriftRepaired", "much later")

    asyncio.run(run())
    assert [e["message"] for e in api.posted] == ["first", "much later"]


def test_concurrent_repeats_while_the_first_is_posted_are_counted_into_it() -> None:
    """Writers record concurrently: 32 repairs at once still make one Event (count 32)."""
    api = FakeApi(delay=0.02)
    recorder = EventRecorder(api, interval=0.05)  # type: ignore[arg-type]

    async def at_once() -> None:
        await asyncio.gather(
            *(recorder.record(PROFILE, "Normal", "DriftRepaired", f"r{i}") for i in range(32))
        )
        await asyncio.sleep(0.3)

    asyncio.run(at_once())
    assert len(api.posted) == 1
    assert [patch["count"] for _, patch in api.patched] == [32]


def test_repeats_during_a_report_are_reported_next() -> None:
    """Nothing counted while a PATCH is in flight is lost: the counts add up."""
    api = FakeApi(delay=0.03)
    recorder = EventRecorder(api, interval=0.02)  # type: ignore[arg-type]

    async def trickle() -> None:
        for i in range(20):
            await recorder.record(PROFILE, "Normal", "DriftRepaired", f"r{i}")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)

    asyncio.run(trickle())
    assert len(api.posted) == 1
    counts = [patch["count"] for _, patch in api.patched]
    assert counts == sorted(counts)
    assert counts[-1] == 20
