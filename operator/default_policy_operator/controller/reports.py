"""Publishing Audit findings as policy reports (``dpo run --audit-reports``).

What a report says is decided in :mod:`default_policy_operator.core.reports`; this module finds
which report API the cluster has, and writes only what changed:

* the reconciler :meth:`touches <ReportPublisher.touch>` each scope it plans; a publish looks
  only at touched scopes, so a cluster in order costs nothing, and a rollout's reports are
  built once per scope, not once per second for every namespace;
* it remembers, per scope, the digest of the report the API holds (written, or listed at start
  and at every full resync): a desired report with the same digest is not written, so a
  restart or a resync that finds nothing new writes nothing;
* a report whose findings are gone is deleted (UID precondition); a report in a namespace being
  deleted is left to the namespace controller.

A conflict (the report changed or vanished behind our back) makes the next publish list the
reports again before it decides. Writes go through the reconciler's client, so a replica that
lost the leader Lease writes no report either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from default_policy_operator.core.labels import MANAGED_SELECTOR
from default_policy_operator.core.model import Profile
from default_policy_operator.core.reports import (
    FORMATS,
    REPORT_NAME,
    Finding,
    ReportFormat,
    build_report,
    digest,
    findings_by_scope,
    first_seen,
)
from default_policy_operator.core.world import World
from default_policy_operator.kube.client import ApiError, KubeApi, Resource

log = logging.getLogger(__name__)

#: Report writes in flight at once: enough for a rollout, never crowding out policy writes.
CONCURRENCY = 8


@dataclass
class Held:
    """What the API holds for one scope: enough to update or delete it, and to compare."""

    uid: str
    resource_version: str
    digest: str
    first_seen: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Held:
        meta = body.get("metadata") or {}
        return cls(
            uid=str(meta.get("uid", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            digest=digest(body),
            first_seen=first_seen(body),
        )


def resources(fmt: ReportFormat) -> tuple[Resource, Resource]:
    """The namespaced and the cluster-scoped report kinds of ``fmt``."""
    return (
        Resource(fmt.group, fmt.version, fmt.plural, True),
        Resource(fmt.group, fmt.version, fmt.cluster_plural, False),
    )


class ReportPublisher:
    """Keeps one report per scope with findings in step with the world's findings."""

    def __init__(self, world: World, api: KubeApi) -> None:
        self.world = world
        self.api = api
        self.format: ReportFormat | None = None
        self._held: dict[str, Held] = {}
        self._touched: set[str] = set()
        self._relist = True  # list what exists before the first decision
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(CONCURRENCY)

    def touch(self, scope: str) -> None:
        """``scope`` was planned: its findings may have changed."""
        self._touched.add(scope)
        self._wake.set()

    def resync(self) -> None:
        """List the reports again before the next publish (a full resync: catches reports
        edited or deleted by someone else)."""
        self._relist = True
        self._wake.set()

    async def run(self, synced: asyncio.Event, interval: float) -> None:
        """Publish at most once per ``interval``, when something was touched, from the first
        full pass on (before it, the findings are incomplete)."""
        await synced.wait()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.publish()
            except Exception:
                log.exception("publishing audit reports failed; retrying")
                self._relist = True
                self._wake.set()
            await asyncio.sleep(interval)

    async def publish(self) -> None:
        """Bring every touched scope's report in line with its findings."""
        if self._relist and not await self._list():
            return
        if self.format is None:
            return
        touched, self._touched = self._touched, set()
        profiles = self._profiles()
        grouped = findings_by_scope(self.world.audit_findings, profiles, touched)
        owners = {name: profile.uid for name, profile in profiles.items()}
        try:
            await asyncio.gather(
                *(self._sync(scope, grouped.get(scope, []), owners) for scope in sorted(touched))
            )
        except BaseException:
            self._touched |= touched  # decided again next time, none forgotten
            raise

    def _profiles(self) -> dict[str, Profile]:
        return {
            name: entry.profile
            for name, entry in self.world.profiles.items()
            if entry.profile is not None
        }

    # -- discovering and listing ------------------------------------------------------------

    async def _list(self) -> bool:
        """Find the report API (once) and what it holds; touch every scope that has a report.
        False while the cluster has no report API (looked for again at the next resync)."""
        if self.format is None:
            self.format = await self._discover()
            if self.format is None:
                self._relist = False
                log.warning(
                    "--audit-reports: neither %s is installed; no reports are written",
                    " nor ".join(f"{f.api_version} {f.kind}" for f in FORMATS),
                )
                return False
            log.info("audit reports are written as %s", self.format.api_version)
        namespaced, cluster = resources(self.format)
        held: dict[str, Held] = {}
        for resource in (namespaced, cluster):
            for body in await self.api.list_objects(resource, label_selector=MANAGED_SELECTOR):
                meta = body.get("metadata") or {}
                if meta.get("name") == REPORT_NAME:
                    held[str(meta.get("namespace") or "")] = Held.of(body)
        self._touched |= set(held) | set(self._held)
        self._held, self._relist = held, False
        return True

    async def _discover(self) -> ReportFormat | None:
        for fmt in FORMATS:
            try:
                found = await self.api.request("GET", f"/apis/{fmt.api_version}")
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            plurals = {r.get("name") for r in found.get("resources") or []}
            if {fmt.plural, fmt.cluster_plural} <= plurals:
                return fmt
        return None

    # -- writing -----------------------------------------------------------------------------

    async def _sync(self, scope: str, findings: list[Finding], owners: Mapping[str, str]) -> None:
        """One scope: build, compare, write. A slot is taken first, so that a rollout holds at
        most :data:`CONCURRENCY` report bodies at once, not one per namespace."""
        async with self._limit:
            await self._sync_now(scope, findings, owners)

    async def _sync_now(
        self, scope: str, findings: list[Finding], owners: Mapping[str, str]
    ) -> None:
        held = self._held.get(scope)
        live = not scope or self._namespace_live(scope)
        if not findings or not live:
            if held is not None:
                await self._delete(scope, held, live)
            return
        assert self.format is not None
        body = build_report(
            self.format,
            scope,
            findings,
            owners=owners,
            calico_api_version=self.world.calico_api_version,
            first_seen=held.first_seen if held else {},
            now=int(time.time()),
        )
        if held is None or held.digest != digest(body):
            await self._write(scope, body, held)

    def _namespace_live(self, name: str) -> bool:
        namespace = self.world.namespaces.get(name)
        return namespace is not None and not namespace.terminating

    def _resource(self, scope: str) -> Resource:
        assert self.format is not None
        namespaced, cluster = resources(self.format)
        return namespaced if scope else cluster

    async def _write(self, scope: str, body: dict[str, Any], held: Held | None) -> None:
        resource = self._resource(scope)
        try:
            if held is None:
                written = await self.api.create(resource, body)
            else:
                written = await self.api.replace(resource, body, held.resource_version)
        except ApiError as exc:
            self._failed(scope, exc)
            return
        self._held[scope] = Held.of(written)

    async def _delete(self, scope: str, held: Held, live: bool) -> None:
        """Remove a report with nothing left to say; in a namespace on its way out, only
        forget it (the namespace controller deletes it with the rest)."""
        if live:
            try:
                await self.api.delete(
                    self._resource(scope), REPORT_NAME, namespace=scope, uid=held.uid
                )
            except ApiError as exc:
                if exc.status != 404:
                    self._failed(scope, exc)
                    return
        self._held.pop(scope, None)

    def _failed(self, scope: str, exc: ApiError) -> None:
        """A stale view (changed, re-created or deleted behind our back): list again and retry
        once the interval has passed. Anything else waits for the next resync."""
        if exc.status in (404, 409):
            self._relist = True
            self.touch(scope)
            return
        log.warning("audit report for %s not written: %s", scope or "the cluster", exc)
