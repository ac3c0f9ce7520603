"""A periodic full resync that comes due during a rollout waits for the rollout to drain.

Seen in the bench at N = 20,000: convergence took about 50 s, and the bench's 30 s resync period
put one or two full resyncs inside it (none at 5,000, where convergence takes 11 s). Each one
re-listed the 20,000 namespaces and every policy the rollout was writing, on the apiserver the
writes need, and re-planned scopes just planned; the rollout re-plans every scope anyway. The
wait is bounded by one more period, so constant churn cannot starve the resync (and the liveness
check, which fails after three periods without one, stays quiet).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from default_policy_operator.controller.reconciler import Reconciler, Settings
from default_policy_operator.core.world import World


class CountingInformer:
    """Stands in for an informer: counts the re-lists asked of it."""

    name = "namespaces"

    def __init__(self) -> None:
        self.resyncs = 0

    async def resync(self) -> None:
        self.resyncs += 1


def busy_reconciler(period: float) -> tuple[Reconciler, CountingInformer]:
    """A reconciler in the middle of a rollout: scopes waiting in bulk, not idle."""
    reconciler = Reconciler(World(frozenset()), None, Settings(resync_period=period))  # type: ignore[arg-type]
    informer = CountingInformer()
    reconciler.informers = [informer]  # type: ignore[list-item]
    reconciler.mark_all()
    reconciler._bulk.add("team-a")
    assert not reconciler._idle.is_set()
    return reconciler, informer


@contextlib.asynccontextmanager
async def resync_loop(reconciler: Reconciler) -> AsyncIterator[None]:
    """The reconciler's resync loop, running for the body of the ``async with``."""
    loop = asyncio.create_task(reconciler._resync_loop())
    try:
        yield
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def until(condition: object, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_resync_due_during_a_rollout_runs_once_the_rollout_has_drained() -> None:
    async def scenario() -> None:
        reconciler, informer = busy_reconciler(period=1.0)
        async with resync_loop(reconciler):
            await asyncio.sleep(1.5)  # due after 1.0 s; the bound would let it run at 2.0 s
            assert informer.resyncs == 0
            reconciler._bulk.clear()
            reconciler._idle.set()  # the rollout is done
            await until(lambda: informer.resyncs == 1)

    asyncio.run(scenario())


def test_a_resync_waits_at_most_one_more_period_for_a_rollout() -> None:
    async def scenario() -> None:
        reconciler, informer = busy_reconciler(period=0.05)
        async with resync_loop(reconciler):
            await until(lambda: informer.resyncs >= 1)  # never idle: runs anyway
            assert not reconciler._idle.is_set()

    asyncio.run(scenario())


def test_an_idle_operator_resyncs_on_its_period() -> None:
    async def scenario() -> None:
        reconciler, informer = busy_reconciler(period=1.0)
        reconciler._bulk.clear()
        reconciler._idle.set()
        started = time.monotonic()
        async with resync_loop(reconciler):
            await until(lambda: informer.resyncs >= 1)
            assert time.monotonic() - started < 1.8  # one period (1 s), not two

    asyncio.run(scenario())
