"""Profile Events, aggregated so that a burst of repairs does not double the write load.

Every drift repair used to post its own Event: two apiserver writes per repair (the policy and
the Event), where a peer such as Kyverno makes one. client-go's EventCorrelator answers this by
folding similar events into one whose ``count`` grows; this does the same for our few event
kinds. The first event of a series (one profile, type and reason) is posted at once, so a user
watching ``kubectl get events`` sees it immediately; repeats are counted and folded into that
same Event by at most one PATCH per ``interval`` (count, lastTimestamp and the latest message).
A series ends ``window`` seconds after it began: the next event starts a new one.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from default_policy_operator.kube.client import EVENTS, ApiError, KubeApi

log = logging.getLogger(__name__)

#: Events of cluster-scoped objects live here, like kubectl's.
EVENT_NAMESPACE = "default"
#: At most one report (PATCH) per series in this many seconds.
REPORT_INTERVAL = 10.0


@dataclass
class _Series:
    key: tuple[str, str, str]
    began: float
    message: str
    #: the Event's name; None while the first one is being posted (repeats count meanwhile)
    name: str | None = None
    count: int = 1  # what the Event says
    unreported: int = 0  # counted since
    flushing: bool = False


class EventRecorder:
    def __init__(
        self,
        api: KubeApi,
        *,
        interval: float = REPORT_INTERVAL,
        window: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.interval = interval
        self.window = window
        self.clock = clock
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(
        self, regarding: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """Post the event, or count it into its series' Event (reported within ``interval``).

        Writers call this concurrently: a repeat that comes while the series' first Event is
        still being posted is counted into it, not posted again."""
        key = (str((regarding.get("metadata") or {}).get("name", "")), event_type, reason)
        series = self._series.get(key)
        if series is None or self.clock() - series.began > self.window:
            await self._begin(key, regarding, event_type, reason, message)
            return
        series.unreported += 1
        series.message = message
        self._report_later(series)

    async def _begin(
        self,
        key: tuple[str, str, str],
        regarding: Mapping[str, Any],
        event_type: str,
        reason: str,
        message: str,
    ) -> None:
        series = self._series[key] = _Series(key, self.clock(), message)
        name = await self.api.post_event(
            regarding, event_type=event_type, reason=reason, message=message
        )
        if name is None:  # not posted (best-effort): the next one starts afresh
            self._end(series)
            return
        series.name = name
        self._report_later(series)

    def _report_later(self, series: _Series) -> None:
        """A report of what was counted, ``interval`` from now (never makes the caller wait)."""
        if series.flushing or series.name is None or not series.unreported:
            return
        series.flushing = True
        task = asyncio.create_task(self._flush_later(series))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_later(self, series: _Series) -> None:
        """Fold what was counted into the series' Event (even one a newer series replaced)."""
        await asyncio.sleep(self.interval)
        assert series.name is not None
        reporting = series.unreported
        count = series.count + reporting
        more = f" ({reporting} more like this since the last report, {count} in all)"
        patch = {
            "count": count,
            "lastTimestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": (series.message[: 1024 - len(more)] + more),
        }
        try:
            await self.api.patch(EVENTS, series.name, patch, namespace=EVENT_NAMESPACE)
        except ApiError as exc:  # gone (events expire) or refused: the next one starts afresh
            log.debug("could not update event %s: %s", series.name, exc)
            self._end(series)
            return
        finally:
            series.flushing = False
        series.count = count
        series.unreported -= reporting  # what came during the PATCH is reported next time
        self._report_later(series)

    def _end(self, series: _Series) -> None:
        if self._series.get(series.key) is series:
            del self._series[series.key]

    def forget(self, profile: str) -> None:
        """A deleted profile's series end with it."""
        for key in [k for k in self._series if k[0] == profile]:
            del self._series[key]
