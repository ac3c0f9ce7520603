"""How many requests the operator keeps in flight, adapted to the API server's answers.

Why: API Priority and Fairness (or an overloaded server) answers 429 when the operator's share
is used up. Thirty-two writers that each retry on their own keep that share contested: every
retry is another rejection, and an unlucky request runs out of retries while others get
through. Halving the requests in flight on a 429 and growing back by one per round of
successes (additive increase, multiplicative decrease, as TCP does) gives the server what it
asks for and lets every request through in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from default_policy_operator import metrics


class AdaptiveLimit:
    """A cap on requests in flight, between 1 and ``ceiling``: halved on throttling, then
    raised by one for every ``limit`` successful requests.

    Each place handed out carries the number of cuts made so far (its epoch). A 429 answering
    a request sent before the latest cut says nothing new -- the limit already went down for
    that overload -- so only a request sent under the current limit can cut it again.
    """

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = float(self.ceiling)
        self._epoch = 0
        self._inflight = 0
        self._room = asyncio.Condition()
        metrics.API_CONCURRENCY.set(self.limit)

    @property
    def inflight(self) -> int:
        return self._inflight

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Hold one of the ``limit`` places for one HTTP exchange; yields its epoch."""
        async with self._room:
            await self._room.wait_for(lambda: self._inflight < int(self.limit))
            self._inflight += 1
        try:
            yield self._epoch
        finally:
            async with self._room:
                self._inflight -= 1
                # succeeded() may have opened a place besides this one: wake a waiter for each
                self._room.notify(max(1, int(self.limit) - self._inflight))

    def throttled(self, epoch: int) -> None:
        """A request of ``epoch`` was refused for load: halve, unless already cut since."""
        if epoch != self._epoch:
            return
        self._epoch += 1
        self.limit = max(1.0, self.limit / 2)
        metrics.API_CONCURRENCY.set(self.limit)

    def succeeded(self) -> None:
        """One request got through: creep back towards the ceiling (one place per round)."""
        if self.limit < self.ceiling:
            self.limit = min(float(self.ceiling), self.limit + 1 / self.limit)
            metrics.API_CONCURRENCY.set(self.limit)
