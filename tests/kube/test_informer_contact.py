"""Liveness must not mistake "the API server answers 404" for "no word from the API server".

When the DefaultPolicyProfile CRD is deleted under a running operator, the profiles' informer
gets 404 on every re-list (``test_fail_static_e2e``). The server is answering; only a missing
answer (connection refused, timeout) means a stuck stream. ``Informer.last_contact`` is only
refreshed by a successful list or watch event, so after ``3 x --watch-timeout`` without the CRD
``/healthz`` reports the profiles' informer as stale and a kubelet restarts the operator --
which cannot start without the CRD either: a crash loop instead of a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from default_policy_operator.kube.client import ApiError, Resource
from default_policy_operator.kube.informers import Informer

PROFILES = Resource("defaultpolicy.dev", "v1alpha1", "defaultpolicyprofiles", False)


class NotFoundApi:
    """An API server that is up and says the resource does not exist."""

    def __init__(self) -> None:
        self.lists = 0
        self.asked: asyncio.Event | None = None

    async def list_pages(self, resource: Resource, **_: Any) -> Any:
        self.lists += 1
        if self.asked is not None:
            self.asked.set()
        raise ApiError(404, "NotFound", "404 page not found")
        yield  # an async generator, as the real one


def test_an_http_error_answer_counts_as_contact() -> None:
    api = NotFoundApi()
    informer = Informer(api, PROFILES, on_list=lambda items: None, on_event=lambda t, o: None)  # type: ignore[arg-type]
    informer.last_contact = time.monotonic() - 1000  # long ago

    async def run_briefly() -> None:
        api.asked = asyncio.Event()
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(api.asked.wait(), 10)
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run_briefly())
    assert api.lists >= 1
    assert time.monotonic() - informer.last_contact < 10
