"""A plain-HTTP server on loopback with one handler, and a KubeApi that talks to it: for
client-side behaviour (retries, throttling, informers) against answers the test chooses."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from default_policy_operator.kube.client import KubeApi
from default_policy_operator.kube.credentials import Auth, Credentials

FAR = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
Handler = Callable[[web.Request], Awaitable[web.Response]]


@asynccontextmanager
async def loopback_api(handler: Handler, **client: int) -> AsyncIterator[KubeApi]:
    """A KubeApi (``client`` keyword arguments passed on) whose every request ``handler``
    answers."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def load() -> Auth:
        return Auth(f"http://127.0.0.1:{port}", None, None, None, FAR)

    credentials = Credentials(load)
    await credentials.refresh()
    api = KubeApi(credentials, **client)
    try:
        yield api
    finally:
        await api.close()
        await runner.cleanup()
