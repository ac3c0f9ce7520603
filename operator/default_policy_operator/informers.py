"""List-then-watch caches of namespaces, profiles and managed objects.

Why not kopf's ``@kopf.index`` for these: kopf parks one worker per listed object until every
index is populated, and wakes every parked worker for every new one -- quadratic at start-up
(minutes at a few thousand objects). An informer here is one task per resource: list (paginated),
hand the complete set to the consumer, then watch from the list's resourceVersion with bookmarks,
re-listing on ``410 Gone`` or any broken stream. The consumer learns when the first list is in
(``listed``), and liveness learns when a watch last heard from the server (``last_contact``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from .kube import ApiError, KubeApi, Resource

log = logging.getLogger(__name__)

#: Called with the complete list after every (re)list: the consumer replaces its view.
OnList = Callable[[list[dict[str, Any]]], None]
#: Called with each watch event's type (ADDED, MODIFIED, DELETED) and object.
OnEvent = Callable[[str, dict[str, Any]], None]


class Informer:
    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        *,
        on_list: OnList,
        on_event: OnEvent,
        label_selector: str = "",
        watch_timeout: int = 60,
        optional: bool = False,
    ) -> None:
        self.api = api
        self.resource = resource
        self.on_list = on_list
        self.on_event = on_event
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        #: a resource that may not be served (Calico's CRDs): 404 counts as an empty list
        self.optional = optional
        self.listed = asyncio.Event()
        self.last_contact = time.monotonic()
        self.relists = 0
        self._lists = asyncio.Condition()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"{self.resource.plural}.{self.resource.group or 'core'}"

    def relist(self) -> None:
        """Re-list now (the periodic full resync): interrupts the current watch."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()

    async def run(self) -> None:
        failures = 0
        me = asyncio.current_task()
        while True:
            try:
                version = await self._list()
                failures = 0
                self._watcher = asyncio.create_task(self._watch(version))
                await self._watcher
            except asyncio.CancelledError:
                if me is not None and me.cancelling():
                    raise  # we are being stopped
                # only the watcher was cancelled: a relist was asked for
            except Exception as exc:  # any failure: back off and re-list, never give up
                failures += 1
                delay = min(30.0, 0.5 * 2**failures) * random.uniform(0.8, 1.2)
                log.warning("%s: %s; re-listing in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        try:
            items, version = await self.api.list_with_version(
                self.resource, label_selector=self.label_selector
            )
        except ApiError as exc:
            if not (self.optional and exc.status == 404):
                raise
            items, version = [], ""
        self.on_list(items)
        self.last_contact = time.monotonic()
        self.listed.set()
        async with self._lists:
            self.relists += 1
            self._lists.notify_all()
        return version

    async def wait_listed(self, after: int) -> None:
        """Wait until more than ``after`` lists have been delivered."""
        async with self._lists:
            await self._lists.wait_for(lambda: self.relists > after)

    async def _watch(self, version: str) -> None:
        """Watch from ``version`` until the list is stale (410) or the stream fails."""
        if not version:  # an optional resource that is not served: look again later
            await asyncio.sleep(self.watch_timeout)
            return
        while True:
            stream = self.api.watch(
                self.resource,
                resource_version=version,
                label_selector=self.label_selector,
                timeout_seconds=self.watch_timeout,
            )
            async for event in stream:
                self.last_contact = time.monotonic()
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        log.info("%s: watch expired (410 Gone); re-listing", self.name)
                        return
                    raise ApiError(int(obj.get("code") or 0), obj.get("reason", ""), str(obj))
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                if kind != "BOOKMARK":
                    self.on_event(str(kind), obj)
            self.last_contact = time.monotonic()  # the server closed the stream on time
