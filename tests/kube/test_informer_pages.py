"""A list is digested page by page: the whole list is never held as objects at once.

At 15,000 NetworkPolicies a periodic resync used to hold every body (managedFields and all)
until the last page came in, raising the operator's peak memory by about 80 MB at N = 5,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from default_policy_operator.kube.client import Resource
from default_policy_operator.kube.informers import Informer

THINGS = Resource("", "v1", "things", namespaced=False)
PAGES = 4
PAGE = 500


class Body(dict[str, Any]):
    """An object body that can be watched for collection (a plain dict cannot)."""


class PagedApi:
    """Serves four pages of 500 objects and counts, at each page request, how many bodies of
    the earlier pages are still alive (held by the caller)."""

    def __init__(self) -> None:
        self.alive_at_request: list[int] = []
        self.served: list[weakref.ref[Body]] = []

    async def list_pages(self, resource: Resource, **_: Any) -> Any:
        for number in range(PAGES):
            gc.collect()
            self.alive_at_request.append(sum(ref() is not None for ref in self.served))
            page = [Body(metadata={"name": f"t{number}-{i}"}) for i in range(PAGE)]
            self.served += [weakref.ref(body) for body in page]
            yield page, "42"
            del page


def test_each_page_is_digested_before_the_next_is_fetched() -> None:
    api = PagedApi()
    digested: list[str] = []
    listed: list[tuple[list[Any], str]] = []

    def digest(body: dict[str, Any]) -> str:
        digested.append(body["metadata"]["name"])
        return str(body["metadata"]["name"])

    informer = Informer(
        api,  # type: ignore[arg-type]
        THINGS,
        on_list=lambda items, version: listed.append((items, version)),
        on_event=lambda *_: None,
        digest=digest,
    )
    asyncio.run(informer.resync())
    # at most the page just digested (the loop variable) is alive when the next one is asked for
    assert api.alive_at_request == [0] + [PAGE] * (PAGES - 1)
    ((names, version),) = listed
    assert version == "42"
    assert names == digested
    assert len(names) == PAGES * PAGE


def test_the_consumer_holds_a_list_open_from_before_it_is_asked_for_until_merged() -> None:
    """The watch runs on during a resync's list, so a delete can reach the consumer before the
    list does; the consumer must know a list is on its way before its snapshot is taken, until
    it is merged, and also when it fails."""
    heard: list[str] = []

    @contextlib.contextmanager
    def listing() -> Iterator[None]:
        heard.append(f"open, {len(api.alive_at_request)} pages asked for")
        try:
            yield
        finally:
            heard.append("closed")

    api = PagedApi()
    informer = Informer(
        api,  # type: ignore[arg-type]
        THINGS,
        on_list=lambda items, _version: heard.append(f"{len(items)} merged"),
        on_event=lambda *_: None,
        listing=listing,
    )
    asyncio.run(informer.resync())
    assert heard == ["open, 0 pages asked for", f"{PAGES * PAGE} merged", "closed"]

    heard.clear()
    informer.api = BrokenApi()  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        asyncio.run(informer.resync())
    assert [line.split(",")[0] for line in heard] == ["open", "closed"]


class BrokenApi:
    async def list_pages(self, resource: Resource, **_: Any) -> Any:
        raise ConnectionError("the list broke off")
        yield  # an async generator, like the real one
