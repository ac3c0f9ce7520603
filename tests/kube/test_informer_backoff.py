"""An informer whose list is refused waits as long as the server said (Retry-After).

Seen in the fault tests: a list that ran out of its retries during a 503 with ``Retry-After:
2`` was tried again by the informer after its own backoff (about 1 s), sooner than the server
asked. The server here refuses every list with 503 and Retry-After 2; the client does not retry
on its own (``retries=0``), so every gap between lists is the informer's.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from aiohttp import web

from default_policy_operator.kube.client import Resource
from default_policy_operator.kube.informers import Informer
from tests.kube.loopback import loopback_api

THINGS = Resource("example.test", "v1", "things", False)
RETRY_AFTER = 2


async def test_a_refused_list_is_retried_no_sooner_than_retry_after() -> None:
    arrivals: list[float] = []
    third = asyncio.Event()

    async def refuse(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        if len(arrivals) >= 3:
            third.set()
        return web.json_response(
            {"kind": "Status", "reason": "ServiceUnavailable", "message": "busy"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER)},
        )

    async with loopback_api(refuse, retries=0) as api:
        informer = Informer(api, THINGS, on_list=lambda *_: None, on_event=lambda *_: None)
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(third.wait(), 30)
        finally:
            task.cancel()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) >= RETRY_AFTER - 0.05, gaps
