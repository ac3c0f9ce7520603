"""Throttling: a client refused with 429 sends fewer requests at once, and every one gets in.

The server here is a loopback HTTP server with one seat and no queue, as API Priority and
Fairness gives a priority level with ``nominalConcurrencyShares: 1`` and ``limitResponse:
Reject``: a request that finds the seat taken is answered 429 at once. Thirty-two requests
started together must all succeed: before the client adapted, they retried in lockstep and
most ran out of retries (issue #7's squeeze test lost writes this way on CI).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from default_policy_operator.kube.client import ApiError, KubeApi, Resource
from default_policy_operator.kube.throttle import AdaptiveLimit
from tests.kube.loopback import loopback_api

THINGS = Resource("example.test", "v1", "things", True)


# -- the limit on its own ---------------------------------------------------------------------


def test_a_429_halves_the_limit_once_per_round() -> None:
    async def run() -> list[float]:
        limit = AdaptiveLimit(32)
        seen = []
        async with limit.slot() as first, limit.slot() as second:
            limit.throttled(first)
            limit.throttled(second)  # same round: the overload was already answered
            seen.append(limit.limit)
        async with limit.slot() as third:
            limit.throttled(third)  # sent under the new limit: cuts again
            seen.append(limit.limit)
        return seen

    assert asyncio.run(run()) == [16.0, 8.0]


def test_the_limit_never_falls_below_one_and_grows_back_to_its_ceiling() -> None:
    async def run() -> tuple[float, int, float]:
        limit = AdaptiveLimit(8)
        for _ in range(10):
            async with limit.slot() as epoch:
                limit.throttled(epoch)
        floor = limit.limit
        successes = 0
        while limit.limit < limit.ceiling:
            limit.succeeded()
            successes += 1
        limit.succeeded()
        return floor, successes, limit.limit

    floor, successes, ceiling = asyncio.run(run())
    assert floor == 1.0
    # One place per round of `limit` successes: 1 + 2 + ... + 7 = 28 (give or take rounding).
    assert 25 <= successes <= 35
    assert ceiling == 8.0


def test_a_request_waits_for_a_place() -> None:
    async def run() -> tuple[bool, bool]:
        limit = AdaptiveLimit(2)
        async with limit.slot() as epoch:
            limit.throttled(epoch)  # 2 -> 1 while this place is held
            waiter = asyncio.create_task(_enter(limit))
            await asyncio.sleep(0.05)
            blocked = not waiter.done()
        await asyncio.wait_for(waiter, 1)
        return blocked, waiter.done()

    assert asyncio.run(run()) == (True, True)


async def _enter(limit: AdaptiveLimit) -> None:
    async with limit.slot():
        pass


# -- the client against a one-seat server -------------------------------------------------------


@dataclass
class OneSeat:
    """One request served at a time (10 ms each); any other is refused with 429 at once."""

    busy: bool = False
    served: int = 0
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.busy:
            self.refused += 1
            return web.json_response(
                {"kind": "Status", "reason": "TooManyRequests", "message": "too many requests"},
                status=429,
            )
        self.busy = True
        try:
            await asyncio.sleep(0.01)
            self.served += 1
            return web.json_response({"kind": "Thing", "metadata": {"name": "x"}}, status=201)
        finally:
            self.busy = False


@pytest.fixture
async def one_seat() -> AsyncIterator[tuple[OneSeat, KubeApi]]:
    seat = OneSeat()
    async with loopback_api(seat.handle, connections=32) as api:
        yield seat, api


async def test_every_request_gets_through_a_single_seat(one_seat: tuple[OneSeat, KubeApi]) -> None:
    seat, api = one_seat
    bodies = [{"metadata": {"name": f"t{i}", "namespace": "n"}} for i in range(32)]
    results = await asyncio.gather(
        *(api.create(THINGS, body) for body in bodies), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, ApiError)]
    assert failed == [], f"{len(failed)} of 32 requests ran out of retries ({seat.refused} 429s)"
    assert seat.served == 32
    assert api.limit.limit < 32, "the client never lowered its concurrency"
