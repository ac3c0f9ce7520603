"""List-then-watch caches of namespaces, profiles and managed objects.

Why not kopf's ``@kopf.index`` for these: kopf parks one worker per listed object until every
index is populated, and wakes every parked worker for every new one -- quadratic at start-up
(minutes at a few thousand objects). An informer here is one task per resource: list (paginated),
hand the complete set to the consumer, then watch from the list's resourceVersion with bookmarks,
re-listing on ``410 Gone`` or any broken stream. A list is digested a page at a time (the
consumer's ``digest`` keeps what it reads of each object), so the whole list is never held as
objects at once: at 15,000 NetworkPolicies that is the difference between one page of bodies and
tens of MB at every periodic resync. The consumer learns when the first list is in
(``listed``), and liveness learns when a watch last heard from the server (``last_contact``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from default_policy_operator.kube.client import ApiError, KubeApi, Resource

log = logging.getLogger(__name__)

#: Called with a complete list (digested) and its resourceVersion: the consumer merges it into its
#: view (what is missing and not newer than the list was deleted; what is newer stays).
OnList = Callable[[list[Any], str], None]
#: What the consumer keeps of one listed object (by default, the object itself).
Digest = Callable[[dict[str, Any]], Any]
#: Called with each watch event's type (ADDED, MODIFIED, DELETED) and object.
OnEvent = Callable[[str, dict[str, Any]], None]
#: A context the consumer holds open while a list is on its way, merge included.
Listing = Callable[[], contextlib.AbstractContextManager[None]]


class Informer:
    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        *,
        on_list: OnList,
        on_event: OnEvent,
        digest: Digest | None = None,
        listing: Listing | None = None,
        label_selector: str = "",
        watch_timeout: int = 60,
        optional: bool = False,
    ) -> None:
        self.api = api
        self.resource = resource
        self.on_list = on_list
        self.on_event = on_event
        self.digest = digest
        #: held from before each list is asked for until it is merged or failed: the watch's
        #: events may overtake the list's snapshot meanwhile
        self.listing = listing
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        #: a resource that may not be served (Calico's CRDs): 404 counts as an empty list
        self.optional = optional
        self.listed = asyncio.Event()
        self.last_contact = time.monotonic()

    @property
    def name(self) -> str:
        return f"{self.resource.plural}.{self.resource.group or 'core'}"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                self.listed.set()
                failures = 0
                await self._watch(version)
            except Exception as exc:  # any failure: back off and re-list, never give up
                if isinstance(exc, ApiError) and exc.status >= 400:
                    self.last_contact = time.monotonic()  # the server answered, if with an error
                failures += 1
                delay = min(30.0, 0.5 * 2**failures) * random.uniform(0.8, 1.2)
                if isinstance(exc, ApiError) and exc.retry_after:
                    delay = max(delay, exc.retry_after)  # the server said when, not sooner
                log.warning("%s: %s; re-listing in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)

    async def resync(self) -> None:
        """A fresh list merged into the view (the periodic full resync).

        The watch keeps running meanwhile: interrupting it would leave every change made during
        a long list unseen until the list ends (seconds, at thousands of objects). The consumer
        merges by resourceVersion, so the list never overrides something newer.
        """
        await self._list()

    async def _list(self) -> str:
        with self.listing() if self.listing else contextlib.nullcontext():
            return await self._list_and_merge()

    async def _list_and_merge(self) -> str:
        items: list[Any] = []
        version = ""
        try:
            async for page, page_version in self.api.list_pages(
                self.resource, label_selector=self.label_selector
            ):
                items.extend(map(self.digest, page) if self.digest else page)
                version = page_version
        except ApiError as exc:
            if not (self.optional and exc.status == 404):
                raise
            items, version = [], ""
        self.on_list(items, version)
        self.last_contact = time.monotonic()
        return version

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
